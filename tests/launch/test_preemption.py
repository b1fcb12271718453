"""Multi-rank jobs and preemption-safe exact resume: DDP over gloo on 2 CPU ranks; a run stopped by the timeout
signal (sent by hand, and by a real 1-minute time limit) is requeued and ends exactly like an uninterrupted one."""

import functools
import subprocess
import time

import pytest

from gemctl.launch import Resources, launch
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=5, signal_delay_s=30)


def _interrupt_after(step: int, done: list):
    """on_update callback: send the timeout signal (USR2, as SLURM does before the time limit) to every task
    once rank 0 has logged `step`."""
    def on_update(u):
        if not done and u.task == 0 and u.line and u.line.startswith(f"step {step} "):
            subprocess.run(["scancel", "--signal=USR2", u.job_id], check=True)
            done.append(u.job_id)
    return on_update


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, slurm_cluster):
    d = tmp_path_factory.mktemp("ddp_ref")
    return launch(functools.partial(jobfns.train, str(d), steps=20, step_s=0.05), kind="slurm", resources=TWO_RANKS,
                  job_dir=d / "jobs", name=TEST_PREFIX + "ddp")


def test_two_rank_ddp_ends_with_identical_weights(ddp_reference):
    r = ddp_reference
    assert r.ok, r.error
    assert [v["rank"] for v in r.values] == [0, 1] and r.value["world"] == 2
    assert r.values[0]["weights"] == r.values[1]["weights"]
    assert r.values[0]["losses"] != r.values[1]["losses"]  # each rank saw its own shard


def test_two_ranks_on_the_local_executor_match_slurm(ddp_reference, tmp_path):
    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=20, step_s=0.05), kind="local",
               resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp-local")
    assert r.ok, r.error
    assert [v["rank"] for v in r.values] == [0, 1]
    assert r.values[0]["weights"] == r.values[1]["weights"] == ddp_reference.value["weights"]


def test_one_failing_rank_fails_the_whole_job_promptly(tmp_path):
    t0 = time.time()
    r = launch(functools.partial(jobfns.fail_on_rank, 1, 120), kind="slurm", resources=TWO_RANKS,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "rank-fails")
    assert r.state == "FAILED" and "RuntimeError: rank 1 crashed" in r.error
    assert time.time() - t0 < 30
    assert r.job_id not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False).stdout.split()


def test_interrupted_two_rank_job_is_requeued_and_resumes_exactly(ddp_reference, tmp_path):
    sent, states = [], []

    def on_update(u):
        interrupt(u)
        if u.state:
            states.append(u.state)

    interrupt = _interrupt_after(5, sent)
    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=20, step_s=0.05), kind="slurm",
               resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp-preempt", on_update=on_update)
    assert r.ok, r.error
    assert sent and r.requeues == 1 and "REQUEUED" in states
    assert len(r.value["resumed_at"]) == 1 and r.value["resumed_at"][0] > 5
    assert r.values[0]["weights"] == r.values[1]["weights"] == ddp_reference.value["weights"]
    assert r.value["losses"] == ddp_reference.value["losses"]
    out = r.stdout.read_text()
    assert "checkpointed at step" in out and "requeueing job" in out and "restart 1" in out


def test_preemption_past_max_requeues_fails_clearly(tmp_path):
    res = Resources(time_min=5, signal_delay_s=30, max_requeues=0)
    r = launch(functools.partial(jobfns.train, str(tmp_path), steps=200, step_s=0.05), kind="slurm",
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "no-requeue",
               on_update=_interrupt_after(2, []))
    assert r.state == "FAILED" and r.requeues == 0
    assert "resources.max_requeues=0 is reached; its checkpoint is kept" in r.error
    assert (tmp_path / "ckpt.pt").exists()


def test_real_time_limit_requeues_and_resumes_exactly(tmp_path):
    # Time limit 1 min, warning 55 s before it. slurmctld checks time limits every 30 s, so the signal comes
    # 5 to 35 s into each run: 36 s of steps are sure to be interrupted at least once, maybe twice.
    steps, step_s = 72, 0.5
    res = Resources(time_min=1, signal_delay_s=55, max_requeues=3)
    (tmp_path / "job").mkdir()
    r = launch(functools.partial(jobfns.train, str(tmp_path / "job"), steps=steps, step_s=step_s), kind="slurm",
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "timelimit")
    assert r.ok, r.error
    assert r.requeues >= 1 and r.value["resumed_at"]
    (tmp_path / "ref").mkdir()
    ref = jobfns.train(str(tmp_path / "ref"), steps=steps, step_s=0)  # uninterrupted, in this process
    assert r.value["weights"] == ref["weights"] and r.value["losses"] == ref["losses"]
    assert "got SIGUSR2" in r.stderr.read_text()


def test_local_executor_time_limit_requeues_and_resumes_exactly(tmp_path):
    # the local controller sends USR2 at time limit - signal_delay (10 s in) and restarts tasks that exit 144
    steps, step_s = 30, 0.5
    res = Resources(time_min=1, signal_delay_s=50, max_requeues=2)
    (tmp_path / "job").mkdir()
    r = launch(functools.partial(jobfns.train, str(tmp_path / "job"), steps=steps, step_s=step_s), kind="local",
               resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "local-timelimit")
    assert r.ok, r.error
    assert r.value["resumed_at"]
    (tmp_path / "ref").mkdir()
    ref = jobfns.train(str(tmp_path / "ref"), steps=steps, step_s=0)
    assert r.value["weights"] == ref["weights"] and r.value["losses"] == ref["losses"]
