"""`gemctl sync`: deliver what stages and evaluations spooled while the tracking store was away (tracking_spool.py)."""

from __future__ import annotations

import typer
from rich.console import Console


def sync() -> None:
    """Deliver what stages and evaluations kept locally while the MLflow store was unavailable (metrics, logged
    models and their registration, evaluation runs, artifacts, run ends)."""
    from .project import find_project
    from .tracking_spool import deliver_all

    console = Console(highlight=False)
    results = deliver_all(find_project())
    if not results:
        console.print("nothing to sync: no spooled tracking records")
        return
    waiting = 0
    for run_id, result in results.items():
        if isinstance(result, int):
            console.print(f"run {run_id}: delivered {result} metric point(s)")
        else:
            waiting += 1
            console.print(f"run {run_id}: the store is still unavailable ({result}); kept for the next sync")
    if waiting:
        raise typer.Exit(1)
