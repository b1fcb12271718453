"""What a job asks the cluster for: the `resources:` section of a recipe.

A settings dataclass like every recipe section: ranges are declared on the fields, the cross-field rules in one
validator. The upper limits of nodes, CPUs, GPUs, memory and time are the cluster's: gemctl.preflight checks them
against its partition before submitting, and names them. `local` and `debug` runs ignore what they cannot use
(partition, mem...).
"""

from __future__ import annotations

import dataclasses
import re

from pydantic import model_validator

from gem_models.config import Float, Int, Str, setting
from gem_stages.config import settings

SBATCH_FLAG = re.compile(r"-{0,2}[A-Za-z][A-Za-z0-9-]*")


@settings
class Resources:
    nodes: Int = setting(1, "Machines; ranks = nodes * tasks per node.", ge=1)
    gpus_per_node: Int = setting(0, "GPUs on each node; gemctl runs one task (rank) per GPU.", ge=0)
    tasks_per_node: Int | None = setting(
        None, "Ranks per node on CPU nodes; null = gpus_per_node, or 1 without GPUs.", ge=1)
    cpus_per_task: Int = setting(1, "CPU cores per rank (data-loader workers + 1).", ge=1)
    mem_gb: Float | None = setting(None, "Memory per node in GB; null = the cluster's default.", ge=0.1)
    time_min: Int = setting(
        60, "Wall-clock limit of one run in minutes; longer work stops at a step boundary, is requeued and resumes.",
        ge=1)
    partition: Str | None = setting(None, "SLURM partition; null = the cluster's default partition.")
    account: Str | None = setting(None, "SLURM account to charge.")
    qos: Str | None = setting(None, "SLURM quality of service.")
    constraint: Str | None = setting(None, 'SLURM node features, e.g. "a100|h100".')
    extra_sbatch: dict[Str, Str] = setting(
        dict, 'More sbatch flags, without "--"; an empty value is a bare flag: {"exclusive": "", "mail-type": "END"}.')
    max_requeues: Int = setting(
        3, "Times a job stopped by the time limit or preemption is put back in the queue to resume.", ge=0, le=1000)
    signal_delay_s: Int = setting(
        120, "Seconds of warning before the time limit, to finish the step and save a checkpoint.", ge=5, le=3600)
    array_parallelism: Int = setting(16, "Sweep points (job array elements) that may run at once.", ge=1, le=10000)

    @model_validator(mode="after")
    def _consistent(self):
        # values become `#SBATCH --key=value` lines of the job script: shell-quoted by submitit, but a line break
        # would start a line the shell runs, and a key is not quoted at all
        for key in ("partition", "account", "qos", "constraint"):
            if (value := getattr(self, key)) is not None and not value.isprintable():
                raise ValueError(f"{key}={value!r} holds a line break or control character; give it on one line")
        for flag, value in self.extra_sbatch.items():
            if not SBATCH_FLAG.fullmatch(flag):
                raise ValueError(f"extra_sbatch flag {flag!r} is not an sbatch option name (letters, digits and "
                                 "dashes, e.g. mail-type)")
            if not value.isprintable():
                raise ValueError(f"extra_sbatch {flag}={value!r} holds a line break or control character; give it on "
                                 "one line")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise ValueError(f"tasks_per_node={self.tasks_per_node} with gpus_per_node={self.gpus_per_node}: "
                             "gemctl runs one task per GPU; leave tasks_per_node unset")
        if self.signal_delay_s >= self.time_min * 60:
            # the warning would come at once, and every run would stop before its first step
            raise ValueError(f"signal_delay_s={self.signal_delay_s} must be shorter than time_min={self.time_min} min")
        return self

    @property
    def ntasks_per_node(self) -> int:
        """Ranks per node: one per GPU, else tasks_per_node (default 1)."""
        return self.gpus_per_node or self.tasks_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


@settings
class StageResources:
    """Per-stage changes to `resources:`, each merged over it key by key (null: the recipe's resources as they are).
    The paper's VLM stages ran on 32 GPUs and its VLA stage on 8: `stage4: {nodes: 1}` over `nodes: 4`."""

    stage1: Resources | None = setting(None, "Stage 1's resources: the keys given replace the recipe's.")
    stage2: Resources | None = setting(None, "Stage 2's resources: the keys given replace the recipe's.")
    stage3: Resources | None = setting(None, "Stage 3's resources: the keys given replace the recipe's.")
    stage4: Resources | None = setting(None, "Stage 4's resources: the keys given replace the recipe's.")
    label_depth: Resources | None = setting(
        None, "Each job of the label_depth stage (data.depth_shards of them): the keys given replace the recipe's; "
        "always one node, one process, at most one GPU.")


def merge_stage_resources(data: dict) -> dict:
    """A recipe's raw settings with each `stage_resources.<stage>` completed from `resources:`, so a stage names
    only what it changes and every resources rule is checked on what that stage will ask for."""
    stages, base = data.get("stage_resources"), data.get("resources")
    if not isinstance(stages, dict):
        return data
    if dataclasses.is_dataclass(base):
        base = dataclasses.asdict(base)
    if not isinstance(base, dict):
        return data  # the resources section itself is wrong: its own error names it
    merged = {}
    for stage, over in stages.items():
        if dataclasses.is_dataclass(over):
            over = dataclasses.asdict(over)
        merged[stage] = {**base, **over} if isinstance(over, dict) else over
    return {**data, "stage_resources": merged}
