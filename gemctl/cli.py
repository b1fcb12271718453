"""The gemctl command line. Heavy libraries (torch, dvc, mlflow, submitit) are imported inside commands so that
`gemctl --help` answers instantly."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from gem_stages.errors import InputError
from gem_stages.files import never_world_writable

from .cli_ablate import ablate
from .cli_data import data_app
from .cli_import import import_app
from .cli_lineage import lineage, runs
from .cli_mlflow import app as mlflow_app
from .cli_sync import sync
from .depth_stage import STAGE as LABEL_DEPTH
from .depth_stage import labelled_sets, stage_label_depth
from .launch import Executor
from .outcome import CANCELLED_EXIT, StageFailed

app = typer.Typer(help="Train GEM-style embodied VLMs reproducibly: recipes -> DVC stages -> checkpoints -> MLflow.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
recipe_app = typer.Typer(help="Inspect and validate recipes.", no_args_is_help=True)
stage_app = typer.Typer(help="Run one stage program directly (this is the command dvc.yaml runs).",
                        no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(stage_app, name="stage")
stage_app.command("label-depth")(stage_label_depth)
app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")
app.command("lineage")(lineage)
app.command("runs")(runs)
app.add_typer(mlflow_app, name="mlflow")
app.command("ablate")(ablate)
app.command("sync")(sync)

console = Console()
# soft_wrap: an error stays one line however narrow the terminal
err = Console(stderr=True, soft_wrap=True)

RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (a file in recipes/).")]
OverrideOpt = Annotated[list[str] | None, typer.Option(
    "--override", "-o", help="Dotted override, e.g. -o stages.stage3.lr=3e-5 (repeatable).")]


def _executor(value: Executor | str) -> Executor:
    if isinstance(value, Executor):
        return value
    try:
        return Executor(value)
    except ValueError:
        # one line like any bad input, not typer's usage panel (a BadParameter raised here would make one)
        names = ", ".join(e.value for e in Executor)
        err.print(Text.assemble(("error:", "red"), f" unknown executor '{value}': choose one of {names}"),
                  highlight=False)
        raise typer.Exit(2) from None


ExecutorOpt = Annotated[Executor, typer.Option(
    "--executor", "-e", parser=_executor, metavar="[local|slurm|debug]",
    help="Where stages run: local (default), slurm, or debug (in-process).")]
TrackingOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="GEMCTL_TRACKING_URI", help="MLflow store (default: the project's own sqlite store).")]


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
    """List the recipes in recipes/; a recipe that does not resolve is marked broken with its reason (exit 2)."""
    from .recipe import available, resolve

    project = _project()
    broken = []
    for name in available(project.recipes_dir):
        # names, descriptions and reasons are the user's text, not rich markup ('[/x]' must print as it is)
        try:
            desc = resolve(project.recipes_dir, name).description
        except InputError as e:
            broken.append(name)
            console.print(Text.assemble((name, "bold"), "  ", ("broken:", "red"), f" {e}"), highlight=False,
                          soft_wrap=True)  # one recipe per line, however narrow the terminal: greppable
        else:
            console.print(Text.assemble((name, "bold"), f"  {desc}"), highlight=False, soft_wrap=True)
    if broken:  # the others are listed; the exit code tells a script that some recipe needs fixing
        raise InputError(f"{len(broken)} broken recipe(s): {', '.join(broken)} (reasons above): fix them, then "
                         "`gemctl recipe validate NAME`")


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
def recipe_validate(name: str, override: OverrideOpt = None, tracking_uri: TrackingOpt = None,
                    schema_only: Annotated[bool, typer.Option(
                        "--schema-only", help="Check the schema only, not this machine and cluster.")] = False,
                    ) -> None:
    """Check a recipe (and overrides) against the schema (exit 2 with the first problem), then against this machine
    (data files, weights, tracking store) and, when a SLURM controller answers here, its cluster (partition,
    nodes, CPUs, GPUs, memory, time limit): exit 2 when one of them fails (train/run/sweep would refuse it)."""
    from . import preflight

    project, recipe = _resolve(name, override)
    console.print(Text.assemble(("ok", "green"), f" schema: {recipe.name} (hash {recipe.content_hash})"),
                  highlight=False)
    if schema_only:
        return
    machine, cluster = preflight.report(project, recipe, tracking_uri)
    console.print("checks against this machine (files, weights, tracking store):", highlight=False)
    _print_checks(machine)
    if cluster is None:
        console.print("checks against the SLURM cluster: skipped, no SLURM controller answers here", highlight=False)
    else:
        console.print("checks against the SLURM cluster that answers here (partition limits and nodes):",
                      highlight=False)
        _print_checks(cluster)
    failed = [r.name for r in machine + (cluster or []) if not r.ok]
    if failed:
        raise InputError(f"recipe '{recipe.name}' fits the schema but fails {len(failed)} check(s) against this "
                         f"machine or cluster ({', '.join(failed)}): train, run and sweep here would refuse it")


def _print_checks(results) -> None:
    for r in results:
        mark = ("ok", "green") if r.ok else ("FAIL", "red")
        console.print(Text.assemble("  ", mark, f" {r.name}: {r.text}"), highlight=False, soft_wrap=True)


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
def _train(stage: str, recipe_name: str, overrides: list[str] | None, executor: Executor, force: bool,
           tracking_uri: str | None, dry_run: bool = False) -> None:
    from . import pipeline, summary

    pipeline.upstream(stage)  # validates the stage name before anything is written
    project, recipe = _resolve(recipe_name, overrides)
    if dry_run:
        _print_dry_run(project, recipe, stage, executor, tracking_uri)
        return
    pipeline.prepare_launch(project, recipe, executor.value, tracking_uri, pipeline.upstream(stage, recipe))
    t0 = time.perf_counter()
    result = pipeline.reproduce(project, recipe.name, stage, force=force)
    summary.print_run(console, project, recipe, stage, result, time.perf_counter() - t0)


def _print_dry_run(project, recipe, stage: str, executor: Executor, tracking_uri: str | None) -> None:
    """What would be submitted for `stage`, after the checks a real run makes first (this machine's files and
    weights, the tracking store, the cluster's limits on SLURM); the pipeline is not touched, nothing is submitted."""
    from . import pipeline, preflight
    from .launch import dry_run

    preflight.check(project, recipe, executor.value, tracking_uri, pipeline.upstream(stage, recipe))
    from .stage_runner import job_resources

    # the label_depth jobs run first (an array of data.depth_shards per set), when the recipe labels any set
    jobs = [(LABEL_DEPTH, recipe.data.depth_shards)] if labelled_sets(recipe.data) else []
    for name, array in [*jobs, (stage, None)]:
        r = job_resources(recipe, name)
        what = f"{len(labelled_sets(recipe.data))} set(s) x {array} job(s) (data.depth_shards), each " if array else ""
        console.print(f"[bold]{name}@{recipe.name}[/bold] (hash {recipe.content_hash}) on executor "
                      f"{executor.value}: {what}{r.nodes} node(s) x {r.ntasks_per_node} task(s), {r.gpus_per_node} "
                      f"GPU(s)/node, {r.cpus_per_task} CPU(s)/task, mem {r.mem_gb or 'default'} GB, {r.time_min} min, "
                      f"partition {r.partition or 'default'}, max {r.max_requeues} requeue(s)", highlight=False)
        if executor == Executor.SLURM:
            print(dry_run(resources=r, job_dir=project.jobs_dir / recipe.name / name, name=f"{name}@{recipe.name}",
                          array_size=array))


@app.command("train")
def train(
    stage: Annotated[str, typer.Argument(help="data, stage1, stage2, stage3 or stage4.")],
    recipe: RecipeOpt = "tiny",
    override: OverrideOpt = None,
    executor: ExecutorOpt = Executor.LOCAL,
    force: Annotated[bool, typer.Option("--force", help="Re-run this stage even if it is up to date.")] = False,
    tracking_uri: TrackingOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resources (and sbatch script) only.")] = False,
) -> None:
    """Bring STAGE of a recipe up to date: runs it and whatever upstream is out of date; a no-op when nothing changed."""
    _train(stage, recipe, override, executor, force, tracking_uri, dry_run)


@app.command("run")
def run_all(recipe: RecipeOpt = "tiny", override: OverrideOpt = None, executor: ExecutorOpt = Executor.LOCAL,
            tracking_uri: TrackingOpt = None) -> None:
    """Run the whole recipe: data and stages 1-4 (each skipped when up to date), then its eval list."""
    _train("stage4", recipe, override, executor, False, tracking_uri)
    project, r = _resolve(recipe, override)
    if r.eval:
        _evaluate(project, r, [e.benchmark for e in r.eval], {}, executor, tracking_uri, prepared=True)


@stage_app.command("run")
def stage_run(stage: str, recipe: RecipeOpt, override: OverrideOpt = None) -> None:
    """Run one stage program for a recipe, without DVC (this is also the command dvc.yaml runs).

    Run by hand, it renders the recipe it is given (recipes/<recipe>.yaml and -o overrides) to
    runs/<recipe>/params.json first; run by DVC, it reads what `gemctl train` rendered there (DVC hashed that file).
    The executor comes from $GEMCTL_EXECUTOR (set by `gemctl train --executor`): it is not part of the command
    DVC records, because where a stage runs does not change what it computes. Blocks until the job ends."""
    import os
    from functools import partial

    from .pipeline import note_executed, upstream
    from .stage_runner import launch_stage

    upstream(stage)  # the stage name is checked before anything is written
    project = _project()
    if os.environ.get("DVC_STAGE") == f"{stage}@{recipe}":
        if override:
            raise InputError(f"-o is for `gemctl stage run` by hand; under DVC, {stage}@{recipe} runs what "
                             f"`gemctl train` rendered to runs/{recipe}/params.json")
        note_executed(stage)
    else:
        _render_by_hand(project, recipe, override or [])
    code, message = launch_stage(project, recipe, stage, on_update=partial(_show_job, stage))
    under_dvc = os.environ.get("DVC_STAGE") == f"{stage}@{recipe}"
    if message and not (code == CANCELLED_EXIT and under_dvc):  # a cancel under DVC: `gemctl train` says it
        # may hold the job's log lines: printed as they are, not read as rich markup or emoji codes
        label = () if code == CANCELLED_EXIT else (("error:", "red"), " ")  # a cancel is what the user asked for
        err.print(Text.assemble(*label, f"{stage}@{recipe}: {message}"), highlight=False, emoji=False)
    if code:
        raise typer.Exit(code)


def _render_by_hand(project, name: str, overrides: list[str]) -> None:
    """The recipe `gemctl stage run` was asked for, rendered where the stage reads it; one line when that replaces
    settings rendered before (e.g. by `gemctl train -o ...`)."""
    from .recipe import from_params, resolve, write_params

    recipe = resolve(project.recipes_dir, name, overrides)
    path = project.params_file(name)
    try:
        before = from_params(path).content_hash if path.is_file() else None
    except InputError:  # written by another version of gemctl: replaced below
        before = "unreadable"
    if before not in (None, recipe.content_hash):
        err.print(f"runs/{name}/params.json held recipe hash {before}: rendered {name} as asked "
                  f"(hash {recipe.content_hash})", highlight=False, markup=False)
    write_params(path, recipe)


def _show_job(stage: str, update) -> None:
    """A stage job's state changes, and its rank 0 log lines as they come."""
    if update.state:
        console.print(f"[dim]job {update.job_id}: {update.state}[/dim]", highlight=False)
    elif update.line is not None and update.task == 0 and not update.line.startswith("submitit "):
        print(update.line, file=sys.stderr if update.stream == "stderr" else sys.stdout, flush=True)


# --- evaluation ----------------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    benchmark: Annotated[str, typer.Argument(help="A benchmark name (built in, or benchmarks/NAME.yaml), or `all`: "
                                                  "the recipe's eval list.")],
    recipe: RecipeOpt = "tiny",
    override: OverrideOpt = None,
    stage: Annotated[str | None, typer.Option("--stage", help="The stage whose checkpoint is scored (default: "
                                                              "stage3; stage4 for closed loop).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score only the first N items.")] = None,
    shards: Annotated[int | None, typer.Option("--shards", min=1, help="Split the items over K jobs.")] = None,
    path: Annotated[str | None, typer.Option("--path", help="The benchmark's data folder or file.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Items per generation batch.")] = None,
    executor: ExecutorOpt = Executor.LOCAL,
    tracking_uri: TrackingOpt = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Score this checkpoint folder instead, outside the "
                                                             "pipeline (no DVC).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="With --ckpt: where results go (default: "
                                                           "CKPT/eval/BENCH; .gemctl/eval/... for a checkpoint "
                                                           "under runs/).")] = None,
) -> None:
    """Score a stage's checkpoint on a benchmark as a DVC stage (re-scored only when the checkpoint, the data or the
    settings change): a table of overall and per-category scores, runs/<recipe>/eval/<bench>/results.json and
    predictions.jsonl, and an MLflow evaluation run on the checkpoint's logged model."""
    from . import summary

    given = {"stage": stage, "limit": limit, "shards": shards, "path": path, "batch_size": batch_size}
    if ckpt is not None:
        from .eval import score_checkpoint
        from .project import find_project

        if benchmark == "all":
            raise InputError("--ckpt scores one benchmark: name it instead of `all`")
        if tracking_uri:
            import os

            os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
        try:
            project = find_project()
        except InputError:  # outside a gemctl project: results on disk, no MLflow store to record in
            project = None
        results, where = score_checkpoint(project, ckpt, benchmark, out, **given)
        summary.print_eval(console, results, str(ckpt), "ran", where, benchmark)
        return
    if out is not None:
        raise InputError("--out is for --ckpt: pipeline results go to runs/<recipe>/eval/<bench>")
    project, r = _resolve(recipe, override)
    names = [e.benchmark for e in r.eval] if benchmark == "all" else [benchmark]
    if not names:
        raise InputError(f"recipe '{r.name}' has no eval list: add `eval: [{{benchmark: NAME, path: DIR}}]` to it, "
                         "or name a benchmark")
    _evaluate(project, r, names, given, executor, tracking_uri)


def _evaluate(project, recipe, names: list[str], given: dict, executor: Executor, tracking_uri: str | None,
              prepared: bool = False) -> None:
    """Plan every benchmark first (a missing path refuses them all before anything runs), then score each."""
    from . import pipeline, summary
    from .eval import out_dir, plan, write_plan

    plans = [plan(project, recipe, name, **given) for name in names]
    if not prepared:
        stages = sorted({s for p in plans for s in pipeline.upstream(p["stage"], recipe)},
                        key=pipeline.PIPELINE.index)
        pipeline.prepare_launch(project, recipe, executor.value, tracking_uri, stages)
    for p in plans:
        write_plan(project, recipe.name, p)
        pipeline.list_eval(project, recipe.name, p["benchmark"], p["stage"])
    import json

    done = []
    for p in plans:
        ran, _ = pipeline.reproduce_eval(project, recipe.name, p["benchmark"], p["stage"])
        where = out_dir(project, recipe.name, p["benchmark"])
        results = json.loads((where / "results.json").read_text())
        state = "ran" if ran else "up to date"
        summary.print_eval(console, results, f"{p['stage']}@{recipe.name}", state, where, p["benchmark"])
        done.append((p["benchmark"], p["stage"], state, results))
    if len(done) > 1:
        summary.print_evals(console, recipe, done)


@stage_app.command("eval")
def stage_eval(benchmark: str, recipe: RecipeOpt) -> None:
    """Score one benchmark on a recipe's checkpoint (the command dvc.yaml's eval stages run; `gemctl eval` plans it
    first: runs/<recipe>/eval/<bench>.json). The executor comes from $GEMCTL_EXECUTOR. Blocks until it ends."""
    from functools import partial

    from .eval import in_dvc_stage, launch_eval, settings_file
    from .pipeline import note_executed

    project = _project()
    if not settings_file(project, recipe, benchmark).is_file():
        raise InputError(f"eval of {benchmark} on {recipe} is not planned: run `gemctl eval {benchmark} --recipe "
                         f"{recipe}`")
    if in_dvc_stage(recipe, benchmark):
        note_executed(f"eval-{benchmark}")
    code, message = launch_eval(project, recipe, benchmark, on_update=partial(_show_job, "eval"))
    if message and not (code == CANCELLED_EXIT and in_dvc_stage(recipe, benchmark)):  # then `gemctl eval` says it
        err.print(Text.assemble(("error:", "red"), f" eval-{benchmark}@{recipe}: {message}"), highlight=False,
                  emoji=False)
    if code:
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
    executor: ExecutorOpt = Executor.LOCAL,
    parallel: Annotated[int | None, typer.Option(
        "--parallel", help="Points running at once (default: resources.array_parallelism).")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Run a grid of settings of one stage as ONE job array; skip points already completed; print points x metrics."""
    from . import summary
    from . import sweep as sw

    project = _project()
    stage, recipe, grid, seeds, overrides = sw.from_cli(project, stage, recipe, param or [], seeds, file,
                                                        override or [])
    s = sw.expand(project, stage, recipe, grid, seeds, overrides)
    failed = sw.run(project, s, grid, seeds, executor=executor.value, parallel=parallel, tracking_uri=tracking_uri,
                    console=console, err=err)
    summary.print_sweep(console, project, s)
    if failed:
        raise typer.Exit(2 if all(r.ok and r.value.status == "input_error" for _, r in failed) else 1)


# --- jobs ----------------------------------------------------------------------------------------------------------
@app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
           all_jobs: Annotated[bool, typer.Option("--all/--active", "-a",
                                                  help="All recorded jobs, or only unfinished ones.")] = True) -> None:
    """gemctl's jobs: id, stage, recipe/sweep point, state, elapsed, node."""
    from rich import box
    from rich.table import Table

    from .launch.registry import list_jobs

    jobs = [j for j in list_jobs(_project().root) if all_jobs or not j.finished]
    if as_json:
        print(json.dumps([j.to_json() for j in jobs], indent=1))
        return
    table = Table(title="gemctl jobs", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    # ids are copied into `logs` and `cancel`: never cut; the other columns fold onto more lines instead
    widest = {"job": max([len(j.job_id) for j in jobs] + [3]), "sweep": max([len(j.sweep) for j in jobs] + [5])}
    for col in ("job", "stage", "point", "sweep", "state", "elapsed", "node"):  # point: recipe or recipe/point
        if col in widest:
            table.add_column(col, no_wrap=True, min_width=widest[col])
        else:
            table.add_column(col, overflow="fold", no_wrap=col in ("state", "elapsed"))
    colours = {"COMPLETED": "green", "RUNNING": "yellow", "PENDING": "cyan", "FAILED": "red", "CANCELLED": "dim"}
    for j in jobs:
        # user text (recipe names, tags) as Text: square brackets in it are not rich markup
        table.add_row(j.job_id, Text(j.stage), Text(j.point), j.sweep, Text(j.state, colours.get(j.state, "")),
                      _duration(j.elapsed_s), Text(j.node))
    console.print(table, highlight=False)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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


@app.command("doctor")
def doctor(fix: Annotated[bool, typer.Option("--fix", help="Apply the safe fixes, listing each.")] = False) -> None:
    """Check that dvc.lock, the stage outputs, the MLflow runs, the job registry and temporary files agree."""
    from . import doctor as checks
    from . import project_lock

    project = _project()
    if fix:
        project_lock.hold(project)  # no command may write while doctor repairs
    findings = checks.diagnose(project)
    if fix:
        for f in findings:
            if f.fix is not None:
                console.print(f"fixed: {f.fix()}", highlight=False, soft_wrap=True)
        findings = checks.diagnose(project)
    if not findings:
        console.print("ok: dvc.lock, outputs, MLflow runs, job registry and temporary files agree")
        return
    # one line each, like a linter's: greppable, never wrapped into a table's cells
    for f in findings:
        how = " [--fix]" if f.fix else ""
        console.print(Text.assemble((f"{f.check:<9} ", "bold"), f"{f.where}: {f.problem}", (how, "cyan")),
                      highlight=False, soft_wrap=True)
    fixable = sum(f.fix is not None for f in findings)
    console.print(f"{len(findings)} disagreement(s); {fixable} fixable with `gemctl doctor --fix`", highlight=False)
    raise typer.Exit(1)


def main() -> None:
    never_world_writable()
    try:
        app()
    except InputError as e:
        # the message is text, not markup: a user's key such as '[/red]' must print as it is
        err.print(Text.assemble(("error:", "red"), f" {e}"), highlight=False)
        sys.exit(2)
    except StageFailed as e:  # a stage that failed printed its reason (one line, or its job's log) itself
        if e.cancelled:  # what the user asked for, said in this process (a stage's own process may be gone)
            err.print(Text(str(e)), highlight=False, emoji=False)
        elif not e.reported:
            err.print(Text.assemble(("error:", "red"), f" {e}"), highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
