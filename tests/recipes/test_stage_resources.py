"""Per-stage resources (issue 8, point 5): a training stage may change keys of `resources:` for itself; the paper's
VLM stages ran on 32 GPUs and its VLA stage on 8."""

import subprocess
from pathlib import Path

import pytest
import yaml

from gem_stages.errors import InputError
from gemctl.recipe import resolve
from tests.conftest import TEST_PREFIX
from tests.pipeline.project_copy import GEMCTL, env, make_project

ROOT = Path(__file__).resolve().parents[2]


def test_gem_2b_stages_1_to_3_on_32_gpus_and_stage_4_on_8():
    gem = resolve(ROOT / "recipes", "gem-2b")
    assert [gem.resources_for(s).world_size for s in ("stage1", "stage2", "stage3", "stage4")] == [32, 32, 32, 8]
    s4 = gem.resources_for("stage4")
    # only what stage 4 names changes: the rest is the recipe's resources
    assert (s4.nodes, s4.gpus_per_node, s4.cpus_per_task, s4.mem_gb, s4.time_min) == (1, 8, 8, 480, 2880)
    gem8 = resolve(ROOT / "recipes", "gem-8b")  # extends gem-2b: the same split
    assert gem8.resources_for("stage4").nodes == 1 and gem8.resources_for("stage3").nodes == gem8.resources.nodes


def test_a_stage_override_is_completed_from_the_recipe_resources_and_keeps_its_own_keys():
    r = resolve(ROOT / "recipes", "tiny", ["stage_resources.stage3.nodes=2", "resources.time_min=90",
                                           "resources.cpus_per_task=3"])
    s3 = r.resources_for("stage3")
    assert (s3.nodes, s3.time_min, s3.cpus_per_task) == (2, 90, 3)
    assert r.resources_for("stage2") == r.resources and r.resources.nodes == 1
    r = resolve(ROOT / "recipes", "tiny", ["stage_resources.stage3.time_min=20", "resources.time_min=90"])
    assert (r.resources_for("stage3").time_min, r.resources_for("stage4").time_min) == (20, 90)


def test_resource_rules_hold_on_what_each_stage_asks_for():
    # signal_delay_s (120 s by default) must be shorter than the stage's own time limit
    with pytest.raises(InputError, match=r"stage_resources.stage4: signal_delay_s=120 must be shorter than "
                                         r"time_min=1 min"):
        resolve(ROOT / "recipes", "tiny", ["stage_resources.stage4.time_min=1"])
    with pytest.raises(InputError, match=r"did you mean 'stage_resources.stage4.nodes'"):
        resolve(ROOT / "recipes", "tiny", ["stage_resources.stage4.nodez=1"])
    with pytest.raises(InputError, match=r"unknown key 'stage_resources.data.nodes'"):
        resolve(ROOT / "recipes", "tiny", ["stage_resources.data.nodes=1"])  # data runs on one CPU task


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("stage-resources"))


def gemctl(project, *args):
    return subprocess.run([GEMCTL, *args], cwd=project, capture_output=True, text=True, env=env())


@pytest.mark.slurm
def test_dry_run_shows_each_stage_its_own_resources(slurm_cluster, project):
    name = TEST_PREFIX.rstrip("-")
    (project / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(
        {"extends": "ci", "stage_resources": {"stage2": {"cpus_per_task": 2}}}))
    scripts = {}
    for stage in ("stage1", "stage2"):
        r = gemctl(project, "train", stage, "--recipe", name, "--executor", "slurm", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr
        scripts[stage] = r.stdout
    assert "#SBATCH --cpus-per-task=1" in scripts["stage1"] and "#SBATCH --cpus-per-task=2" in scripts["stage2"]


@pytest.mark.slurm
def test_a_stage_the_cluster_cannot_hold_is_refused_before_upstream_stages_run(slurm_cluster, project):
    name = TEST_PREFIX.rstrip("-") + "-s2"
    (project / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(
        {"extends": "ci", "stage_resources": {"stage2": {"nodes": 2}}}))
    # training stage 2 runs stage 1 first: its request is checked before stage 1 is submitted
    r = gemctl(project, "train", "stage2", "--recipe", name, "--executor", "slurm")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "stage_resources.stage2: resources.nodes=2 but partition 'debug' has 1 node(s)" in r.stderr
    assert not (project / "runs" / name).exists() and not (project / ".gemctl" / "jobs" / name).exists()
    r = subprocess.run([GEMCTL, "recipe", "validate", name], cwd=project, capture_output=True, text=True, env=env())
    assert r.returncode == 2 and "ok resources: partition 'debug'" in r.stdout
    assert "FAIL stage_resources.stage2: " in r.stdout
