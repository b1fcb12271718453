"""Stopping a local stage on purpose: Ctrl-C in the terminal (SIGINT to the process group of a real `gemctl train`)
and `gemctl cancel`. Either way the stage checkpoints at its next step boundary, its MLflow run ends KILLED, DVC
records nothing, the job's state is CANCELLED, the terminal gets one line and gemctl exits 130. A second Ctrl-C
stops at once, leaving no half-written checkpoint as the latest. With and without the warm worker."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gem_stages.trainer import checkpoint_step, checkpoints

from .project_copy import GEMCTL, env, gemctl, make_project

pytestmark = pytest.mark.slow

BOUND_S = 600  # only guards against a hang: each wait below ends on a condition long before


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("stops"))
    r = gemctl(project, "train", "data", "--recipe", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    return project


def start_training(project: Path, warm: bool, lr: str) -> subprocess.Popen:
    """stage1 with steps enough never to finish and no periodic checkpoint: a checkpoint found after the stop is
    the one the stop made. Each test its own lr: its own resume state, not an earlier test's checkpoint. Its own
    session, as a shell gives a foreground command its own process group."""
    return subprocess.Popen(
        [GEMCTL, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.steps=100000",
         "-o", "stages.stage1.checkpoint_every=0", "-o", f"stages.stage1.lr={lr}"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**env(), "GEMCTL_WARM": "1" if warm else "0"})


def read_until(proc: subprocess.Popen, prefix: str, lines: list[str]) -> None:
    """Read the output into `lines` until a line starts with prefix (fail if it ends first)."""
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return
    pytest.fail(f"no line starting with {prefix!r}:\n" + "".join(lines))


def finish(proc: subprocess.Popen, lines: list[str]) -> tuple[int, str]:
    lines.append(proc.stdout.read())
    return proc.wait(timeout=BOUND_S), "".join(lines)


def stage1_jobs(project: Path) -> list[dict]:
    r = gemctl(project, "status", "--json")
    assert r.returncode == 0, r.stderr
    return [j for j in json.loads(r.stdout) if j["stage"] == "stage1"]


def mlflow_status(project: Path, run_id: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return client.get_run(run_id).info.status


def resume_dirs(project: Path, before: set[Path] = frozenset()) -> list[Path]:
    return sorted(set((project / "runs" / "ci" / "resume").glob("stage1-*")) - set(before))


def before(project: Path) -> tuple[bytes, int, list[Path]]:
    """What a stop must leave as it was (dvc.lock), and what tells this test's job and resume state apart."""
    return (project / "dvc.lock").read_bytes(), len(stage1_jobs(project)), resume_dirs(project)


def assert_stopped_cleanly(project: Path, code: int, out: str, lock_before: bytes, jobs_before: int) -> None:
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    # one line says what happened (and how to go on)
    said = [line for line in out.splitlines() if "cancelled" in line and line.startswith("error:")]
    assert len(said) == 1, out
    assert (project / "dvc.lock").read_bytes() == lock_before  # DVC recorded nothing
    new = stage1_jobs(project)[jobs_before:]
    assert [j["state"] for j in new] == ["CANCELLED"], new


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_ctrl_c_checkpoints_at_a_step_boundary_and_exits_130(project, warm):
    lock_before, jobs_before, dirs_before = before(project)
    proc = start_training(project, warm, lr="2e-4" if warm else "3e-4")
    lines: list[str] = []
    try:
        read_until(proc, "[stage1] step ", lines)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code, out = finish(proc, lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert_stopped_cleanly(project, code, out, lock_before, jobs_before)
    (work,) = resume_dirs(project, dirs_before)
    kept = checkpoints(work)
    assert kept and checkpoint_step(kept[-1]) >= 1, out  # loadable, at a step boundary
    assert not list(work.glob("ckpt-*.tmp"))
    assert mlflow_status(project, (work / "mlflow_run_id").read_text().strip()) == "KILLED"


def test_second_ctrl_c_stops_at_once(project):
    lock_before, jobs_before, dirs_before = before(project)
    proc = start_training(project, warm=True, lr="4e-4")
    lines: list[str] = []
    try:
        read_until(proc, "[stage1] step ", lines)
        os.killpg(proc.pid, signal.SIGINT)
        read_until(proc, "gemctl: stopping", lines)  # the first one was taken: stop at the next step boundary
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        code, out = finish(proc, lines)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert_stopped_cleanly(project, code, out, lock_before, jobs_before)
    assert took < 60, f"the second Ctrl-C took {took:.0f}s to stop\n{out}"  # not the first one's graceful path
    for work in resume_dirs(project, dirs_before):
        assert not list(work.glob("ckpt-*.tmp")), out
        for ckpt in checkpoints(work):
            checkpoint_step(ckpt)  # every checkpoint left is complete


def test_gemctl_cancel_of_a_local_job(project):
    lock_before, jobs_before, dirs_before = before(project)
    proc = start_training(project, warm=True, lr="5e-4")
    lines: list[str] = []
    try:
        read_until(proc, "[stage1] step ", lines)
        (running,) = [j for j in stage1_jobs(project)[jobs_before:] if j["state"] in ("PENDING", "RUNNING")]
        r = gemctl(project, "cancel", running["job_id"])
        assert r.returncode == 0 and running["job_id"] in r.stdout, r.stdout + r.stderr
        code, out = finish(proc, lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert_stopped_cleanly(project, code, out, lock_before, jobs_before)
    (work,) = resume_dirs(project, dirs_before)
    kept = checkpoints(work)
    assert kept and checkpoint_step(kept[-1]) >= 1, out
    assert mlflow_status(project, (work / "mlflow_run_id").read_text().strip()) == "KILLED"
