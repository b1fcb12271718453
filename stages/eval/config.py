"""The recipe's `eval:` list: which benchmarks score which stage's checkpoint, and how."""

from __future__ import annotations

from typing import Literal

from gem_models.config import Int, Str, setting

from ..config import settings


@settings
class EvalEntry:
    benchmark: Str = setting(
        ..., "A built-in benchmark (vsi-bench, cv-bench, ...) or the NAME of a benchmarks/NAME.yaml in the project.",
        min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: Str | None = setting(
        None, "The benchmark's data, as downloaded (relative paths are from the project root); null: the path its "
        "benchmarks/NAME.yaml gives, or none for benchmarks that build their own items.")
    stage: Literal["stage1", "stage2", "stage3", "stage4"] | None = setting(
        None, "The checkpoint scored: this stage's model (null: stage3, or stage4 for closed-loop benchmarks).")
    limit: Int | None = setting(None, "Score only the first N items (null: all).", ge=1)
    batch_size: Int = setting(8, "Items per generation batch (left-padded, one KV cache).", ge=1)
    max_new_tokens: Int = setting(32, "Longest answer generated per item (greedy).", ge=1)
    shards: Int = setting(1, "Split the items over this many jobs (a SLURM array on --executor slurm) and merge.",
                          ge=1)

    def stage_for(self, closed_loop: bool = False) -> str:
        return self.stage or ("stage4" if closed_loop else "stage3")


def check_unique(entries: list[EvalEntry]) -> None:
    """One entry per benchmark: its outputs go to runs/<recipe>/eval/<benchmark>."""
    names = [e.benchmark for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"eval lists benchmark {dup!r} twice: one entry per benchmark (its outputs go to "
                         f"runs/<recipe>/eval/{dup})")


def entry(entries: list[EvalEntry], name: str) -> EvalEntry | None:
    return next((e for e in entries if e.benchmark == name), None)
