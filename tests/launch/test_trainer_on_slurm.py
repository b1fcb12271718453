"""gem_stages' trainer as a 2-rank SLURM job: DDP over gloo, and exact resume after a preemption signal + requeue."""

import signal
from functools import partial

import pytest

from gemctl.launch import Resources, launch, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, log_has, wait_for
from tests.launch.test_preemption import send_signal

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=10, signal_delay_s=5, max_requeues=2)


def test_two_rank_trainer_ends_with_identical_weights_and_resumes_exactly(tmp_path):
    ref = launch(partial(jobfns.gem_trainer, str(tmp_path / "ref")), kind="slurm", resources=TWO_RANKS,
                 job_dir=tmp_path / "jobs", name=TEST_PREFIX + "trainer")
    assert ref.ok, ref.log_tail()
    assert [v["rank"] for v in ref.values] == [0, 1]
    assert ref.values[0]["weights"] == ref.values[1]["weights"]
    assert ref.value["status"] == "completed" and ref.value["step"] == 12

    # the first run waits at step 4 until the time-limit warning SLURM would send comes: it stops exactly there
    handle = submit(partial(jobfns.gem_trainer, str(tmp_path / "resume"), pause_at=4), kind="slurm",
                    resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "trainer-pre")
    wait_for(lambda: log_has(handle.stdout, "at step 4"), "the first run to reach step 4")
    send_signal(handle.job_id, signal.SIGUSR2)
    result = handle.wait()
    assert result.ok, result.log_tail()
    assert result.requeues == 1
    assert (tmp_path / "resume" / "ckpt-00000004").is_dir()
    assert result.value["resumed_from"] == 4 and result.value["step"] == 12
    assert result.values[0]["weights"] == result.values[1]["weights"] == ref.value["weights"]
