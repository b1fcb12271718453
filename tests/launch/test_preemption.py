"""Multi-rank jobs and preemption-safe exact resume: DDP over gloo on 2 CPU ranks; a run stopped by a signal at a
known step (SIGTERM as SLURM sends first on preemption, USR2 as before a time limit, and a real time limit) is
requeued, resumes from that step and ends exactly like an uninterrupted one."""

import functools
import os
import signal
import subprocess

import pytest
import torch

from gemctl.launch import Resources, launch
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, needs_cluster_if_slurm, needs_slurm

TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=5, signal_delay_s=30)
STEPS = 20


def send_signal(job_id: str, sig: signal.Signals) -> None:
    """What the cluster does on preemption or before a time limit: the signal to every task of the job."""
    if job_id.startswith("local-"):
        assert sig == signal.SIGTERM  # submitit's local controller forwards SIGTERM to its tasks
        os.kill(int(job_id.split("-")[1]), sig)
    else:
        subprocess.run(["scancel", f"--signal={sig.name[3:]}", job_id], check=True)


def _interrupt_at(step: int, sig: signal.Signals, sent: list):
    """on_update callback: send sig when rank 0 says it waits at `step` (jobfns.pause_for_signal)."""
    def on_update(u):
        if not sent and u.task == 0 and u.line == f"at step {step}":
            send_signal(u.job_id, sig)
            sent.append(u.job_id)
    return on_update


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """An uninterrupted 2-rank run on the local executor (no SLURM needed)."""
    d = tmp_path_factory.mktemp("ddp_ref")
    return launch(functools.partial(jobfns.train, str(d), steps=STEPS), kind="local", resources=TWO_RANKS,
                  job_dir=d / "jobs", name=TEST_PREFIX + "ddp")


def test_two_rank_ddp_ends_with_identical_weights(ddp_reference):
    r = ddp_reference
    assert r.ok, r.error
    assert [v["rank"] for v in r.values] == [0, 1] and r.value["world"] == 2
    assert r.values[0]["weights"] == r.values[1]["weights"]
    assert r.values[0]["losses"] != r.values[1]["losses"]  # each rank saw its own shard


@needs_slurm
def test_two_ranks_on_slurm_match_the_local_executor(ddp_reference, tmp_path):
    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=STEPS), kind="slurm", resources=TWO_RANKS,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp-slurm")
    assert r.ok, r.error
    assert [v["rank"] for v in r.values] == [0, 1]
    assert r.values[0]["weights"] == r.values[1]["weights"] == ddp_reference.value["weights"]


@needs_slurm
def test_one_failing_rank_fails_the_whole_job(tmp_path):
    # rank 0 would wait for a file that never comes: the job ends at all (FAILED, not a TIMEOUT minutes later)
    # only because srun stops the other ranks when one fails
    r = launch(functools.partial(jobfns.fail_on_rank, 1, str(tmp_path / "never")), kind="slurm",
               resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "rank-fails")
    assert r.state == "FAILED" and "RuntimeError: rank 1 crashed" in r.error
    assert r.job_id not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                          check=False).stdout.split()


@pytest.mark.parametrize("kind, sig", [
    ("local", signal.SIGTERM),
    pytest.param("slurm", signal.SIGTERM, marks=pytest.mark.slurm),
    pytest.param("slurm", signal.SIGUSR2, marks=pytest.mark.slurm),
], ids=["local-TERM", "slurm-TERM", "slurm-USR2"])
def test_signalled_two_rank_job_is_requeued_and_resumes_exactly(kind, sig, ddp_reference, tmp_path, request):
    needs_cluster_if_slurm(kind, request)
    sent, states = [], []
    interrupt = _interrupt_at(5, sig, sent)

    def on_update(u):
        interrupt(u)
        if u.state:
            states.append(u.state)

    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=STEPS, pause_at=5), kind=kind,
               resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp-preempt", on_update=on_update)
    assert r.ok, r.error
    assert sent and r.requeues == 1 and "REQUEUED" in states
    assert r.value["resumed_at"] == [5]  # checkpointed at the step it was signalled at, resumed from there
    assert r.values[0]["weights"] == r.values[1]["weights"] == ddp_reference.value["weights"]
    assert r.value["losses"] == ddp_reference.value["losses"]
    log = r.stdout.read_text()  # the job's one log: stderr is written there too
    assert "checkpointed at step 5" in log and "restart 1" in log and "resumed at step 5" in log
    assert f"got {sig.name}, stopping at the next step boundary" in log


def test_preemption_past_max_requeues_fails_clearly(job_kind, tmp_path):
    kind = job_kind
    res = Resources(time_min=5, signal_delay_s=30, max_requeues=0)
    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=STEPS, pause_at=2), kind=kind,
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "no-requeue",
               on_update=_interrupt_at(2, signal.SIGTERM, []))
    assert r.state == "FAILED" and r.requeues == 0
    assert "resources.max_requeues=0 is reached; its checkpoint is kept" in r.error
    assert torch.load(tmp_path / "ckpt.pt")["step"] == 2


@needs_slurm
def test_real_time_limit_requeues_and_resumes_exactly(tmp_path):
    # Time limit 1 min, warning 45 s before it (slurmctld checks time limits every 30 s: it comes 15 to 45 s
    # into the run). The first run waits at step 10 for it; the requeued one has 15 s or more for its steps.
    steps = 72
    res = Resources(time_min=1, signal_delay_s=45, max_requeues=3)
    (tmp_path / "job").mkdir()
    r = launch(functools.partial(jobfns.train, str(tmp_path / "job"), steps=steps, pause_at=10), kind="slurm",
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "timelimit")
    assert r.ok, r.error
    assert r.requeues >= 1 and r.value["resumed_at"][0] == 10
    (tmp_path / "ref").mkdir()
    ref = jobfns.train(str(tmp_path / "ref"), steps=steps)  # uninterrupted, in this process
    assert r.value["weights"] == ref["weights"] and r.value["losses"] == ref["losses"]
    assert "got SIGUSR2" in r.stdout.read_text()


def test_local_executor_time_limit_requeues_and_resumes_exactly(tmp_path):
    # the local controller sends USR2 at time limit - signal_delay (30 s into each run) and restarts tasks that
    # exit 144; the first run waits at step 10 for it
    steps = 30
    res = Resources(time_min=1, signal_delay_s=30, max_requeues=2)
    (tmp_path / "job").mkdir()
    r = launch(functools.partial(jobfns.train, str(tmp_path / "job"), steps=steps, pause_at=10), kind="local",
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "local-timelimit")
    assert r.ok, r.error
    assert r.requeues >= 1 and r.value["resumed_at"][0] == 10
    (tmp_path / "ref").mkdir()
    ref = jobfns.train(str(tmp_path / "ref"), steps=steps)
    assert r.value["weights"] == ref["weights"] and r.value["losses"] == ref["losses"]
    assert "got SIGUSR2" in r.stdout.read_text()
