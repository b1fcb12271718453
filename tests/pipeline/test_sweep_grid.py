"""Which sweep grids are refused before anything runs: points may differ only in the swept stage's settings and
seed (issue 7, point 3)."""

from pathlib import Path

import pytest

from gem_stages.errors import InputError
from gemctl.project import Project
from gemctl.sweep import expand

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key, values", [
    ("stages.stage4.lr", [1e-4, 3e-4]),  # a later stage: stage3's points would be identical
    ("resources.cpus_per_task", [1, 2]),  # one array, one allocation: the points would compute the same
    ("stages.stage2.lr", [1e-4, 3e-4]),  # an upstream stage: built once and shared
    ("data.seed", [1, 2]),
])
def test_a_key_the_swept_stage_does_not_use_is_refused(key, values):
    with pytest.raises(InputError) as e:
        expand(Project(ROOT), "stage3", "tiny", {key: values})
    message = str(e.value)
    assert key in message and "stages.stage3" in message and "\n" not in message


def test_the_swept_stage_and_seed_may_vary():
    sweep = expand(Project(ROOT), "stage3", "tiny", {"stages.stage3.lr": [1e-4, 3e-4],
                                                     "stages.stage3.loss.depth": [0.0, 0.1]}, seeds=2)
    assert len(sweep.points) == 8 and len({p.id for p in sweep.points}) == 8


def test_the_cli_refuses_it_in_one_line_before_anything_starts(tmp_path):
    from .project_copy import gemctl, make_project

    project = make_project(tmp_path / "p")
    r = gemctl(project, "sweep", "stage3", "--recipe", "ci", "-p", "stages.stage4.lr=1e-4,3e-4")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "stages.stage4.lr" in lines[0] and "Traceback" not in r.stderr
    assert not (project / "runs").exists() and not (project / ".gemctl").exists()
    assert (project / "params.yaml").read_text() == "recipes: []\n"
