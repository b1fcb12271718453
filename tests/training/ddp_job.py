"""The real GEM training stage as a (possibly multi-rank) job, instrumented to report what each rank did.
The tests register this module with cloudpickle to be pickled by value: jobs need not import the tests package."""

import os
import socket
from pathlib import Path


def recorded_stage(stage: str, *, shard: tuple[int, int] | None = None, **stage_args) -> dict:
    """gem_stages.train.train_stage, watching its collate: the sample ids of every micro-batch this process
    trained on, in order, and the trained weights."""
    import gem_stages.train as stage_program

    make_collate, seen, models = stage_program.make_collate, [], []

    def recording(model, *args, **kwargs):
        collate = make_collate(model, *args, **kwargs)
        models.append(model)

        def collate_and_record(samples):
            seen.append([s["id"] for s in samples])
            return collate(samples)

        return collate_and_record

    stage_program.make_collate = recording
    try:
        summary = stage_program.train_stage(stage, shard=shard, **stage_args)
    finally:
        stage_program.make_collate = make_collate
    weights = {n: p.detach().clone() for n, p in models[0].named_parameters()}
    return {"summary": summary, "micro_batches": seen, "weights": weights}


def gem_stage_job(expect_world: int, **stage_args) -> dict:
    """One rank of a data-parallel GEM stage. Fails unless torch.distributed formed a group of expect_world."""
    import torch
    import torch.distributed as dist

    out = recorded_stage(**stage_args)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed was never initialised: the ranks trained alone")
    if dist.get_world_size() != expect_world:
        raise RuntimeError(f"the process group has {dist.get_world_size()} ranks, expected {expect_world}")
    return {**out, "rank": dist.get_rank(), "world": dist.get_world_size(),
            "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()), "out_dir": str(stage_args["out_dir"]),
            "checkpoint": Path(stage_args["out_dir"], "model").is_dir(), "threads": torch.get_num_threads()}
