"""torch.distributed inside a multi-task job.

SLURM starts one task (process) per rank (one per GPU, or tasks_per_node on CPU nodes); we only translate its
variables into torch's env:// ones (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), which
`torch.distributed.init_process_group()` and accelerate read. No torchrun inside the job.
"""

import os
import random

# Rank 0's rendezvous port, drawn from the job id (every rank draws the same) below Linux's default ephemeral range
# (32768-60999): a port there may be held by any outgoing connection on the node, and submitit's own draw
# (20000-60000) met one in a busy test run (EADDRINUSE at rendezvous).
MASTER_PORTS = (20000, 32767)


def master_port(job_id: str) -> int:
    return random.Random(str(job_id)).randint(*MASTER_PORTS)


def export() -> object | None:
    """Export the env:// variables when the job has more than one task; returns submitit's
    TorchDistributedEnvironment (rank, world_size, master_addr...) or None for a single task."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    job = JobEnvironment()
    if job.num_tasks <= 1:
        return None
    os.environ["MASTER_PORT"] = str(master_port(job.job_id))  # also over one a parent job passed down
    # CUDA_VISIBLE_DEVICES stays as SLURM set it (all GPUs of the node): accelerate and the usual torch code
    # pick their device as cuda:LOCAL_RANK. overwrite: a job launched from inside another job inherits its vars.
    return TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def backend() -> str:
    """The process-group backend for this machine: nccl with GPUs, gloo on CPU."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"
