"""What gemctl says about a run, through the real pipeline (issue 7, points 8, 10, 12, 13): stages restored from
DVC's run-cache are said to be restored, runs logged to another store are shown with it (and keep their artifacts
there), a failed first run does not stay listed, `gemctl stage run` trains the recipe it is asked for, and a sweep
prints each point's progress and shows each point's log."""

import json
import re

import pytest
import yaml

from gemctl.project import Project
from gemctl.recipe import resolve

from .project_copy import gemctl, make_project
from .test_bad_input import files_dataset, recipe_with_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("output"))


def row(stdout: str, stage: str) -> str:
    return next(x for x in stdout.splitlines() if x.split()[:1] == [stage])


def listed(project) -> list[str]:
    return yaml.safe_load((project / "params.yaml").read_text())["recipes"]


def test_a_failed_first_run_leaves_its_recipe_unlisted(project):
    recipe_with_files(project, "corrupt", files_dataset(project, "corrupt", corrupt=True))
    r = gemctl(project, "train", "stage1", "--recipe", "corrupt")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "corrupt" not in listed(project)


def test_a_stage_restored_from_the_run_cache_is_said_restored(project):
    r = gemctl(project, "train", "stage1", "--recipe", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran" in row(r.stdout, "data").split() and "ran" in row(r.stdout, "stage1").split()
    run_id = json.loads((project / "runs/ci/stage1/summary.json").read_text())["mlflow_run_id"]
    assert run_id in row(r.stdout, "stage1")  # whole, as `mlflow runs describe` takes it
    assert f"mlflow runs in {Project(project).tracking_uri}" in r.stdout
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.lr=1e-4")
    assert r.returncode == 0 and "ran" in row(r.stdout, "stage1").split(), r.stdout + r.stderr
    r = gemctl(project, "train", "stage1", "--recipe", "ci")  # back: DVC restores the first build
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restored" in row(r.stdout, "stage1").split() and "ran" not in row(r.stdout, "stage1").split()
    assert "up to date" in row(r.stdout, "data") and "restored stage1 from DVC's run-cache" in r.stdout
    assert not re.search(r"^ran ", r.stdout, re.M)


def test_stage_run_by_hand_trains_the_recipe_it_is_asked_for(project):
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.steps=2")
    assert r.returncode == 0, r.stdout + r.stderr
    stale = json.loads((project / "runs/ci/params.json").read_text())
    assert stale["stages"]["stage1"]["steps"] == 2
    r = gemctl(project, "stage", "run", "stage1", "--recipe", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    ci = resolve(project / "recipes", "ci")
    assert f"rendered ci as asked (hash {ci.content_hash})" in r.stderr
    assert json.loads((project / "runs/ci/stage1/summary.json").read_text())["step"] == 3
    assert json.loads((project / "runs/ci/params.json").read_text()) == json.loads(json.dumps(ci.to_dict()))


def test_a_run_in_another_store_is_shown_with_it_and_keeps_its_artifacts_there(project, tmp_path):
    import mlflow

    other = tmp_path / "other" / "mlflow.db"
    uri = f"sqlite:///{other}"
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "--force", "--tracking-uri", uri)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"mlflow runs of stage1 in {uri}" in r.stdout
    assert f"mlflow runs of data in {Project(project).tracking_uri}" in r.stdout
    run_id = json.loads((project / "runs/ci/stage1/summary.json").read_text())["mlflow_run_id"]
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    assert run.info.artifact_uri.startswith((other.parent / "artifacts").as_uri())
    exp = mlflow.get_experiment_by_name("gemctl")
    assert exp.artifact_location == (other.parent / "artifacts").as_uri()

    # the next stage, in the project's store, starts from that checkpoint: its parent's ids name runs of the
    # other store, so they are tags (with that store), not an input model of this one
    r = gemctl(project, "train", "stage2", "--recipe", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    child_id = json.loads((project / "runs/ci/stage2/summary.json").read_text())["mlflow_run_id"]
    mlflow.set_tracking_uri(Project(project).tracking_uri)
    child = mlflow.get_run(child_id)
    assert child.data.tags["gemctl.parent_run_id"] == run_id
    assert child.data.tags["gemctl.parent_tracking_uri"] == uri
    assert not child.inputs.model_inputs


def test_a_sweep_prints_each_points_progress_and_logs_show_each_point(project):
    r = gemctl(project, "sweep", "stage2", "--recipe", "ci", "-p", "stages.stage2.lr=1e-3,3e-3",
               "-p", "stages.stage2.loss.depth=0.5,1.0", "--parallel", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not re.search(r"\b(PENDING|RUNNING)\b", r.stdout), r.stdout
    sweep_id = re.search(r"sweep (sw-[0-9a-f]{8})", r.stdout).group(1)
    points = re.findall(r"^point ([0-9a-f]{12}) \(lr=[\d.e-]+ loss\.depth=[\d.]+\): \[stage2\] step 3/3", r.stdout,
                        re.M)
    assert len(set(points)) == 4, r.stdout
    assert len(re.findall(r"^point [0-9a-f]{12} .*: job \S+ COMPLETED$", r.stdout, re.M)) == 4, r.stdout
    header = next(x for x in r.stdout.splitlines() if x.split()[:1] == ["point"] and "status" in x).split()
    assert len(header) == len(set(header)) and {"lr", "loss.depth", "depth"} <= set(header), header
    logs = gemctl(project, "logs", sweep_id)
    assert logs.returncode == 0, logs.stderr
    heads = [x for x in logs.stdout.splitlines() if x.startswith("── ")]
    assert sorted(h.split()[1] for h in heads) == sorted(f"ci/{p}" for p in set(points)), logs.stdout
    blocks = logs.stdout.split("── ")[1:]
    assert all("[stage2] step 3/3" in b for b in blocks), logs.stdout
