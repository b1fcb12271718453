"""What a job asks the cluster for: the `resources:` section of a recipe.

Plain types only, so the recipe loader can read, type-check and hash it like any other section; numeric ranges
are in each field's metadata ("min"/"max"). `local` and `debug` runs ignore what they cannot use (partition, mem...).
"""

from dataclasses import dataclass, field, fields
from typing import Any

from gem_stages.errors import InputError


def _range(default: float | None, lo: float, hi: float) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass
class Resources:
    # machines; ranks = nodes * tasks per node
    nodes: int = _range(1, 1, 4096)
    # GPUs on each node; gemctl runs one task (rank) per GPU
    gpus_per_node: int = _range(0, 0, 16)
    # ranks per node on CPU nodes; None = gpus_per_node, or 1 without GPUs
    tasks_per_node: int | None = _range(None, 1, 256)
    # CPU cores per rank (data-loader workers + 1)
    cpus_per_task: int = _range(1, 1, 1024)
    # memory per node in GB; None = the cluster's default
    mem_gb: float | None = _range(None, 0.1, 16384)
    # wall-clock limit of one run in minutes; longer work stops at a step boundary, is requeued and resumes
    time_min: int = _range(60, 1, 60 * 24 * 30)
    partition: str | None = None  # SLURM partition; None = the cluster's default partition
    account: str | None = None  # SLURM account to charge
    qos: str | None = None  # SLURM quality of service
    constraint: str | None = None  # SLURM node features, e.g. "a100|h100"
    # more sbatch flags, without "--"; an empty value is a bare flag: {"exclusive": "", "mail-type": "END"}
    extra_sbatch: dict[str, str] = field(default_factory=dict)
    # times a job stopped by the time limit or preemption is put back in the queue to resume
    max_requeues: int = _range(3, 0, 1000)
    # seconds of warning before the time limit, to finish the step and save a checkpoint
    signal_delay_s: int = _range(120, 5, 3600)
    # sweep points (job array elements) that may run at once
    array_parallelism: int = _range(16, 1, 10000)

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
