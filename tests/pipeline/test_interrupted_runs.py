"""An MLflow run whose job died without closing it (SIGKILL, OOM, lost node) does not stay RUNNING: its launcher
closes it (close_interrupted), and failing that the next run of the stage does before continuing it."""

from pathlib import Path

import pytest

from gemctl.project import Project
from gemctl.recipe import resolve
from gemctl.tracking import INTERRUPTED_TAG, LAUNCH_ENV, LAUNCH_TAG, StageRun, close_interrupted

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMCTL_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GEMCTL_GIT_COMMIT", "0" * 40)  # no git in tmp_path
    return Project(tmp_path)


def left_running(project, work_dir, launch_id):
    """What a killed job leaves: its run RUNNING, its id in the resume state."""
    import mlflow

    with pytest.MonkeyPatch.context() as m:
        m.setenv(LAUNCH_ENV, launch_id)
        run = StageRun(project, resolve(ROOT / "recipes", "tiny"), "stage1", work_dir=work_dir).__enter__()
    mlflow.end_run()  # forget it in this process without closing it in the store
    client = mlflow.MlflowClient()
    client.set_terminated(run.run_id, "RUNNING")
    assert client.get_run(run.run_id).info.status == "RUNNING"
    return run.run_id


def test_the_next_run_closes_and_continues_a_run_left_running(project, tmp_path):
    import mlflow

    work_dir = tmp_path / "resume" / "stage1-abc"
    run_id = left_running(project, work_dir, "launch-1")
    with StageRun(project, resolve(ROOT / "recipes", "tiny"), "stage1", work_dir=work_dir) as run:
        assert run.run_id == run_id  # the same run continues
        assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"
    got = mlflow.MlflowClient().get_run(run_id)
    assert got.info.status == "FINISHED"
    assert "ended without a result" in got.data.tags[INTERRUPTED_TAG]


def test_the_launcher_closes_runs_of_its_dead_job(project, tmp_path):
    import mlflow

    mine = left_running(project, tmp_path / "a", "launch-1")
    by_file = left_running(project, tmp_path / "b", "launch-0")  # its tag is an older launch's: found by its file
    other = left_running(project, tmp_path / "c", "launch-2")  # another launch's job: not ours to close
    closed = close_interrupted(project, "launch-1", [tmp_path / "b" / "mlflow_run_id"], "job 7 ended FAILED")
    assert sorted(closed) == sorted([mine, by_file])
    client = mlflow.MlflowClient()
    for run_id in (mine, by_file):
        got = client.get_run(run_id)
        assert got.info.status == "FAILED" and got.data.tags[INTERRUPTED_TAG] == "job 7 ended FAILED"
    assert client.get_run(other).info.status == "RUNNING"
    assert client.get_run(mine).data.tags[LAUNCH_TAG] == "launch-1"
    assert close_interrupted(project, "launch-1", [], "again") == []  # a closed run is left as it is
