"""The job registry behind `gemctl status`, `gemctl logs` and `gemctl cancel`."""

import functools
import os
import signal
import subprocess
import threading

import pytest
import torch

from gem_stages.errors import InputError
from gemctl.launch import Resources, launch, registry, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, log_has, needs_slurm, wait_for

SMALL = Resources(time_min=5, signal_delay_s=30)


@needs_slurm
def test_status_and_logs_of_finished_jobs(tmp_path):
    ok = launch(functools.partial(jobfns.add, 1, 2), kind="slurm", resources=SMALL, job_dir=tmp_path / "jobs",
                name=TEST_PREFIX + "add", project=tmp_path, tags={"stage": "train_stage1", "point": "lr=1e-4",
                                                                  "run": "run-abc"})
    bad = launch(functools.partial(jobfns.fail, "kaputt"), kind="local", resources=SMALL, job_dir=tmp_path / "jobs",
                 name=TEST_PREFIX + "fail", project=tmp_path, tags={"stage": "eval"})

    def accounted():  # sacct learns where and when a fast job ran a moment after its result is there
        recs = registry.list_jobs(tmp_path)
        return recs if recs[0].node and recs[0].start and recs[0].exit_code is not None else None

    recs = wait_for(accounted, "sacct to know where and when the job ran")
    assert [(r.job_id, r.stage, r.point, r.state) for r in recs] == [
        (ok.job_id, "train_stage1", "lr=1e-4", "COMPLETED"), (bad.job_id, "eval", "", "FAILED")]
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout
    # the registry (what `gemctl status` shows) learns the node from sacct; the launcher's own result may not have
    # it when the job ended before its first poll saw it run, so only a node it did see must agree
    assert recs[0].node in nodes.split() and ok.node in ("", recs[0].node)
    assert recs[0].exit_code == 0 and recs[0].start and recs[0].elapsed_s >= 0
    assert recs[1].exit_code == 1 and recs[1].kind == "local"
    assert set(recs[0].to_json()) >= {"job_id", "stage", "point", "state", "elapsed_s", "node", "sweep", "run"}
    lines = list(registry.job_log(tmp_path, "run-abc"))  # by run id
    assert any("gemctl: rank 0/1" in x for x in lines)
    assert any("ValueError: kaputt" in x for x in registry.job_log(tmp_path, bad.job_id))
    with pytest.raises(InputError, match="no gemctl job, run or sweep 'nope'"):
        registry.job_log(tmp_path, "nope").__next__()


def _checkpoint_step(ckpt_dir) -> int:
    return torch.load(ckpt_dir / "ckpt.pt")["step"]


def test_follow_logs_and_cancel_a_running_job(job_kind, tmp_path):
    """`gemctl cancel` of a job at a known step: it checkpoints there (a later run resumes from it), is not
    requeued, ends CANCELLED; `gemctl logs --follow` streams it and ends with it."""
    h = submit(functools.partial(jobfns.train, str(tmp_path), steps=30, pause_at=3), kind=job_kind,
               resources=SMALL, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "cancel", project=tmp_path,
               tags={"stage": "long"})
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(registry.job_log(tmp_path, h.job_id, follow=True)))
    follower.start()
    wait_for(lambda: "at step 3" in followed, "the job to reach step 3 (streamed by logs --follow)")
    assert [r.state for r in registry.list_jobs(tmp_path)] == ["RUNNING"]
    assert registry.cancel(tmp_path, h.job_id) == [h.job_id]
    r = h.wait()
    assert r.state == "CANCELLED" and "was cancelled" in r.error and r.requeues == 0
    assert _checkpoint_step(tmp_path) == 3  # the checkpoint of the step it was cancelled at is kept
    wait_for(lambda: log_has(h.stdout, "was cancelled; checkpoint kept, not requeueing"), "the job's last words")
    assert "restart 1" not in h.stdout.read_text()
    follower.join(timeout=jobfns.BOUND_S)
    assert not follower.is_alive()  # follow ends when the job does
    assert registry.list_jobs(tmp_path)[0].state == "CANCELLED"
    assert registry.cancel(tmp_path, h.job_id) == []  # nothing left to cancel


def test_ctrl_c_while_waiting_stops_the_job_at_a_step_boundary(job_kind, tmp_path):
    """Ctrl-C in the launcher does what `gemctl cancel` does: checkpoint at the step it is at, no requeue,
    CANCELLED; then the KeyboardInterrupt goes on up (`gemctl` exits 130)."""
    h = submit(functools.partial(jobfns.train, str(tmp_path), steps=30, pause_at=3), kind=job_kind,
               resources=SMALL, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ctrl-c", project=tmp_path)

    def ctrl_c_at_step_3(update) -> None:  # a signal to this process from another thread lands in the main one
        if update.line == "at step 3":
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        h.wait(ctrl_c_at_step_3)
    r = h.result
    assert r.state == "CANCELLED" and "was cancelled" in r.error and r.requeues == 0, r
    assert _checkpoint_step(tmp_path) == 3
    assert registry.list_jobs(tmp_path)[0].state == "CANCELLED"


def test_cancel_stops_a_job_that_never_reaches_a_step_boundary(job_kind, tmp_path, monkeypatch):
    """A job that ignores the cancel's SIGTERM (stuck, or still starting) is stopped hard after the kill wait."""
    monkeypatch.setattr(registry, "KILL_WAIT_S", 0)
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never"), heed_signal=False), kind=job_kind,
               resources=SMALL, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "stuck", project=tmp_path)
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    wait_for(lambda: registry.list_jobs(tmp_path)[0].state == "RUNNING", "the registry to see it running")
    assert registry.cancel(tmp_path, h.job_id) == [h.job_id]
    r = h.wait()
    assert r.state == "CANCELLED" and r.value is None and "was cancelled" in r.error
