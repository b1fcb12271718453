"""Every wait on SLURM ends, with a clear state, also when accounting does not know the job (slurmdbd lost it or
never got it): squeue answers while the job is queued or running, then the job's own result files and cancel
marker say how it ended. On the project's test cluster, with sacct asked about a job id it has never heard of."""

import functools
import subprocess
import threading

import pytest

from gemctl.launch import Resources, cluster, registry, submit
from tests.launch import jobfns
from tests.launch.conftest import BOUND_S, TEST_PREFIX, log_has, needs_slurm, wait_for

SMALL = Resources(time_min=5, signal_delay_s=30)
UNKNOWN_JOB = "2000000000"  # no job of the test cluster's has this id


@pytest.fixture
def blind_accounting(monkeypatch):
    """Accounting that does not know our jobs: sacct is asked about UNKNOWN_JOB instead (squeue is untouched)."""
    real = cluster._sacct
    monkeypatch.setattr(cluster, "_sacct", lambda _ids, fields: real([UNKNOWN_JOB], fields))
    monkeypatch.setattr(cluster, "GONE_SETTLE_S", 3)  # not a minute per test


def waiting(handle):
    """handle.wait() in a thread: the test bounds how long it may take."""
    results = []
    thread = threading.Thread(target=lambda: results.append(handle.wait()), daemon=True)
    thread.start()
    return thread, results


def ended(thread, results):
    thread.join(timeout=BOUND_S)
    assert not thread.is_alive(), "the wait on the job never returned"
    return results[0]


@needs_slurm
def test_cancel_of_a_job_accounting_does_not_know_ends_cancelled(tmp_path, blind_accounting):
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never")), kind="slurm", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "blind-cancel", project=tmp_path)
    thread, results = waiting(h)
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    assert registry.cancel(tmp_path, h.job_id) == [h.job_id]
    r = ended(thread, results)
    assert r.state == "CANCELLED" and "was cancelled" in r.error, r
    assert [x.state for x in registry.list_jobs(tmp_path)] == ["CANCELLED"]


@needs_slurm
def test_job_killed_unknown_to_accounting_ends_lost_with_the_reason(tmp_path, blind_accounting):
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never"), heed_signal=False), kind="slurm",
               resources=SMALL, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "blind-kill", project=tmp_path)
    thread, results = waiting(h)
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    subprocess.run(["scancel", "--signal=KILL", h.job_id], check=True)  # no result file, no cancel marker
    r = ended(thread, results)
    assert r.state == "LOST" and "unknown to accounting" in r.error and str(h.stdout) in r.error, r
    (rec,) = registry.list_jobs(tmp_path)
    assert rec.state == "LOST" and rec.finished and rec.end is not None


@needs_slurm
def test_finished_job_unknown_to_accounting_ends_completed(tmp_path, blind_accounting):
    h = submit(functools.partial(jobfns.add, 2, 3), kind="slurm", resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "blind-add", project=tmp_path)
    r = ended(*waiting(h))
    assert r.state == "COMPLETED" and r.value == jobfns.add(2, 3), r


def test_completing_reads_as_accountings_final_state(monkeypatch):
    """A job stuck in COMPLETING (squeue) that accounting has seen end: the final state wins."""
    monkeypatch.setattr(cluster, "_squeue", lambda: {"7": {"State": "COMPLETING", "NodeList": "n1"}})
    monkeypatch.setattr(cluster, "_sacct", lambda _ids, _fields: "7|CANCELLED by 0|0:15|n1|||00:01:00\n")
    assert cluster.query(["7"])["7"]["State"] == "CANCELLED"
    monkeypatch.setattr(cluster, "_sacct", lambda _ids, _fields: "")
    assert cluster.query(["7"])["7"]["State"] == "COMPLETING"
    monkeypatch.setattr(cluster, "_squeue", lambda: {})
    assert cluster.query(["7"])["7"]["State"] == cluster.GONE


@needs_slurm
def test_status_and_follow_end_for_a_job_slurm_no_longer_knows(tmp_path):
    """A job nobody waits on any more, out of the queue and unknown to accounting: `gemctl status` says LOST
    (not RUNNING for ever) and `gemctl logs --follow` ends. A job submitted a moment ago is given time."""
    import time

    def record(job_id: str, age_s: float) -> registry.JobRecord:
        rec = registry.JobRecord(job_id=job_id, kind="slurm", name=TEST_PREFIX + "gone", state="RUNNING",
                                 submitted=time.time() - age_s, stdout=str(tmp_path / f"{job_id}.out"),
                                 stderr=str(tmp_path / f"{job_id}.err"), job_dir=str(tmp_path))
        registry.save(tmp_path, rec)
        return rec

    record(UNKNOWN_JOB, 2 * cluster.GONE_SETTLE_S)
    record("2000000001", 0)
    assert {r.job_id: r.state for r in registry.list_jobs(tmp_path)} == {UNKNOWN_JOB: "LOST",
                                                                         "2000000001": "RUNNING"}
    (tmp_path / f"{UNKNOWN_JOB}.out").write_text("last words\n")
    assert list(registry.job_log(tmp_path, UNKNOWN_JOB, follow=True)) == ["last words"]
