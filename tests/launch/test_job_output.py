"""What `gemctl logs` and `gemctl status` show of a job (issue 7, point 10): a job's lines in the order it wrote
them, and the elapsed time of a running SLURM job."""

import functools
import re
import subprocess

import cloudpickle

from gemctl.launch import Resources, launch, registry, submit
from tests.launch import outputfns
from tests.launch.conftest import TEST_PREFIX, needs_slurm, wait_for

cloudpickle.register_pickle_by_value(outputfns)

SMALL = Resources(time_min=5, signal_delay_s=30)


def test_logs_interleave_stdout_and_stderr_in_the_order_written(job_kind, tmp_path):
    r = launch(functools.partial(outputfns.chatter, 6), kind=job_kind, resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "chatter", project=tmp_path, tags={"stage": "chatter"})
    assert r.ok, r.error
    ours = [x for x in registry.job_log(tmp_path, r.job_id) if re.fullmatch(r"line \d on std(out|err)", x)]
    assert ours == [f"line {i} on {'stdout' if i % 2 == 0 else 'stderr'}" for i in range(6)]
    # what a failed job's launcher shows (its log's tail) holds the lines in the same order
    assert [x for x in r.log_tail(40).splitlines() if x.startswith("line ")] == ours


@needs_slurm
def test_a_running_slurm_job_keeps_its_elapsed_time_when_accounting_lags(tmp_path, monkeypatch):
    go = tmp_path / "go"
    h = submit(functools.partial(outputfns.run_until, str(go)), kind="slurm", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "elapsed", project=tmp_path, tags={"stage": "wait"})
    try:
        rec = wait_for(lambda: next((r for r in registry.list_jobs(tmp_path)
                                     if r.state == "RUNNING" and r.start), None), "the job to run")
        started = rec.start
        real_run = registry.cluster._run

        def no_accounting(cmd, timeout=20):  # slurmdbd behind or down: only squeue answers
            if cmd[0] == "sacct":
                raise subprocess.CalledProcessError(1, cmd, "", "sacct: error: slurmdbd: connection refused")
            return real_run(cmd, timeout)

        monkeypatch.setattr(registry.cluster, "_run", no_accounting)
        rec = next(r for r in registry.list_jobs(tmp_path) if r.job_id == h.job_id)
        assert rec.state == "RUNNING" and rec.start == started and rec.elapsed_s > 0
    finally:
        go.touch()
        h.wait()


@needs_slurm
def test_a_running_slurm_job_has_an_elapsed_time_without_accounting(tmp_path, monkeypatch):
    go = tmp_path / "go"
    real_run = registry.cluster._run

    def no_accounting(cmd, timeout=20):
        if cmd[0] == "sacct":
            raise subprocess.CalledProcessError(1, cmd, "", "sacct: error: slurmdbd: connection refused")
        return real_run(cmd, timeout)

    monkeypatch.setattr(registry.cluster, "_run", no_accounting)
    h = submit(functools.partial(outputfns.run_until, str(go)), kind="slurm", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "elapsed", project=tmp_path, tags={"stage": "wait"})
    try:
        first = wait_for(lambda: next((r for r in registry.list_jobs(tmp_path) if r.state == "RUNNING"), None),
                         "squeue to show the job running")
        assert first.start is not None
        later = wait_for(lambda: next((r for r in registry.list_jobs(tmp_path) if r.elapsed_s >= 1), None), "a second")
        assert later.start == first.start  # counted from when it was first seen running, not reset
    finally:
        go.touch()
        h.wait()
