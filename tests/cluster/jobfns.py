"""Functions the cluster tests run as SLURM jobs (pickled by value: the job need not import the tests)."""

import os
import socket


def gloo_all_reduce() -> dict:
    """One rank of a torch.distributed gloo job: sums rank+1 over all ranks and says where it ran."""
    import submitit
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()  # MASTER_ADDR = the first node's name
    dist.init_process_group("gloo")
    try:
        assert dist.is_initialized() and dist.get_world_size() == 2, f"world size {dist.get_world_size()}, want 2"
        total = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(total)
        return {"node": os.environ["SLURMD_NODENAME"], "hostname": socket.gethostname(), "rank": dist.get_rank(),
                "world_size": dist.get_world_size(), "master_addr": env.master_addr, "sum": total.item()}
    finally:
        dist.destroy_process_group()
