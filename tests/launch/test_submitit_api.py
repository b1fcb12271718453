"""The parts of submitit gemctl relies on beyond its public API, pinned: if an upgrade changes them, these fail
(by name) instead of dry runs printing wrong scripts or jobs ignoring the timeout signal. Needs no SLURM."""

import inspect
import signal

import submitit
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, LocalJobEnvironment
from submitit.slurm.slurm import SlurmJobEnvironment, _make_sbatch_string

from gemctl.launch import Resources, executor, preemption

FULL = Resources(nodes=2, gpus_per_node=4, cpus_per_task=6, mem_gb=3, time_min=90, partition="gpu", account="acc",
                 qos="high", constraint="a100", signal_delay_s=45, array_parallelism=3,
                 extra_sbatch={"exclusive": "", "mail-type": "END"})


def test_make_sbatch_string_takes_the_parameters_we_pass():
    params = inspect.signature(_make_sbatch_string).parameters
    ours = {"command", "folder", "map_count", *executor._slurm_params(FULL, "stage3", None)}
    assert ours <= set(params), sorted(ours - set(params))
    assert all(params[k].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for k in ours)


def test_sbatch_script_has_the_lines_our_resources_ask_for(tmp_path):
    text = executor.sbatch_script("python -u -m submitit.core._submit /jobs", tmp_path, 10,
                                  executor._slurm_params(FULL, "stage3", tmp_path / "code" / "abc"))
    sbatch = {line for line in text.splitlines() if line.startswith("#SBATCH ")}
    assert sbatch >= {
        "#SBATCH --job-name=stage3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=6", "#SBATCH --mem=3072M", "#SBATCH --time=90", "#SBATCH --partition=gpu",
        "#SBATCH --account=acc", "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@45",
        "#SBATCH --array=0-9%3", "#SBATCH --exclusive", "#SBATCH --mail-type=END", "#SBATCH --open-mode=append",
    }, sorted(sbatch)
    # the job runs `srun ... python -u -m submitit.core._submit`, after our setup lines (the code snapshot)
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body[0] == f"export PYTHONPATH={tmp_path}/code/abc${{PYTHONPATH:+:$PYTHONPATH}}"
    assert body[-1].startswith("srun ") and "--kill-on-bad-exit=1" in body[-1]
    assert body[-1].endswith("python -u -m submitit.core._submit /jobs")


def test_timeout_signal_is_submitits_usr2_on_slurm_and_local():
    assert submitit.JobEnvironment.USR_SIG == SlurmJobEnvironment.USR_SIG == LocalJobEnvironment.USR_SIG == "USR2"
    assert preemption.timeout_signal() is signal.SIGUSR2
    assert LOCAL_REQUEUE_RETURN_CODE == 144  # what preemption.requeue_or_fail exits with on the local executor

