"""The gemctl command line. Heavy libraries (torch, dvc, mlflow, submitit) are imported inside commands so that
`gemctl --help` answers instantly."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console

from gem_stages.errors import InputError

app = typer.Typer(help="Train GEM-style embodied VLMs reproducibly: recipes -> DVC stages -> checkpoints -> MLflow.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
recipe_app = typer.Typer(help="Inspect and validate recipes.", no_args_is_help=True)
stage_app = typer.Typer(help="Run one stage program directly (this is the command dvc.yaml runs).",
                        no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(stage_app, name="stage")

console = Console()
# soft_wrap: an error stays one line however narrow the terminal
err = Console(stderr=True, soft_wrap=True)

RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (a file in recipes/).")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option(
    "--override", "-o", help="Dotted override, e.g. -o stages.stage3.lr=3e-5 (repeatable).")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", "-e", help="Where stages run: local (default), slurm, or debug (in-process).")]
TrackingOpt = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="GEMCTL_TRACKING_URI", help="MLflow store (default: the project's own sqlite store).")]

EXECUTORS = ("local", "slurm", "debug")


def _project():
    from .project import find_project

    return find_project()


def _resolve(name: str, overrides: list[str] | None):
    from .recipe import resolve

    project = _project()
    return project, resolve(project.recipes_dir, name, overrides or [])


# --- recipes -------------------------------------------------------------------------------------------------------
@recipe_app.command("list")
def recipe_list() -> None:
    """List the recipes in recipes/."""
    from .recipe import available, load_raw

    project = _project()
    for name in available(project.recipes_dir):
        desc = load_raw(project.recipes_dir, name).get("description", "")
        console.print(f"[bold]{name}[/bold]  {desc}")


@recipe_app.command("show")
def recipe_show(name: str, override: OverrideOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False) -> None:
    """Print the fully resolved recipe (extends and overrides applied) and its content hash."""
    from .recipe import dump

    _, recipe = _resolve(name, override)
    if as_json:
        print(json.dumps({"hash": recipe.content_hash, "recipe": recipe.to_dict()}, indent=2))
        return
    print(f"# {recipe.name}  hash {recipe.content_hash}")
    print(dump(recipe), end="")


@recipe_app.command("validate")
def recipe_validate(name: str, override: OverrideOpt = None) -> None:
    """Check a recipe (and overrides) against the schema; exit 2 with the first problem."""
    from gem_stages.data.config import check_config

    _, recipe = _resolve(name, override)
    check_config(recipe.data)
    console.print(f"[green]ok[/green] {recipe.name} (hash {recipe.content_hash})")


# --- training ------------------------------------------------------------------------------------------------------
def _train(stage: str, recipe_name: str, overrides: list[str] | None, executor: str, force: bool,
           tracking_uri: str | None) -> None:
    from . import pipeline, summary

    if executor not in EXECUTORS:
        raise InputError(f"unknown executor '{executor}': choose one of {', '.join(EXECUTORS)}")
    pipeline.upstream(stage)  # validates the stage name before anything is written
    project, recipe = _resolve(recipe_name, overrides)
    from gem_stages.data.config import check_config

    check_config(recipe.data)
    if tracking_uri:
        os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
    os.environ["GEMCTL_EXECUTOR"] = executor
    pipeline.render(project, recipe)
    for s in pipeline.upstream(stage):
        (project.recipe_dir(recipe.name) / f"{s}.error.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        result = pipeline.reproduce(project, recipe.name, stage, force=force)
    except pipeline.StageFailed as e:
        for s in pipeline.upstream(stage):  # whichever stage failed already printed its one-line reason
            failed = project.recipe_dir(recipe.name) / f"{s}.error.json"
            if failed.is_file():
                raise typer.Exit(json.loads(failed.read_text()).get("exit_code", 1)) from None
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    summary.print_run(console, project, recipe, stage, result, time.perf_counter() - t0)


@app.command("train")
def train(
    stage: Annotated[str, typer.Argument(help="data, stage1, stage2, stage3 or stage4.")],
    recipe: RecipeOpt = "tiny",
    override: OverrideOpt = None,
    executor: ExecutorOpt = "local",
    force: Annotated[bool, typer.Option("--force", help="Re-run this stage even if it is up to date.")] = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Bring STAGE of a recipe up to date: runs it and whatever upstream is out of date; a no-op when nothing changed."""
    _train(stage, recipe, override, executor, force, tracking_uri)


@app.command("run")
def run_all(recipe: RecipeOpt = "tiny", override: OverrideOpt = None, executor: ExecutorOpt = "local",
            tracking_uri: TrackingOpt = None) -> None:
    """Run the whole recipe: data and stages 1-4 (each skipped when up to date)."""
    _train("stage4", recipe, override, executor, False, tracking_uri)


@stage_app.command("run")
def stage_run(stage: str, recipe: RecipeOpt) -> None:
    """Run one stage program for a recipe already rendered to runs/<recipe>/params.json (used by dvc.yaml).

    The executor comes from $GEMCTL_EXECUTOR (set by `gemctl train --executor`): it is not part of the command
    DVC records, because where a stage runs does not change what it computes. Blocks until the job ends."""
    from functools import partial

    from gem_stages.files import atomic_write_text

    from .launch import kind_from_env, launch
    from .project import find_project
    from .recipe import from_params
    from .stage_runner import stage_job

    project = find_project()
    kind = kind_from_env()
    resources = from_params(project.params_file(recipe)).resources
    error_file = project.recipe_dir(recipe) / f"{stage}.error.json"

    def show(update) -> None:
        if update.state:
            console.print(f"[dim]job {update.job_id}: {update.state}[/dim]", highlight=False)
        elif update.line is not None and update.task == 0 and not update.line.startswith("submitit "):
            print(update.line, file=sys.stderr if update.stream == "stderr" else sys.stdout, flush=True)

    result = launch(partial(stage_job, str(project.root), recipe, stage), kind=kind, resources=resources,
                    job_dir=project.jobs_dir / recipe / stage, name=f"{stage}@{recipe}",
                    on_update=show if kind != "debug" else None, project=project.root,
                    tags={"stage": stage, "point": recipe})
    value = result.value if isinstance(result.value, dict) else {}
    if value.get("status") == "input_error":
        atomic_write_text(error_file, json.dumps({"message": value["message"], "exit_code": 2}))
        err.print(f"[red]error:[/red] {stage}@{recipe}: {value['message']}", highlight=False)
        raise typer.Exit(2)
    if not result.ok:
        code = result.exit_code or 1
        atomic_write_text(error_file, json.dumps({"message": f"job {result.job_id} {result.state}",
                                                  "exit_code": code}))
        tail = result.log_tail(20) or (result.error or "")
        err.print(f"[red]error:[/red] {stage}@{recipe}: job {result.job_id} ended {result.state} "
                  f"(exit {code}); last lines of its log:\n{tail}\nfull log: {result.stderr}", highlight=False)
        raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except InputError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
