"""The rich summary printed after `gemctl train` / `gemctl run`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .pipeline import ReproResult, upstream
from .project import Project
from .recipe import Recipe
from .stage_runner import read_summary


def _losses(summary: dict) -> str:
    losses = summary.get("losses") or {}
    order = ["loss", "lm", "depth", "action"]  # total first, then the parts
    return "\n".join(f"{k}={losses[k]:.4f}" for k in order if k in losses)


def print_run(console: Console, project: Project, recipe: Recipe, stage: str, result: ReproResult,
              seconds: float) -> None:
    if not result.ran:
        console.print(f"[green]{stage}@{recipe.name} is up to date[/green] ({seconds:.1f} s): nothing ran; "
                      "--force re-runs it.")
    table = Table(title=f"recipe {recipe.name} (hash {recipe.content_hash})", title_justify="left")
    for col in ("stage", "this call", "steps"):
        table.add_column(col, no_wrap=True)
    table.add_column("final losses", no_wrap=True)  # mean of the last micro-batches
    table.add_column("output", no_wrap=True)  # the checkpoint is its model/ folder
    table.add_column("mlflow run", no_wrap=True)
    for s in upstream(stage):
        summary = read_summary(project, recipe.name, s) or {}
        state = "[yellow]ran[/yellow]" if s in result.ran else "[dim]up to date[/dim]"
        ckpt = project.stage_dir(recipe.name, s)
        table.add_row(s, state, str(summary.get("step", "")), _losses(summary),
                      str(ckpt.relative_to(project.root)), summary.get("mlflow_run_id", "")[:8])
    console.print(table)
    if result.ran:
        console.print(f"ran {', '.join(result.ran)} in {seconds:.1f} s; lineage in {project.tracking_uri}")
        console.print("commit dvc.lock and runs/*/params.json to record this state in git")
