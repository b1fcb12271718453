"""`gemctl lineage` and `gemctl runs`: what made a checkpoint and what came of it, and a table of runs, read back
from the MLflow store (and dvc.lock). mlflow is imported inside the commands, and only for stores other than the
project's sqlite one (read from its tables)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from gem_stages.errors import InputError

console = Console()

TrackingOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="GEMCTL_TRACKING_URI", help="MLflow store (default: the project's own sqlite store).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table or tree.")]


def _store(tracking_uri: str | None):
    from .lineage import Store
    from .project import find_project

    if tracking_uri:
        os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
    return Store(find_project())


def lineage(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="A checkpoint folder, STAGE@RECIPE, a run id or a logged model id "
                                                "(a unique prefix is enough); or `diff A B`.")],
    other: Annotated[list[str] | None, typer.Argument(metavar="A B", show_default=False,
                                                      help="With `diff`: the two targets to compare.")] = None,
    down: Annotated[bool, typer.Option("--down", help="What came from TARGET: child stages, sweep points, "
                                                      "evaluation scores.")] = False,
    as_json: JsonOpt = False,
    graph: Annotated[Path | None, typer.Option("--graph", help="Also draw the tree to FILE (.png or .svg).")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Where a checkpoint came from (data, code, recipe, parent checkpoints, sweep) or, with --down, what came of it
    (child stages, sweep points, scores). `gemctl lineage diff A B`: what differs between two ancestries."""
    from . import lineage as lin

    if target == "diff":
        if len(other or []) != 2:
            raise InputError("`gemctl lineage diff A B` compares two targets: give exactly two (run ids, "
                             "STAGE@RECIPE or checkpoint folders)")
        if down or graph:
            raise InputError("--down and --graph are for one target, not `lineage diff`")
        _diff(lin, tracking_uri, *other, as_json)
        return
    if other:
        raise InputError(f"lineage takes one target, got {len(other) + 1} ({target} {' '.join(other)}): to compare "
                         "two, run `gemctl lineage diff A B`")
    if graph is not None:
        graph = graph.resolve()
        if graph.suffix.lower() not in (".png", ".svg"):
            raise InputError(f"--graph {graph.name}: name a .png or .svg file")
    store = _store(tracking_uri)
    run = lin.resolve_target(store, target)
    tree = lin.downstream(store, run) if down else lin.upstream(store, run)
    if graph is not None:
        from .lineage_graph import write

        write(tree, down, graph)
    if as_json:
        print(json.dumps(tree, indent=1, default=str))
        return
    console.print(_tree(tree, store.project.root, down), highlight=False)
    if graph is not None:
        console.print(f"graph: {graph}", highlight=False)


def _diff(lin, tracking_uri: str | None, a: str, b: str, as_json: bool) -> None:
    store = _store(tracking_uri)
    ta = lin.with_scores(store, lin.upstream(store, lin.resolve_target(store, a)))
    tb = lin.with_scores(store, lin.upstream(store, lin.resolve_target(store, b)))
    d = lin.diff(ta, tb)
    if as_json:
        print(json.dumps(d, indent=1, default=str))
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("")
    table.add_column(f"A {d['a']['name']} {d['a']['run_id'][:8]}", overflow="fold")
    table.add_column(f"B {d['b']['name']} {d['b']['run_id'][:8]}", overflow="fold")
    sections = (("recipe", "recipe key"), ("data", "data"), ("code", "code"), ("parents", "parent checkpoint"))
    for key, title in sections:
        for name, (x, y) in d[key].items():
            table.add_row(Text(f"{title} {name}"), Text(str(x)), Text(str(y)))
    sa, sb = d["a"]["scores"], d["b"]["scores"]
    for k in sorted(sa.keys() | sb.keys()):
        if not k.endswith(("/items", "/unparsable", "/undecodable")):
            table.add_row(Text(f"score {k}"), _num(sa.get(k)), _num(sb.get(k)))
    same = [title for key, title in sections if not d[key]]
    console.print(table, highlight=False)
    if same:
        console.print(f"same: {', '.join(same)}", highlight=False)


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


# --- the rich tree -------------------------------------------------------------------------------------------------
def _where(path: str | None, root: Path) -> str:
    if not path:
        return "-"
    p = Path(path)
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return path


def _head(n: dict) -> Text:
    colour = {"FINISHED": "green", "FAILED": "red", "RUNNING": "yellow", "KILLED": "dim"}.get(n["status"], "")
    out = Text.assemble((n["name"] or "?", "bold"), f"  run {n['run_id'][:8]}  ", (n["status"], colour))
    if n.get("recipe_hash"):
        out.append(f"  recipe {n.get('recipe')} #{n['recipe_hash']}")
    if n.get("start_time"):
        out.append(f"  {datetime.fromtimestamp(n['start_time'] / 1000):%Y-%m-%d %H:%M}", "dim")
    return out


def _details(branch: Tree, n: dict, root: Path) -> None:
    for m in n.get("models", []):
        reg = f"  ({m['registered']})" if m.get("registered") else ""
        branch.add(Text(f"checkpoint {_where(m['checkpoint'], root)}  model {m['id']}{reg}"))
    c = n.get("code")
    if c:
        state = "dirty" + (f" diff {c['diff_digest']}" if c.get("diff_digest") else " (diff not recorded)") \
            if c["dirty"] else "clean"
        versions = ", ".join(f"{k} {v}" for k, v in c["versions"].items() if k in ("gemctl", "torch", "mlflow"))
        branch.add(Text(f"code {c['commit'][:12]} {state}" + (f"  {versions}" if versions else "")))
    for d in n.get("data", []):
        line = f"data {d['name']} {d['digest']} at {_where(d['path'], root)}"
        if d.get("run_id"):
            line += f"  (data run {d['run_id'][:8]}" + (", newest before this run" if d["found_by"] == "time"
                                                        else "") + ")"
        files = d.get("files") or {}
        if files:
            line += f"  {files['count']} files" + (f", {len(files['ingested'])} ingested" if files["ingested"]
                                                   else "")
        sub = branch.add(Text(line))
        for path, md5 in list((files.get("ingested") or {}).items())[:10]:
            sub.add(Text(f"{md5}  {path}"))
    if n.get("kind") == "data" and n.get("data_digest"):
        branch.add(Text(f"dataset digest {n['data_digest']}"))
    s = n.get("sweep")
    if s and s.get("id") and n.get("kind") != "sweep":
        branch.add(Text(f"sweep {s['id']} point {s.get('point')} (sweep run {str(s.get('run_id'))[:8]})"))
    if n.get("kind") == "eval":
        branch.add(Text(f"scored {_where(n.get('checkpoint'), root)}  model {n.get('model_id')}"))
        _scores(branch, n)


def _scores(branch: Tree, n: dict) -> None:
    shown = {k: v for k, v in n.get("metrics", {}).items()
             if not k.endswith(("/items", "/unparsable", "/undecodable"))}
    headline = f"{n.get('benchmark')}/{n.get('metric')}"
    text = ", ".join(f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in sorted(shown.items(), key=lambda kv: kv[0] != headline))
    branch.add(Text(f"scores {text}" if text else "no scores"))


def _tree(n: dict, root: Path, down: bool) -> Tree:
    tree = Tree(_head(n))
    _details(tree, n, root)
    if not down and "parent" in n:
        parent = tree.add(Text(f"parent checkpoint {_where(n.get('parent_checkpoint'), root)}", "bold"))
        parent.children.append(_tree(n["parent"], root, down))
    if down:
        for ev in n.get("scores", []):
            tree.children.append(_tree(ev, root, down))
        for c in n.get("children", []):
            tree.children.append(_tree(c, root, down))
    return tree


# --- runs ------------------------------------------------------------------------------------------------------------
SETTINGS = ("lr", "steps", "batch_size")  # a stage run's key settings (stages.<stage>.<key>), and its seed
SKIP_METRICS = ("/items", "/unparsable", "/undecodable")


def runs(
    stage: Annotated[str | None, typer.Option("--stage", help="Only runs of this stage (data, stage1..4, eval).")]
    = None,
    recipe: Annotated[str | None, typer.Option("--recipe", "-r", help="Only runs of this recipe.")] = None,
    where: Annotated[str | None, typer.Option("--where", help="A filter, e.g. \"metrics.`gem-synth-qa/accuracy` > 0.3 "
                                                              "and params.stages.stage3.lr = 1e-5\".")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Order by KEY (metrics.X, params.X, tags.X, start_time); "
                                                            "-KEY for descending. Default: newest first.")] = None,
    as_json: JsonOpt = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """A table of runs with their key settings and scores (a stage run shows its checkpoint's evaluation scores)."""
    from . import run_query

    query = run_query.parse(where) if where is not None else None  # a bad --where is refused before the store opens
    order = _sort_key(sort)
    from .lineage import rows

    # the table shows a few settings: only those params are read (--json prints them all)
    wanted = None if as_json else ({f"stages.{s}.{k}" for s in ("stage1", "stage2", "stage3", "stage4")
                                    for k in SETTINGS} | {"seed", "limit"}
                                   | {name for section, name in (run_query.keys(query) if query else ())
                                      if section == "params"}
                                   | ({order[1]} if order and order[0] == "params" else set()))
    table_rows = rows(_store(tracking_uri), wanted)
    if stage:
        table_rows = [r for r in table_rows if r["attributes"]["stage"] == stage]
    if recipe:
        table_rows = [r for r in table_rows if r["attributes"]["recipe"] == recipe]
    if query is not None:
        table_rows = [r for r in table_rows if run_query.matches(query, r)]
    table_rows = _sorted(table_rows, order)
    if as_json:
        print(json.dumps([{**r["attributes"], "metrics": r["metrics"], "params": r["params"], "tags": r["tags"]}
                          for r in table_rows], indent=1, default=str))
        return
    _print_runs(table_rows)


def _sort_key(sort: str | None) -> tuple[str, str, bool] | None:
    if sort is None:
        return None
    from . import run_query

    descending = sort.startswith("-")
    text = sort.removeprefix("-")
    if "." not in text:
        text = f"attributes.{text}"
    try:
        q = run_query.parse(f"{text} = 0")
    except InputError:
        q = None
    if not isinstance(q, run_query.Compare):
        raise InputError(f"--sort {sort}: give a key such as metrics.NAME, params.NAME, tags.NAME or start_time "
                         "(-KEY for descending)")
    return q.section, q.name, descending


def _sorted(rows: list[dict], order: tuple[str, str, bool] | None) -> list[dict]:
    from .run_query import _number

    if order is None:
        return sorted(rows, key=lambda r: -(r["attributes"]["start_time"] or 0))
    section, name, descending = order
    have = [r for r in rows if r[section].get(name) is not None]
    missing = [r for r in rows if r[section].get(name) is None]  # last, whichever the direction

    def key(r):
        v = r[section][name]
        n = _number(v)
        return (0, n, "") if n is not None else (1, 0.0, str(v))

    return sorted(have, key=key, reverse=descending) + missing


def _print_runs(rows: list[dict]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"{len(rows)} run(s)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    for col in ("run", "name", "status", "started", "settings", "scores"):
        # run ids are copied into `gemctl lineage`: never cut; the other columns fold onto more lines instead
        table.add_column(col, no_wrap=col in ("run", "status", "started"), overflow="fold",
                         min_width=14 if col in ("settings", "scores") else None)
    colours = {"FINISHED": "green", "FAILED": "red", "RUNNING": "yellow", "KILLED": "dim"}
    for r in rows:
        a, p = r["attributes"], r["params"]
        stage = a["stage"] or ""
        settings = [f"{k} {p[f'stages.{stage}.{k}']}" for k in SETTINGS if f"stages.{stage}.{k}" in p]
        if "seed" in p and a["kind"] not in ("eval", "sweep"):
            settings.append(f"seed {p['seed']}")
        if a["kind"] == "eval" and p.get("limit") not in (None, "None"):
            settings = [f"limit {p['limit']}"]
        scores = a["scores"] or ({"loss": r["metrics"]["loss"]} if "loss" in r["metrics"] else {})
        started = datetime.fromtimestamp(a["start_time"] / 1000).strftime("%m-%d %H:%M") if a["start_time"] else ""
        table.add_row(a["run_id"][:8], Text(a["run_name"] or ""), Text(a["status"], colours.get(a["status"], "")),
                      started, Text(", ".join(settings)),
                      Text(", ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items()))))
    console.print(table, highlight=False)
