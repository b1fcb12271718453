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
    from rich import box
    from rich.text import Text

    if not (result.ran or result.restored):
        console.print(Text.assemble((f"{stage}@{recipe.name} is up to date", "green"),
                                    f" ({seconds:.1f} s): nothing ran; --force re-runs it."), highlight=False)
    table = Table(title=Text(f"recipe {recipe.name} (hash {recipe.content_hash})"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("stage", "this call", "steps"):
        table.add_column(col, no_wrap=True)
    table.add_column("final losses", no_wrap=True)  # mean of the last micro-batches
    table.add_column("mlflow run", no_wrap=True)  # whole: it is what `mlflow runs describe` and the UI take
    stores: dict[str, list[str]] = {}
    for s in upstream(stage, recipe):
        summary = read_summary(project.stage_dir(recipe.name, s)) or {}
        state = (Text("ran", "yellow") if s in result.ran else Text("restored", "cyan") if s in result.restored
                 else Text("up to date", "dim"))
        table.add_row(s, state, str(summary.get("step", "")), _losses(summary), summary.get("mlflow_run_id", ""))
        if summary.get("mlflow_run_id"):
            # summaries written before stores were recorded: the run is wherever this call logs to
            stores.setdefault(summary.get("tracking_uri") or project.tracking_uri, []).append(s)
    console.print(table, highlight=False)
    console.print(f"checkpoints: runs/{recipe.name}/<stage>/model", highlight=False, markup=False)
    for uri, stages in stores.items():
        which = "mlflow runs" if len(stores) == 1 else f"mlflow runs of {', '.join(stages)}"
        console.print(f"{which} in {uri}", highlight=False, markup=False, soft_wrap=True)
    if result.restored:
        console.print(f"restored {', '.join(result.restored)} from DVC's run-cache: built before with the same "
                      "settings and inputs, nothing trained", highlight=False, markup=False)
    if result.ran:
        console.print(f"ran {', '.join(result.ran)} in {seconds:.1f} s", highlight=False, markup=False)
    if result.ran or result.restored:
        console.print("commit dvc.lock and runs/*/params.json to record this state in git", highlight=False)


def sweep_headers(stage: str, keys: list[str], taken: set[str]) -> list[str]:
    """Readable, unique column headers for swept keys: the key less `stages.<stage>.` (lr, loss.depth, seed); the
    whole key where that would read like another column (the loss parts: depth, lm, ...)."""
    short = [k.removeprefix(f"stages.{stage}.") for k in keys]
    return [k if s in taken or short.count(s) > 1 else s for k, s in zip(keys, short)]


def print_sweep(console: Console, project: Project, sweep) -> None:
    """One row per point of a sweep.Sweep: its grid values, status, steps and final losses. Values are never cut
    (ids are copied into `gemctl logs`): the table is compact, and headers wrap before a value would."""
    from rich import box
    from rich.text import Text

    from .sweep import point_dir

    table = Table(title=Text(f"sweep {sweep.id}: {sweep.stage}@{sweep.recipe}"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    keys = list(sweep.points[0].overrides) if sweep.points else []
    summaries = [read_summary(point_dir(project, sweep, p) / "out") or {} for p in sweep.points]
    parts = [k for k in ("loss", "lm", "depth", "action") if any(k in x.get("losses", {}) for x in summaries)]
    headers = ["point", *sweep_headers(sweep.stage, keys, {"point", "status", "steps", *parts}), "status", "steps",
               *parts]
    rows = []
    for p, summary in zip(sweep.points, summaries):
        losses = summary.get("losses", {})
        rows.append([p.id, *[str(p.overrides[k]) for k in keys], summary.get("status", "not run"),
                     str(summary.get("step", "")), *[f"{losses[k]:.4g}" if k in losses else "" for k in parts]])
    for i, name in enumerate(headers):
        width = max([len(r[i]) for r in rows] + [1])
        table.add_column(name, no_wrap=False, min_width=width, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table, highlight=False)


def print_eval(console: Console, results: dict, title: str, state: str, where, name: str | None = None) -> None:
    """An evaluation's scores: overall (by the benchmark's rule) and per category, with item counts. `name`: the
    benchmark as the user named it (default: results.json's)."""
    from rich import box
    from rich.text import Text

    counts = results.get("counts", {})
    console.print(Text.assemble((name or str(results.get("benchmark")), "bold"), f" on {title} ({state})"), highlight=False,
                  soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("category")
    table.add_column("items", justify="right", no_wrap=True)
    table.add_column(str(results.get("metric", "score")), justify="right", no_wrap=True)
    per = counts.get("per_category", {})
    for c, v in results.get("categories", {}).items():
        table.add_row(Text(c), str(per.get(c, "")), f"{v:.4f}")
    table.add_row(Text("overall", "bold"), str(counts.get("items", "")), Text(f"{results.get('overall', 0):.4f}",
                                                                              "bold"))
    console.print(table, highlight=False)
    console.print(f"unparsable answers: {counts.get('unparsable', 0)}, undecodable items: "
                  f"{counts.get('undecodable', 0)} (both scored 0)", highlight=False, markup=False)
    lineage = results.get("lineage") or {}
    run = lineage.get("mlflow_run_id")
    spooled = "; its mlflow run waits in the spool (gemctl sync)" if lineage.get("record") and not run else ""
    console.print(f"results: {where}/results.json, predictions.jsonl" + (f"; mlflow run {run}" if run else spooled),
                  highlight=False, markup=False, soft_wrap=True)


def print_evals(console: Console, recipe: Recipe, done: list[tuple[str, str, str, dict]]) -> None:
    """One row per evaluation of a recipe (gemctl eval all, gemctl run): what scored which checkpoint, how well."""
    from rich import box
    from rich.text import Text

    table = Table(title=Text(f"evaluations of recipe {recipe.name}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("benchmark", "checkpoint", "this call", "metric", "overall", "items"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("overall", "items") else "left")
    for name, stage, state, results in done:  # name: as the recipe lists it (results.json has the class's name)
        table.add_row(Text(name), stage, Text(state, "yellow" if state == "ran" else "dim"),
                      str(results.get("metric", "")), f"{results.get('overall', 0):.4f}",
                      str(results.get("counts", {}).get("items", "")))
    console.print(table, highlight=False)
