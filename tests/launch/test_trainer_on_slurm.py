"""gem_stages' trainer as a 2-rank SLURM job: DDP over gloo, and exact resume after a preemption signal + requeue,
also when the signal lands before the first step (the run checkpoints step 0 and the requeued one starts over)."""

import signal
from functools import partial

import pytest

from gemctl.launch import Resources, launch, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, log_has, wait_for
from tests.launch.test_preemption import send_signal

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=10, signal_delay_s=5, max_requeues=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slurm_cluster):
    d = tmp_path_factory.mktemp("trainer_ref")
    return launch(partial(jobfns.gem_trainer, str(d / "ref")), kind="slurm", resources=TWO_RANKS,
                  job_dir=d / "jobs", name=TEST_PREFIX + "trainer")


def test_two_rank_trainer_ends_with_identical_weights(reference):
    assert reference.ok, reference.log_tail()
    assert [v["rank"] for v in reference.values] == [0, 1]
    assert reference.values[0]["weights"] == reference.values[1]["weights"]
    assert reference.value["status"] == "completed" and reference.value["step"] == 12


@pytest.mark.parametrize("step", [0, 4])
def test_two_rank_trainer_resumes_exactly_from_the_step_it_was_signalled_at(step, reference, tmp_path):
    # the first run waits at the step boundary until the time-limit warning SLURM would send comes
    handle = submit(partial(jobfns.gem_trainer, str(tmp_path / "resume"), pause_at=step), kind="slurm",
                    resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "trainer-pre")
    wait_for(lambda: log_has(handle.stdout, f"at step {step}"), f"the first run to reach step {step}")
    send_signal(handle.job_id, signal.SIGUSR2)
    result = handle.wait()
    assert result.ok, result.log_tail()
    assert result.requeues == 1
    assert (tmp_path / "resume" / f"ckpt-{step:08d}").is_dir()
    assert result.value["resumed_from"] == step and result.value["step"] == 12
    assert result.values[0]["weights"] == result.values[1]["weights"] == reference.value["weights"]
