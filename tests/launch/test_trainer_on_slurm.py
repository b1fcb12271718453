"""gem_stages' trainer as a 2-rank SLURM job: DDP over gloo, and exact resume after a preemption signal + requeue."""

import subprocess
import time
from functools import partial

import pytest

from gemctl.launch import Resources, launch, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=10, signal_delay_s=5, max_requeues=2)


def test_two_rank_trainer_ends_with_identical_weights_and_resumes_exactly(tmp_path):
    ref = launch(partial(jobfns.gem_trainer, str(tmp_path / "ref")), kind="slurm", resources=TWO_RANKS,
                 job_dir=tmp_path / "jobs", name=TEST_PREFIX + "trainer")
    assert ref.ok, ref.log_tail()
    assert [v["rank"] for v in ref.values] == [0, 1]
    assert ref.values[0]["weights"] == ref.values[1]["weights"]
    assert ref.value["status"] == "completed" and ref.value["step"] == 12

    handle = submit(partial(jobfns.gem_trainer, str(tmp_path / "resume"), step_s=0.5), kind="slurm",
                    resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "trainer-pre")
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "resume").glob("ckpt-*")):
        # wait until it trains: then send the time-limit warning signal SLURM would send
        out = handle.stdout.read_text() if handle.stdout.exists() else ""
        if "rank 0/2" in out:
            time.sleep(2)
            subprocess.run(["scancel", "--signal=USR2", handle.job_id], check=True)
            break
        time.sleep(0.5)
    result = handle.wait()
    assert result.ok, result.log_tail()
    assert result.requeues == 1
    assert result.value["resumed_from"] > 0 and result.value["step"] == 12
    assert result.values[0]["weights"] == result.values[1]["weights"] == ref.value["weights"]
