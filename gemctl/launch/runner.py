"""What submitit runs inside the job, around the user's function: signals, torch.distributed env, requeue."""

import os
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import distributed, preemption


@dataclass
class Failure:
    """A debug (in-process) run's exception, returned instead of raised: submitit's DebugJob opens pdb on error."""

    traceback: str


@dataclass
class JobMain:
    fn: Callable[[], Any]
    max_requeues: int
    in_process: bool = False  # debug executor: no signals to catch, no requeue, never raise

    def __call__(self) -> Any:
        if self.in_process:
            try:
                return self.fn()
            except Exception:  # noqa: BLE001 - reported as the job's failure, like submitit does
                return Failure(traceback.format_exc())
        preemption.install()
        dist = distributed.export()
        rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
        print(
            f"gemctl: rank {rank}/{world} on {socket.gethostname()}, restart {preemption.restarts()}, "
            f"code {os.environ.get('GEMCTL_CODE', '(working tree)')}",
            flush=True,
        )
        _one_log()
        result = self.fn()
        sys.stdout.flush()
        if preemption.is_preempted(result):
            preemption.requeue_or_fail(self.max_requeues)
        return result


def _one_log() -> None:
    """From here on, write stderr into the stdout log too (one file, one offset), as sbatch does without --error:
    the job's lines stay in the order it wrote them, for `gemctl logs` and a failed job's tail."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(sys.stdout.fileno(), sys.stderr.fileno())
