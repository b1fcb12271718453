"""The rich summaries printed after `gemctl train` / `gemctl run` and after `gemctl sweep`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .outcome import read_summary
from .pipeline import ReproResult, upstream
from .project import Project
from .recipe import Recipe


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
        summary = read_summary(project.stage_dir(recipe.name, s)) or {}
        state = "[yellow]ran[/yellow]" if s in result.ran else "[dim]up to date[/dim]"
        ckpt = project.stage_dir(recipe.name, s)
        table.add_row(s, state, str(summary.get("step", "")), _losses(summary),
                      str(ckpt.relative_to(project.root)), summary.get("mlflow_run_id", "")[:8])
    console.print(table)
    if result.ran:
        console.print(f"ran {', '.join(result.ran)} in {seconds:.1f} s; lineage in {project.tracking_uri}")
        console.print("commit dvc.lock and runs/*/params.json to record this state in git")


def print_sweep(console: Console, project: Project, sweep) -> None:
    """One row per point of a sweep.Sweep: its grid values, status, steps and final losses."""
    from .sweep import point_dir

    table = Table(title=f"sweep {sweep.id}: {sweep.stage}@{sweep.recipe}", title_justify="left")
    keys = list(sweep.points[0].overrides) if sweep.points else []
    summaries = [read_summary(point_dir(project, sweep, p) / "out") or {} for p in sweep.points]
    parts = [k for k in ("loss", "lm", "depth", "action") if any(k in x.get("losses", {}) for x in summaries)]
    table.add_column("point", no_wrap=True)
    for k in keys:
        table.add_column(k.split(".")[-1], no_wrap=True)  # the last key part: lr, depth, seed
    for col in ("status", "steps", *parts):
        table.add_column(col, no_wrap=True)
    for p, summary in zip(sweep.points, summaries):
        losses = summary.get("losses", {})
        table.add_row(p.id, *[str(p.overrides[k]) for k in keys], summary.get("status", "not run"),
                      str(summary.get("step", "")), *[f"{losses[k]:.4f}" if k in losses else "" for k in parts])
    console.print(table)
