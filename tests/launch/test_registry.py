"""The job registry behind `gemctl status`, `gemctl logs` and `gemctl cancel`."""

import functools
import threading
import time

import pytest

from gem_stages.errors import InputError
from gemctl.launch import Resources, launch, registry, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
SMALL = Resources(time_min=5, signal_delay_s=30)


def test_status_and_logs_of_finished_jobs(tmp_path):
    ok = launch(functools.partial(jobfns.add, 1, 2), kind="slurm", resources=SMALL, job_dir=tmp_path / "jobs",
                name=TEST_PREFIX + "add", project=tmp_path, tags={"stage": "train_stage1", "point": "lr=1e-4",
                                                                  "run": "run-abc"})
    bad = launch(functools.partial(jobfns.fail, "kaputt"), kind="local", resources=SMALL, job_dir=tmp_path / "jobs",
                 name=TEST_PREFIX + "fail", project=tmp_path, tags={"stage": "eval"})
    recs = registry.list_jobs(tmp_path)
    for _ in range(50):  # sacct learns where and when a fast job ran a moment after its result is there
        if recs[0].node and recs[0].start and recs[0].exit_code is not None:
            break
        time.sleep(0.2)
        recs = registry.list_jobs(tmp_path)
    assert [(r.job_id, r.stage, r.point, r.state) for r in recs] == [
        (ok.job_id, "train_stage1", "lr=1e-4", "COMPLETED"), (bad.job_id, "eval", "", "FAILED")]
    assert recs[0].node == "vm" and recs[0].exit_code == 0 and recs[0].start and recs[0].elapsed_s >= 0
    assert recs[1].exit_code == 1 and recs[1].kind == "local"
    assert set(recs[0].to_json()) >= {"job_id", "stage", "point", "state", "elapsed_s", "node", "sweep", "run"}
    lines = list(registry.job_log(tmp_path, "run-abc"))  # by run id
    assert any("gemctl: rank 0/1" in x for x in lines)
    assert any("ValueError: kaputt" in x for x in registry.job_log(tmp_path, bad.job_id))
    with pytest.raises(InputError, match="no gemctl job, run or sweep 'nope'"):
        registry.job_log(tmp_path, "nope").__next__()


def test_follow_logs_and_cancel_a_running_job(tmp_path):
    h = submit(functools.partial(jobfns.sleep, 120), kind="slurm", resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "sleep", project=tmp_path, tags={"stage": "long"})
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(registry.job_log(tmp_path, h.job_id, follow=True)))
    follower.start()
    deadline = time.time() + 30
    while not any(line == "sleeping" for line in followed) and time.time() < deadline:
        time.sleep(0.2)
    assert "sleeping" in followed  # streamed while the job runs
    assert [r.state for r in registry.list_jobs(tmp_path)] == ["RUNNING"]
    assert registry.cancel(tmp_path, h.job_id) == [h.job_id]
    r = h.wait()
    assert r.state == "CANCELLED" and "was cancelled" in r.error
    follower.join(timeout=30)
    assert not follower.is_alive()  # follow ends when the job does
    assert registry.list_jobs(tmp_path)[0].state == "CANCELLED"
    assert registry.cancel(tmp_path, h.job_id) == []  # nothing left to cancel


def test_cancel_a_local_job(tmp_path):
    h = submit(functools.partial(jobfns.sleep, 120), kind="local", resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "sleep", project=tmp_path)
    deadline = time.time() + 30
    while not (h.stdout.exists() and "sleeping" in h.stdout.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    assert registry.cancel(tmp_path, h.job_id) == [h.job_id]
    r = h.wait()
    assert not r.ok and r.value is None
