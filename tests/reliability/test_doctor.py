"""`gemctl doctor` on a project whose records were made to disagree the ways faults leave them."""

import json
import socket
import subprocess

import pytest

from tests.pipeline.project_copy import GEMCTL, env, gemctl, make_project


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def broken(tmp_path):
    project = make_project(tmp_path / "p")
    r = gemctl(project, "train", "stage1", "--recipe", "ci")
    assert r.returncode == 0, r.stderr
    ok = subprocess.run([GEMCTL, "doctor"], cwd=project, capture_output=True, text=True, env=env())
    assert ok.returncode == 0 and "agree" in ok.stdout, ok.stdout + ok.stderr  # a clean project is clean

    weights = project / "runs" / "ci" / "stage1" / "model" / "connector.safetensors"
    original = weights.read_bytes()
    weights.unlink()  # an output lost after DVC recorded it
    pid = _dead_pid()
    host = socket.gethostname()
    leftovers = [project / "runs" / "ci" / f".stage2.staging-{host}-{pid}",
                 project / "runs" / "ci" / "resume" / "stage1-0123" / "ckpt-00000005.tmp"]
    for d in leftovers:
        d.mkdir(parents=True)
        (d / "half").write_bytes(b"x")
    executed = project / ".gemctl" / f"executed-{pid}"
    executed.write_text("stage1\n")
    (project / ".gemctl" / "registry" / "local-1.json").write_text("{half a reco")

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("gemctl").experiment_id
    orphan = client.create_run(exp, tags={"gemctl.stage": "stage2", "gemctl.recipe": "ci"}).info.run_id  # killed
    data_run = json.loads((project / "runs" / "ci" / "data" / "summary.json").read_text())["mlflow_run_id"]
    client.delete_run(data_run)  # lineage lost: only a re-run can record it again
    return project, weights, original, leftovers + [executed], orphan, data_run


def test_doctor_finds_each_disagreement_and_fixes_the_safe_ones(broken):
    project, weights, original, leftovers, orphan, data_run = broken
    r = subprocess.run([GEMCTL, "doctor"], cwd=project, capture_output=True, text=True, env=env())
    assert r.returncode == 1, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())
    for text in ("stage1@ci is recorded in dvc.lock but its output is", f"{data_run} is deleted",
                 "RUNNING, but no job runs it", "unreadable job record", "a half-written checkpoint",
                 "a folder a killed writer was filling or replacing", "ended without cleaning up"):
        assert text in flat, (text, r.stdout)
    assert weights.exists() is False and all(p.exists() for p in leftovers)  # without --fix nothing changes

    r = subprocess.run([GEMCTL, "doctor", "--fix"], cwd=project, capture_output=True, text=True, env=env())
    fixed = [line for line in r.stdout.splitlines() if line.startswith("fixed: ")]
    assert len(fixed) == 6, r.stdout  # the output, the orphaned run, the registry record, three leftovers
    assert weights.read_bytes() == original  # restored from DVC's cache, byte for byte
    assert not any(p.exists() for p in leftovers)
    assert (project / ".gemctl" / "registry" / "unreadable" / "local-1.json").is_file()
    from mlflow import MlflowClient

    run = MlflowClient().get_run(orphan)
    assert run.info.status == "FAILED" and "gemctl doctor" in run.data.tags["gemctl.interrupted"]
    # what only a person can fix is still said, with the command that fixes it, and the exit says so
    assert r.returncode == 1
    left = " ".join(" ".join(line for line in r.stdout.splitlines() if not line.startswith("fixed: ")).split())
    assert "data@ci" in left and "gemctl train data --recipe ci --force" in left
    assert "RUNNING, but no job" not in left and "unreadable" not in left and "1 disagreement(s)" in left
