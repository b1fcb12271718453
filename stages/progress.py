"""Training progress for people: a live rich bar on a terminal, plain periodic lines in logs (SLURM, CI)."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in losses.items() if k != "lr")


class RichProgress:
    def __init__(self, label: str, line_every_s: float = 10.0):
        self.label = label
        self.enabled = os.environ.get("RANK", "0") == "0"  # one rank reports
        self.console = Console(stderr=True)
        self.live = self.enabled and sys.stderr.isatty()
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._progress = None
        self._task = None
        self._start: int | None = None  # the step this process started from (a resumed run starts past 0)

    def __enter__(self) -> RichProgress:
        if self.live:
            self._progress = Progress(
                TextColumn(f"[bold]{self.label}[/bold]"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                console=self.console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=None, rate="", losses="")
        return self

    def update(self, step: int, total: int, losses: dict[str, float], elapsed: float) -> None:
        if not self.enabled:
            return
        if self._start is None:  # the trainer reports after every step: the first report is one step in
            self._start = step - 1
            if self._progress is not None:  # the bar's own time-remaining estimate starts there too
                self._progress.reset(self._task, completed=self._start, total=total)
        done = step - self._start  # steps run in `elapsed` seconds (not those before a resume)
        rate = f"{done / elapsed:.2f} step/s" if elapsed > 0 else ""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, total=total, rate=rate, losses=_fmt(losses))
            return
        now = time.monotonic()
        if step == total or now - self._last_line >= self.line_every_s:
            self._last_line = now
            eta = (total - step) * elapsed / done if done else 0.0
            print(f"[{self.label}] step {step}/{total} {rate} eta {eta:.0f}s {_fmt(losses)}", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
