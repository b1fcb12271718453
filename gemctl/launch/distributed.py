"""torch.distributed inside a multi-task job.

SLURM starts one task (process) per rank (one per GPU, or tasks_per_node on CPU nodes); we only translate its
variables into torch's env:// ones (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), which
`torch.distributed.init_process_group()` and accelerate read. No torchrun inside the job.
"""



def export() -> object | None:
    """Export the env:// variables when the job has more than one task; returns submitit's
    TorchDistributedEnvironment (rank, world_size, master_addr...) or None for a single task."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return None
    # CUDA_VISIBLE_DEVICES stays as SLURM set it (all GPUs of the node): accelerate and the usual torch code
    # pick their device as cuda:LOCAL_RANK. overwrite: a job launched from inside another job inherits its vars.
    return TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def backend() -> str:
    """The process-group backend for this machine: nccl with GPUs, gloo on CPU."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"
