"""What a job asks the cluster for: the `resources:` section of a recipe.

Plain types only, so the recipe loader can read, type-check and hash it like any other section; numeric ranges
are in each field's metadata ("min"/"max"). `local` and `debug` runs ignore what they cannot use (partition, mem...).
"""

from dataclasses import dataclass, field, fields
from typing import Optional

from gem_stages.errors import InputError


@dataclass
class Resources:
    nodes: int = field(default=1, metadata={"min": 1, "max": 4096})  # machines; ranks = nodes * tasks_per_node
    gpus_per_node: int = field(default=0, metadata={"min": 0, "max": 16})  # GPUs on each node; one task (rank) per GPU
    tasks_per_node: Optional[int] = field(default=None, metadata={"min": 1, "max": 256})  # ranks per node; None = gpus_per_node, or 1 without GPUs
    cpus_per_task: int = field(default=1, metadata={"min": 1, "max": 1024})  # CPU cores per rank (data-loader workers + 1)
    mem_gb: Optional[float] = field(default=None, metadata={"min": 0.1, "max": 16384})  # memory per node in GB; None = cluster default
    time_min: int = field(default=60, metadata={"min": 1, "max": 60 * 24 * 30})  # wall-clock limit of one run, in minutes; longer work resumes after requeue
    partition: Optional[str] = None  # SLURM partition; None = the cluster's default partition
    account: Optional[str] = None  # SLURM account to charge
    qos: Optional[str] = None  # SLURM quality of service
    constraint: Optional[str] = None  # SLURM node features, e.g. "a100|h100"
    extra_sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch flags without "--", e.g. {"exclusive": "", "mail-type": "END"}
    max_requeues: int = field(default=3, metadata={"min": 0, "max": 1000})  # times a preempted/timed-out job is put back in the queue
    signal_delay_s: int = field(default=120, metadata={"min": 5, "max": 3600})  # warning before the time limit, to save a checkpoint
    array_parallelism: int = field(default=16, metadata={"min": 1, "max": 10000})  # sweep points that may run at once

    def __post_init__(self) -> None:
        for f in fields(self):
            v, lo, hi = getattr(self, f.name), f.metadata.get("min"), f.metadata.get("max")
            if v is None or lo is None:
                continue
            if not lo <= v <= hi:
                raise InputError(f"resources.{f.name}={v} is out of range [{lo}, {hi}]")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise InputError(
                f"resources.tasks_per_node={self.tasks_per_node} with gpus_per_node={self.gpus_per_node}: "
                "gemctl runs one task per GPU; leave tasks_per_node unset"
            )
        if self.signal_delay_s >= self.time_min * 60:
            # the warning would come at once, and every run would stop before its first step
            raise InputError(
                f"resources.signal_delay_s={self.signal_delay_s} must be shorter than time_min={self.time_min} min"
            )

    @property
    def ntasks_per_node(self) -> int:
        """Ranks per node: one per GPU, else tasks_per_node (default 1)."""
        return self.gpus_per_node or self.tasks_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node
