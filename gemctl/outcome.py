"""The stage contract: what a stage job returns to its launcher, and the two files a stage leaves behind.

    runs/<recipe>/<stage>/summary.json   the stage's result (written by the stage program, lineage added after)
    runs/<recipe>/<stage>.error.json     why the last run failed, and the exit code the CLI passes on

Each file has one writer and one reader here; nothing else opens them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gem_stages.files import atomic_write_text

SUMMARY = "summary.json"


@dataclass(frozen=True)
class StageOutcome:
    """What one stage job returns (through submitit's result pickle) on every rank."""

    # completed: output written; preempted: checkpointed on the stop signal, run again to finish (the launcher
    # requeues it); input_error: the user's input is wrong, `message` says what and how to fix it (exit 2)
    # no_space: a filesystem filled up mid-write (complete checkpoints kept; `message` names it; exit 1)
    status: Literal["completed", "preempted", "input_error", "no_space"]
    summary: dict = field(default_factory=dict)  # the stage's summary.json content ({} for an input error)
    message: str = ""  # an input error's (or a full disk's) one line

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def write_summary(out_dir: Path, summary: dict) -> None:
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))


def read_summary(out_dir: Path) -> dict | None:
    """A stage output folder's summary, or None where there is none (not run, or being replaced)."""
    path = out_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def error_file(recipe_dir: Path, stage: str) -> Path:
    return recipe_dir / f"{stage}.error.json"


def write_error(recipe_dir: Path, stage: str, message: str, exit_code: int) -> None:
    atomic_write_text(error_file(recipe_dir, stage), json.dumps({"message": message, "exit_code": exit_code}))


def read_error(recipe_dir: Path, stage: str) -> dict | None:
    """{"message", "exit_code"} of the stage's last failed run, or None."""
    path = error_file(recipe_dir, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def clear_error(recipe_dir: Path, stage: str) -> None:
    error_file(recipe_dir, stage).unlink(missing_ok=True)


CANCELLED_EXIT = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


class StageFailed(RuntimeError):
    """A stage command exited non-zero under DVC; nothing was recorded in dvc.lock for it. `exit_code` is the
    one to leave with; `reported`: the stage printed why already (else print this error)."""

    def __init__(self, recipe: str, stage: str, detail: str, exit_code: int = 1, reported: bool = False,
                 cancelled: bool = False):
        # a cancel is what the user asked for: said as it is, not as a failure
        super().__init__(f"{stage}@{recipe}: {detail}" if cancelled else f"{stage}@{recipe} failed: {detail}")
        self.recipe, self.stage, self.detail = recipe, stage, detail
        self.exit_code, self.reported, self.cancelled = exit_code, reported, cancelled
