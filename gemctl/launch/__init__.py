"""Launch: run a stage's function as a job (debug | local | slurm) and block on it, with requeue-safe resume,
code snapshots, torch.distributed setup and a job registry for `gemctl status/logs/cancel`.

Light on purpose: nothing here imports submitit or torch until a job is submitted (`gemctl --help` stays fast).
"""

from .executor import (
    KINDS,
    Executor,
    JobHandle,
    JobUpdate,
    LaunchResult,
    dry_run,
    kind_from_env,
    launch,
    launch_array,
    submit,
    wait_all,
)
from .preemption import should_stop, should_stop_all
from .resources import Resources

__all__ = [
    "KINDS", "Executor", "JobHandle", "JobUpdate", "LaunchResult", "Resources", "dry_run", "kind_from_env", "launch",
    "launch_array", "should_stop", "should_stop_all", "submit", "wait_all",
]
