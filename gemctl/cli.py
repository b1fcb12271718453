"""The gemctl command line. Heavy libraries (torch, dvc, mlflow, submitit) are imported inside commands so that
`gemctl --help` answers instantly."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

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
OverrideOpt = Annotated[list[str] | None, typer.Option(
    "--override", "-o", help="Dotted override, e.g. -o stages.stage3.lr=3e-5 (repeatable).")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", "-e", help="Where stages run: local (default), slurm, or debug (in-process).")]
TrackingOpt = Annotated[str | None, typer.Option(
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
    from rich.markup import escape

    _, recipe = _resolve(name, override)
    console.print(f"[green]ok[/green] {escape(recipe.name)} (hash {recipe.content_hash})")


@recipe_app.command("schema")
def recipe_schema(output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the schema to FILE (e.g. recipes/recipe.schema.json) instead of stdout.")] = None
                  ) -> None:
    """Print the JSON Schema of recipe files, for editors to validate and complete recipes/*.yaml."""
    from gem_stages.files import atomic_write_text

    from .recipe import schema

    text = json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        print(text, end="")
    else:
        atomic_write_text(output, text)


# --- training ------------------------------------------------------------------------------------------------------
def _train(stage: str, recipe_name: str, overrides: list[str] | None, executor: str, force: bool,
           tracking_uri: str | None, dry_run: bool = False) -> None:
    from . import pipeline, summary

    if executor not in EXECUTORS:
        raise InputError(f"unknown executor '{executor}': choose one of {', '.join(EXECUTORS)}")
    pipeline.upstream(stage)  # validates the stage name before anything is written
    project, recipe = _resolve(recipe_name, overrides)
    from gem_stages.data.config import check_config

    check_config(recipe.data)
    if dry_run:
        _print_dry_run(project, recipe, stage, executor)
        return
    if executor == "slurm":  # refuse resources the cluster cannot satisfy before DVC runs anything
        from .launch import cluster

        cluster.check(recipe.resources)
    if tracking_uri:
        os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
    os.environ["GEMCTL_EXECUTOR"] = executor
    pipeline.render(project, recipe)
    t0 = time.perf_counter()
    result = _reproduce_or_exit(project, recipe.name, stage, force)
    summary.print_run(console, project, recipe, stage, result, time.perf_counter() - t0)


def _reproduce_or_exit(project, recipe: str, stage: str, force: bool = False):
    """pipeline.reproduce; when a stage fails, exit with its code (it printed its one-line reason itself)."""
    from . import pipeline

    for s in pipeline.upstream(stage):
        (project.recipe_dir(recipe) / f"{s}.error.json").unlink(missing_ok=True)
    try:
        return pipeline.reproduce(project, recipe, stage, force=force)
    except pipeline.StageFailed as e:
        for s in pipeline.upstream(stage):
            failed = project.recipe_dir(recipe) / f"{s}.error.json"
            if failed.is_file():
                raise typer.Exit(json.loads(failed.read_text()).get("exit_code", 1)) from None
        # the message is text, not markup: a user's key such as '[/red]' must print as it is
        err.print(Text.assemble(("error:", "red"), f" {e}"), highlight=False)
        raise typer.Exit(1) from None


def _print_dry_run(project, recipe, stage: str, executor: str) -> None:
    """What would be submitted for `stage`, without touching the pipeline or the cluster."""
    from .launch import dry_run

    r = recipe.resources
    console.print(f"[bold]{stage}@{recipe.name}[/bold] (hash {recipe.content_hash}) on executor {executor}: "
                  f"{r.nodes} node(s) x {r.ntasks_per_node} task(s), {r.gpus_per_node} GPU(s)/node, "
                  f"{r.cpus_per_task} CPU(s)/task, mem {r.mem_gb or 'default'} GB, {r.time_min} min, "
                  f"partition {r.partition or 'default'}, max {r.max_requeues} requeue(s)", highlight=False)
    if executor == "slurm":
        print(dry_run(resources=r, job_dir=project.jobs_dir / recipe.name / stage, name=f"{stage}@{recipe.name}"))


@app.command("train")
def train(
    stage: Annotated[str, typer.Argument(help="data, stage1, stage2, stage3 or stage4.")],
    recipe: RecipeOpt = "tiny",
    override: OverrideOpt = None,
    executor: ExecutorOpt = "local",
    force: Annotated[bool, typer.Option("--force", help="Re-run this stage even if it is up to date.")] = False,
    tracking_uri: TrackingOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resources (and sbatch script) only.")] = False,
) -> None:
    """Bring STAGE of a recipe up to date: runs it and whatever upstream is out of date; a no-op when nothing changed."""
    _train(stage, recipe, override, executor, force, tracking_uri, dry_run)


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
    from .stage_runner import is_input_error, stage_job

    project = find_project()
    kind = kind_from_env()
    resources = from_params(project.params_file(recipe)).resources
    if stage == "data":  # data preparation is one process: don't hold (or multiply over) the training allocation
        from dataclasses import replace

        resources = replace(resources, nodes=1, gpus_per_node=0, tasks_per_node=None)
    error_file = project.recipe_dir(recipe) / f"{stage}.error.json"
    from .tracking import pin_code_version

    pin_code_version(project.root)

    def show(update) -> None:
        if update.state:
            console.print(f"[dim]job {update.job_id}: {update.state}[/dim]", highlight=False)
        elif update.line is not None and update.task == 0 and not update.line.startswith("submitit "):
            print(update.line, file=sys.stderr if update.stream == "stderr" else sys.stdout, flush=True)

    try:
        result = launch(partial(stage_job, str(project.root), recipe, stage), kind=kind, resources=resources,
                        job_dir=project.jobs_dir / recipe / stage, name=f"{stage}@{recipe}",
                        on_update=show if kind != "debug" else None, project=project.root,
                        tags={"stage": stage, "point": recipe, "run": f"{stage}@{recipe}"})
    except InputError as e:  # refused at submission (resources, SLURM unreachable)
        atomic_write_text(error_file, json.dumps({"message": str(e), "exit_code": 2}))
        err.print(f"[red]error:[/red] {stage}@{recipe}: {e}", highlight=False)
        raise typer.Exit(2) from None
    if is_input_error(result.value):
        message = result.value["message"]
        atomic_write_text(error_file, json.dumps({"message": message, "exit_code": 2}))
        err.print(f"[red]error:[/red] {stage}@{recipe}: {message}", highlight=False)
        raise typer.Exit(2)
    if not result.ok:
        code = result.exit_code or 1
        atomic_write_text(error_file, json.dumps({"message": f"job {result.job_id} {result.state}",
                                                  "exit_code": code}))
        tail = result.log_tail(20) or (result.error or "")
        err.print(f"[red]error:[/red] {stage}@{recipe}: job {result.job_id} ended {result.state} "
                  f"(exit {code}); last lines of its log:\n{tail}\nfull log: {result.stderr}", highlight=False)
        raise typer.Exit(code)


# --- sweeps --------------------------------------------------------------------------------------------------------
@app.command("sweep")
def sweep(
    stage: Annotated[str, typer.Argument(help="The stage to sweep: stage1..stage4.")],
    recipe: RecipeOpt = "tiny",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Grid axis: key.path=v1,v2,... (repeatable; the grid is their product).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Repeat every point with this many seeds.")] = 1,
    file: Annotated[str | None, typer.Option("--file", "-f", help="A sweep YAML (e.g. recipes/sweeps/x.yaml).")] = None,
    override: OverrideOpt = None,
    executor: ExecutorOpt = "local",
    parallel: Annotated[int | None, typer.Option(
        "--parallel", help="Points running at once (default: resources.array_parallelism).")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Run a grid of settings of one stage as ONE job array; skip points already completed; print points x metrics."""
    from functools import partial

    from . import pipeline
    from . import sweep as sw
    from .launch import launch_array, wait_all
    from .project import find_project
    from .stage_runner import is_input_error

    project = find_project()
    grid: dict = {}
    base_overrides = list(override or [])
    if file:
        spec = sw.load_file(project.root / file if not os.path.isabs(file) else Path(file))
        for key, given, default in (("stage", stage, None), ("recipe", recipe, "tiny"), ("seeds", seeds, 1)):
            if key in spec and given not in (spec[key], default):
                raise InputError(f"--{key} {given} conflicts with {key}: {spec[key]} in {file}: give it in one place")
        stage = spec.get("stage", stage)
        recipe = spec.get("recipe", recipe)
        grid.update(spec.get("grid") or {})
        seeds = spec.get("seeds", seeds)
        base_overrides = list(spec.get("overrides") or []) + base_overrides
    for text in param or []:
        key, values = sw.parse_param(text)
        grid[key] = values
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor '{executor}': choose one of {', '.join(EXECUTORS)}")
    s = sw.expand(project, stage, recipe, grid, seeds, base_overrides)
    base = s.base
    resources = base.resources
    if parallel is not None:
        if parallel < 1:
            raise InputError(f"--parallel {parallel}: give 1 or more")
        resources = type(resources)(**{**resources.__dict__, "array_parallelism": parallel})
    if executor == "slurm":
        from .launch import cluster

        cluster.check(resources)  # refuse before building anything
    if tracking_uri:
        os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
    # the shared upstream is brought up to date first, where the sweep runs, then pinned by its DVC digests
    os.environ["GEMCTL_EXECUTOR"] = executor
    pipeline.render(project, base)
    _reproduce_or_exit(project, base.name, sw.previous_stage(stage))
    pinned = sw.pin_inputs(project, base.name, stage)
    todo = [p for p in s.points if not sw.is_done(project, s, p, pinned)]
    failed: list = []
    console.print(f"sweep {s.id}: {stage}@{recipe}, {len(s.points)} point(s), {len(s.points) - len(todo)} already "
                  f"complete, {len(todo)} to run on {executor}", highlight=False)
    if todo:
        parent = sw.parent_run(project, s, grid, seeds)
        sw.write_points(project, s)
        fns = [partial(sw.run_point, str(project.root), recipe, stage, str(sw.point_dir(project, s, p)), pinned,
                       parent, s.id) for p in todo]
        tags = [{"stage": stage, "point": f"{recipe}/{p.id}", "sweep": s.id, "run": f"{stage}@{recipe}/{p.id}"}
                for p in todo]

        def show(update) -> None:
            if update.state:
                console.print(f"[dim]{update.job_id}: {update.state}[/dim]", highlight=False)

        job_dir, name = project.jobs_dir / recipe / f"sweep-{s.id}", f"{s.id}-{stage}"
        from .launch import snapshot

        # one snapshot for every point, taken now: later waves must not pick up code edited meanwhile
        from .tracking import pin_code_version

        pin_code_version(project.root)
        code_dir = snapshot.take(job_dir)
        code = {pkg: code_dir / pkg for pkg in snapshot.project_packages()}
        if executor == "slurm":  # ONE array; SLURM holds all but array_parallelism of its elements
            handles = launch_array(fns, kind=executor, resources=resources, job_dir=job_dir, name=name,
                                   project=project.root, tags=tags, code=code)
            console.print(f"submitted {len(handles)} point(s) as one array: {handles[0].job_id.split('_')[0]}",
                          highlight=False)
            results = wait_all(handles, on_update=show)
        else:  # submitit's local executor starts a whole array at once: bound it here, in waves
            width = parallel or min(resources.array_parallelism, os.cpu_count() or 1)
            results = []
            for i in range(0, len(fns), width):
                handles = launch_array(fns[i:i + width], kind=executor, resources=resources, job_dir=job_dir,
                                       name=name, project=project.root, tags=tags[i:i + width], code=code)
                results += wait_all(handles, on_update=show)
        failed = [(p, r) for p, r in zip(todo, results) if not r.ok or is_input_error(r.value)]
        _finish_parent(parent, ok=not failed)
        for p, r in failed:
            why = r.value["message"] if isinstance(r.value, dict) and "message" in r.value else r.state
            err.print(f"[red]point {p.id} ({p.label()}) failed:[/red] {why}; log: {r.stderr}", highlight=False)
    _print_sweep_table(project, s)
    if failed:
        raise typer.Exit(2 if all(is_input_error(r.value) for _, r in failed) else 1)


def _finish_parent(run_id: str, ok: bool) -> None:
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, "FINISHED" if ok else "FAILED")


def _print_sweep_table(project, s) -> None:
    from rich.table import Table

    from . import sweep as sw

    table = Table(title=f"sweep {s.id}: {s.stage}@{s.recipe}", title_justify="left")
    keys = list(s.points[0].overrides) if s.points else []
    summaries = []
    for p in s.points:
        path = sw.point_dir(project, s, p) / "out" / "summary.json"
        summaries.append(json.loads(path.read_text()) if path.is_file() else {})
    parts = [k for k in ("loss", "lm", "depth", "action") if any(k in x.get("losses", {}) for x in summaries)]
    table.add_column("point", no_wrap=True)
    for k in keys:
        table.add_column(k.split(".")[-1], no_wrap=True)  # the last key part: lr, depth, seed
    for col in ("status", "steps", *parts):
        table.add_column(col, no_wrap=True)
    for p, summary in zip(s.points, summaries):
        losses = summary.get("losses", {})
        table.add_row(p.id, *[str(p.overrides[k]) for k in keys], summary.get("status", "not run"),
                      str(summary.get("step", "")), *[f"{losses[k]:.4f}" if k in losses else "" for k in parts])
    console.print(table)


# --- jobs ----------------------------------------------------------------------------------------------------------
@app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
           all_jobs: Annotated[bool, typer.Option("--all/--active", "-a",
                                                  help="All recorded jobs, or only unfinished ones.")] = True) -> None:
    """gemctl's jobs: id, stage, recipe/sweep point, state, elapsed, node."""
    from rich.table import Table

    from .launch.registry import list_jobs

    jobs = [j for j in list_jobs(_project().root) if all_jobs or not j.finished]
    if as_json:
        print(json.dumps([j.to_json() for j in jobs], indent=1))
        return
    table = Table(title="gemctl jobs", title_justify="left")
    for col in ("job", "stage", "recipe / point", "sweep", "state", "elapsed", "node"):
        table.add_column(col)
    colours = {"COMPLETED": "green", "RUNNING": "yellow", "PENDING": "cyan", "FAILED": "red", "CANCELLED": "dim"}
    for j in jobs:
        c = colours.get(j.state, "white")
        table.add_row(j.job_id, j.stage, j.point, j.sweep, f"[{c}]{j.state}[/{c}]", f"{j.elapsed_s:.0f}s", j.node)
    console.print(table)


@app.command("logs")
def logs(key: Annotated[str, typer.Argument(help="Job id, array id, run (e.g. stage3@tiny) or sweep id.")],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
         ) -> None:
    """Print the logs of the latest job matching KEY."""
    from .launch.registry import job_log

    for line in job_log(_project().root, key, follow=follow):
        print(line, flush=follow)


@app.command("cancel")
def cancel(key: Annotated[str, typer.Argument(help="Job id, array id, run (e.g. stage3@tiny) or sweep id.")]) -> None:
    """Cancel the unfinished jobs matching KEY (a whole sweep by its id)."""
    from .launch.registry import cancel as cancel_jobs

    ids = cancel_jobs(_project().root, key)
    console.print(f"cancelled {len(ids)} job(s): {' '.join(ids)}" if ids else f"no unfinished job matches {key}")


def main() -> None:
    try:
        app()
    except InputError as e:
        # the message is text, not markup: a user's key such as '[/red]' must print as it is
        err.print(Text.assemble(("error:", "red"), f" {e}"), highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
