"""Preemption-safe exact resume.

SLURM warns a job before killing it: USR2 `signal_delay_s` before the time limit (sbatch --signal, set by
submitit), SIGTERM on preemption. submitit's own USR2 handler checkpoints and requeues at once, in the middle of
whatever step is running. Instead, the signal only sets a flag here; the training code polls `should_stop()` at
each step boundary, saves a checkpoint and returns a result with status "preempted"; then `requeue_or_fail` puts
the job back in the queue, where it starts again from the snapshot and the training code resumes from its
checkpoint. Each rank gets the signal (it is sent to every task of the step) and has its own flag; ranks agree on
the step to stop at with `should_stop_all()` (an all-reduce), called by every rank at the same step.

An external `scontrol requeue` sends no signal: the job is killed and resumes from its last checkpoint.
A signal that lands before the first step stops the run at step 0: it checkpoints step 0 and the requeued run
starts over, ending as an uninterrupted one. One that lands while the job's Python is still starting, before
`install()`, ends that task (the signal's default action): the job fails and is not requeued.

SIGTERM means preemption, unless `gemctl cancel` (or Ctrl-C in the launching gemctl, which does the same) wrote
the job's cancel marker first: then the checkpoint is kept and the job is not requeued (an scancel from outside
gemctl is told by SLURM's CANCELLED state). SIGINT means "stop": the first one stops at the next step boundary
without requeue, like a cancel; one that comes while the job is stopping already ends it at once (checkpoints are
written to a temporary name and renamed, so an unfinished one is never taken for a complete one).
"""

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, NoReturn

_stop = False
_interrupted = False  # a SIGINT asked for the stop: a cancel, never a requeue


def should_stop() -> bool:
    """True once this process got the timeout/preemption signal. Pass it to the training code."""
    return _stop


def should_stop_all() -> bool:
    """should_stop(), agreed by all ranks (MAX all-reduce) when torch.distributed is initialised: every rank
    must call it at the same step, and then all stop at that step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _stop
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(_stop)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _on_signal(signum: int, _frame: Any) -> None:
    global _stop, _interrupted
    if signum == signal.SIGINT:
        if _stop:  # asked to stop again: now (SIGKILL's effect, with a line saying why)
            os.write(2, b"gemctl: got SIGINT while stopping, stopping now\n")
            os._exit(128 + signal.SIGINT)
        _interrupted = True
    _stop = True
    # os.write, not print: a handler that prints while the main code prints raises "reentrant call"
    os.write(2, f"gemctl: got {signal.Signals(signum).name}, stopping at the next step boundary\n".encode())


def timeout_signal() -> signal.Signals:
    """The signal SLURM sends before the time limit: submitit asks for it in sbatch's --signal (and the local
    controller sends it) by the public name `JobEnvironment.USR_SIG`, "USR2" unless $SUBMITIT_PREEMPT_SIGNAL
    names another one."""
    from submitit import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


def install() -> None:
    """In the job, after submitit installed its handlers: make the timeout signal and SIGTERM (what SLURM sends
    first on preemption, and what scancel and `gemctl cancel` send) set the flag instead, and SIGINT stop the job
    (Python's default would raise KeyboardInterrupt mid-step: a traceback and no checkpoint)."""
    for sig in {timeout_signal(), signal.SIGTERM, signal.SIGINT}:
        signal.signal(sig, _on_signal)


def is_preempted(result: Any) -> bool:
    """The training code's result says it stopped early (a dict or an object with status "preempted")."""
    status = result.get("status") if isinstance(result, dict) else getattr(result, "status", None)
    return status == "preempted"


def _local_count_file() -> Path:
    return Path(os.environ["SUBMITIT_FOLDER"]) / f"{os.environ['SUBMITIT_LOCAL_JOB_ID']}_requeues"


def restarts() -> int:
    """How many times this job was requeued so far."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        f = _local_count_file()
        return int(f.read_text()) if f.exists() else 0
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def cancel_marker(job_dir: Path, job_id: str) -> Path:
    """Written by `gemctl cancel` before it signals a job, so the job can tell a cancel from a preemption."""
    return Path(job_dir) / "cancelled" / job_id


def cancelled(job_id: str) -> bool:
    folder = os.environ.get("SUBMITIT_FOLDER")
    ids = {job_id, f"local-{job_id}"}
    if folder and any(cancel_marker(Path(folder), i).exists() for i in ids):
        return True
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # an scancel from outside gemctl
        r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30,
                           check=False)
        return "JobState=CANCELLED" in r.stdout
    return False


def requeue_or_fail(max_requeues: int) -> NoReturn:
    """After the training code returned "preempted": requeue the job and leave without a result (SystemExit
    passes through submitit's `except Exception`, so it writes none and the job is not seen as finished);
    or, past max_requeues, fail with a message that says so."""
    from submitit import JobEnvironment
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    env = JobEnvironment()
    if _interrupted and not cancelled(env.job_id):  # a SIGINT: leave the marker a `gemctl cancel` would have
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        marker = cancel_marker(Path(os.environ["SUBMITIT_FOLDER"]), f"local-{env.job_id}" if local else env.job_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    if cancelled(env.job_id):
        # scancel sends SIGTERM too: the checkpoint is taken (a later run resumes from it), but no requeue
        os.write(2, f"gemctl: job {env.job_id} was cancelled; checkpoint kept, not requeueing\n".encode())
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and env.global_rank == 0:
            # `gemctl cancel` sent SIGTERM to the tasks only: end the job as SLURM's CANCELLED (not FAILED)
            subprocess.run(["scancel", env.job_id], capture_output=True, timeout=60, check=False)
        raise SystemExit(1)
    done = restarts()
    if done >= max_requeues:
        raise RuntimeError(
            f"job {env.job_id} was stopped by a timeout/preemption signal {done + 1} times and "
            f"resources.max_requeues={max_requeues} is reached; its checkpoint is kept: raise time_min or "
            "max_requeues, or run the stage again to resume"
        )
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        # submitit's local controller restarts the tasks when one exits with this code; count restarts ourselves
        if env.global_rank == 0:
            _local_count_file().write_text(str(done + 1))
        raise SystemExit(LOCAL_REQUEUE_RETURN_CODE)
    if env.global_rank == 0:  # one requeue per job; it stops every task
        os.write(1, f"gemctl: requeueing job {env.job_id} ({done + 1}/{max_requeues})\n".encode())
        r = subprocess.run(["scontrol", "requeue", env.job_id], capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:  # e.g. the job was cancelled (scancel also sends SIGTERM): nothing to resume
            os.write(2, f"gemctl: scontrol requeue failed: {r.stderr.strip()}\n".encode())
    raise SystemExit(0)
