"""`gemctl ablate FILE`: the variants x seeds of an ablation file trained and scored through the pipeline, then one
table (and report) comparing each variant to the baseline. Registered in cli.py."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from .launch import Executor

console = Console(soft_wrap=True)  # a summary line stays one line, however narrow the terminal


def ablate(
    file: Annotated[str, typer.Argument(help="An ablation file, e.g. recipes/ablations/gem-synth.yaml.")],
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per variant (default: the file's seeds).")]
    = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", "-v", help="Run and compare only this variant (repeatable), with the baseline.")] = None,
    executor: Annotated[str, typer.Option("--executor", "-e", metavar="[local|slurm]",
                                          help="Where the stages run: local (default) or slurm.")] = "local",
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", envvar="GEMCTL_TRACKING_URI", help="MLflow store (default: the project's own).")] = None,
) -> None:
    """Run an ablation: every variant x seed through the pipeline (finished runs are reused), then per benchmark
    metric mean ± std per variant and the difference to the baseline with a paired bootstrap 95% interval, as a
    table, runs/ablations/NAME/report.md and .html with one plot per metric, and an MLflow run."""
    from gem_stages.errors import InputError

    from . import ablate as ab_mod
    from . import ablation_report as report
    from .project import find_project

    if executor not in (Executor.LOCAL.value, Executor.SLURM.value):
        raise InputError(f"unknown executor '{executor}': choose local or slurm")
    project = find_project()
    ab = ab_mod.load(ab_mod.file_path(project, file), seeds, variant)
    runs = ab_mod.expand(project, ab)  # everything is checked before anything is written
    names = [v.name for v in ab.variants]
    done = ab_mod.run(project, ab, runs, executor=executor, tracking_uri=tracking_uri, console=console)
    what = (f"trained {done.stages} stage(s), scored {done.evals} evaluation(s)" if done.stages or done.evals
            else "all up to date: nothing submitted")
    console.print(f"ablation {ab.name}: {len(names)} variants x {ab.seeds} seed(s) = {len(runs)} runs on "
                  f"{ab.recipe}; {what}", highlight=False, markup=False)
    scores = ab_mod.scores(project, runs)
    rows = report.table(scores, names, ab.baseline)
    folder = ab_mod.report_dir(project, ab)
    report.write(folder, ab.name, ab.description, rows, scores, ab_mod.runs_json(runs), ab.baseline, ab.seeds)
    run_id = ab_mod.log_parent(project, ab, runs, folder, rows)
    report.print_table(console, f"ablation {ab.name} (baseline {ab.baseline}; {report.method_short(ab.seeds)})",
                       rows)
    console.print(f"report: {folder.relative_to(project.root)}/report.md, report.html; MLflow run {run_id}",
                  highlight=False, markup=False)
