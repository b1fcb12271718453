"""Sweeps: a grid of recipe overrides for one stage, run as ONE job array, grouped under one MLflow parent run.

    gemctl sweep stage3 --recipe tiny -p stages.stage3.lr=1e-5,3e-5 -p stages.stage3.loss.depth=0,0.1 --seeds 2

Every point is a fully resolved recipe, identified by its content hash. Points share the swept stage's upstream
(data and the parent checkpoint), which gemctl brings up to date through DVC first and then pins by DVC digest:
the points read an immutable copy keyed by that digest, so they neither take the DVC repo lock nor see a later
`gemctl train` replace their inputs. A point whose output is complete is skipped when the sweep runs again.

    runs/<recipe>/sweeps/inputs/<md5>/            pinned upstream outputs (hard links)
    runs/<recipe>/sweeps/<stage>/<point hash>/    params.json, out/ (model, summary.json), resume/
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gem_stages.errors import InputError

from .outcome import StageOutcome, read_summary
from .pipeline import input_stages
from .project import Project
from .recipe import Recipe, from_params, parse_override, resolve, write_params
from .stage_runner import (
    dvc_digests,
    job_outcome,
    quiet_libraries,
    stage_inputs,
    train_with_lineage,
    work_dir,
)

SWEEP_STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclass
class SweepPoint:
    overrides: dict[str, Any]  # the grid values of this point (dotted key -> value), seed included if swept
    recipe: Recipe  # resolved recipe of the point

    @property
    def id(self) -> str:
        return self.recipe.content_hash

    def label(self) -> str:
        # keys less their `stages.<stage>.` (lr, loss.depth, seed): the sweep's table headers them the same way
        return " ".join(f"{k.split('.', 2)[-1] if k.startswith('stages.') else k}={v}"
                        for k, v in self.overrides.items())


@dataclass
class Sweep:
    stage: str
    recipe: str  # base recipe name
    base: Recipe  # the recipe without grid values: its pipeline builds the shared upstream
    points: list[SweepPoint] = field(default_factory=list)

    @property
    def id(self) -> str:
        blob = json.dumps([self.stage, self.recipe, sorted(p.id for p in self.points)])
        return "sw-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def parse_param(text: str) -> tuple[str, list[Any]]:
    """'stages.stage3.lr=1e-5,3e-5' -> ('stages.stage3.lr', [1e-5, 3e-5]); '[a,b]' lists stay one value each."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise InputError(f"bad sweep parameter '{text}': write it as key.path=v1,v2,... "
                         "e.g. -p stages.stage3.lr=1e-5,3e-5")
    parts, depth, cur = [], 0, ""
    for ch in values:  # split on commas outside brackets
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    parsed = [parse_override(f"{key.strip()}={p.strip()}")[1] for p in parts if p.strip()]
    if not parsed:
        raise InputError(f"sweep parameter '{key}' has no values: give at least one, e.g. -p {key}=1,2")
    return key.strip(), parsed


def load_file(path: Path) -> dict:
    """A sweep YAML (recipes/sweeps/*.yaml): {stage, recipe, grid: {key: [values]}, seeds, overrides: [k=v]}."""
    if not path.is_file():
        raise InputError(f"no sweep file {path}: sweep files live in recipes/sweeps/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise InputError(f"sweep file {path.name} is not valid YAML: fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(f"sweep file {path.name} must be a mapping (stage, recipe, grid, seeds, overrides)")
    if not isinstance(data.get("seeds", 1), int) or isinstance(data.get("seeds", 1), bool):
        raise InputError(f"sweep file {path.name}: seeds must be an integer, got {data['seeds']!r}")
    if not isinstance(data.get("overrides") or [], list):
        raise InputError(f"sweep file {path.name}: overrides must be a list of key=value strings")
    unknown = set(data) - {"stage", "recipe", "grid", "seeds", "overrides", "description"}
    if unknown:
        raise InputError(f"sweep file {path.name}: unknown key(s) {', '.join(sorted(unknown))}: use stage, recipe, "
                         "grid, seeds, overrides, description")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise InputError(f"sweep file {path.name}: grid must map each recipe key to a list of values")
    return data


def expand(project: Project, stage: str, recipe: str, grid: dict[str, list], seeds: int = 1,
           base_overrides: list[str] | None = None) -> Sweep:
    """Resolve and validate every point of the grid; refuse the sweep before anything runs if any point is bad."""
    if stage not in SWEEP_STAGES:
        raise InputError(f"cannot sweep '{stage}': choose one of {', '.join(SWEEP_STAGES)}")
    if seeds < 1:
        raise InputError(f"--seeds {seeds}: give 1 or more")
    base_overrides = list(base_overrides or [])
    base = resolve(project.recipes_dir, recipe, base_overrides)
    axes = dict(grid)
    if seeds > 1:
        if "seed" in axes:
            raise InputError("give the seeds either as --seeds or as a 'seed' grid parameter, not both")
        axes["seed"] = [base.seed + i for i in range(seeds)]
    if not axes or any(len(v) == 0 for v in axes.values()):
        raise InputError("the sweep grid is empty: give at least one -p key=v1,v2 (or a grid in a sweep file)")
    sweep = Sweep(stage, recipe, base)
    seen = set()
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        texts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
        try:
            point = resolve(project.recipes_dir, recipe, base_overrides + texts)
        except InputError as e:
            raise InputError(f"sweep point {values}: {e}") from None
        _check_same_upstream(base, point, stage, values)
        if point.content_hash in seen:  # the same settings twice in the grid (e.g. a repeated value)
            continue
        seen.add(point.content_hash)
        sweep.points.append(SweepPoint(values, point))
    return sweep


def _check_same_upstream(base: Recipe, point: Recipe, stage: str, values: dict) -> None:
    """Points may differ only in the swept stage's settings and the seed: upstream is built once and shared, and
    anything else (a later stage, the data, resources of the one array) would train identical points."""
    swept = f"stages.{stage}."
    a, b = base.flat_params(), point.flat_params()
    changed = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
               and not k.startswith(swept) and k != "seed"]
    if not changed:
        return
    key = changed[0]
    parts = key.split(".")
    if parts[0] == "stages" and parts[1] in SWEEP_STAGES[: SWEEP_STAGES.index(stage)]:
        fix = f"or sweep {parts[1]} instead"
        raise InputError(f"sweep point {values} changes upstream stage {parts[1]} ({key}): sweep only settings of "
                         f"{stage} (stages.{stage}.*, seed), {fix}")
    why = (f"{stage} does not use it, so the points would train identically" if parts[0] == "stages"
           else "the points share it")
    raise InputError(f"sweep point {values} changes {key}, but {why}: a {stage} sweep varies only "
                     f"stages.{stage}.* and seed (set {key} with -o for the whole sweep)")


def point_dir(project: Project, sweep: Sweep, point: SweepPoint) -> Path:
    return project.recipe_dir(sweep.recipe) / "sweeps" / sweep.stage / point.id


def is_done(project: Project, sweep: Sweep, point: SweepPoint, pinned: dict) -> bool:
    """Complete: trained, its lineage recorded (model_id is written last), and on the current upstream."""
    summary = read_summary(point_dir(project, sweep, point) / "out")
    if summary is None:
        return False
    return (summary.get("status") == "completed" and bool(summary.get("model_id"))
            and summary.get("inputs") == {name: entry["digest"] for name, entry in sorted(pinned.items())})


def pin_inputs(project: Project, recipe: Recipe, stage: str) -> dict:
    """Pinned copies (hard links, keyed by DVC digest) of the data and the parent checkpoint of `stage`."""
    pinned: dict[str, Any] = {}
    needed, name = input_stages(recipe, stage), recipe.name
    recorded = dvc_digests(project, name, needed)
    for up in needed:
        digest = recorded[up]
        src = project.stage_dir(name, up)
        if digest is None or not src.is_dir():
            raise InputError(f"{up}@{name} is not built: run `gemctl train {up} --recipe {name}` first")
        dest = project.recipe_dir(name) / "sweeps" / "inputs" / digest.replace(".dir", "")
        if not dest.is_dir():
            tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, copy_function=_link_or_copy)
            os.replace(tmp, dest)
        pinned[up] = {"dir": str(dest), "digest": digest, "summary": read_summary(src) or {}}
    return pinned


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def run_point(root: str, recipe: str, stage: str, point_path: str, pinned: dict, parent_run_id: str,
              sweep_id: str) -> StageOutcome:
    """One sweep point, inside its array job: the stage program on pinned inputs, as a child MLflow run."""
    from .launch import should_stop

    def run() -> dict:
        quiet_libraries()
        pdir = Path(point_path)
        point = from_params(pdir / "params.json")
        inputs = stage_inputs(point, recipe, stage, pinned)
        tags = {"mlflow.parentRunId": parent_run_id, "gemctl.sweep": sweep_id, "gemctl.sweep_point": pdir.name}
        return train_with_lineage(Project(Path(root)), point, stage, inputs, out_dir=pdir / "out",
                                  work_dir=work_dir(pdir, point, stage, inputs), should_stop=should_stop,
                                  tags=tags, record={"inputs": inputs.digests}, register=False)

    return job_outcome(run)


def parent_run(project: Project, sweep: Sweep, grid: dict, seeds: int) -> str:
    """The sweep's MLflow parent run (reused when the same sweep runs again)."""
    import mlflow

    from .tracking import setup

    exp = setup(project)
    found = mlflow.search_runs([exp], filter_string=f"tags.`gemctl.sweep` = '{sweep.id}' and "
                               "tags.`gemctl.sweep_parent` = 'true'", output_format="list")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp, run_name=f"sweep {sweep.id} {sweep.stage}@{sweep.recipe}", tags={
        "gemctl.sweep": sweep.id, "gemctl.sweep_parent": "true", "gemctl.stage": sweep.stage,
        "gemctl.recipe": sweep.recipe})
    params = {f"grid.{k}": json.dumps(v) for k, v in grid.items()}
    params.update({"seeds": str(seeds), "points": str(len(sweep.points))})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v[:6000])
    return run.info.run_id


def write_points(project: Project, sweep: Sweep) -> None:
    for p in sweep.points:
        write_params(point_dir(project, sweep, p) / "params.json", p.recipe)


def from_cli(project: Project, stage: str, recipe: str, params: list[str], seeds: int, file: str | None,
             overrides: list[str]) -> tuple[str, str, dict[str, list], int, list[str]]:
    """The sweep the command line describes: a sweep file's stage, recipe, grid, seeds and overrides, merged with
    the options (-p axes added, -o overrides applied after the file's). Returns (stage, recipe, grid, seeds,
    overrides)."""
    grid: dict[str, list] = {}
    overrides = list(overrides)
    if file:
        spec = load_file(project.root / file if not os.path.isabs(file) else Path(file))
        for key, given, default in (("stage", stage, None), ("recipe", recipe, "tiny"), ("seeds", seeds, 1)):
            if key in spec and given not in (spec[key], default):
                raise InputError(f"--{key} {given} conflicts with {key}: {spec[key]} in {file}: give it in one place")
        stage, recipe = spec.get("stage", stage), spec.get("recipe", recipe)
        grid.update(spec.get("grid") or {})
        seeds = spec.get("seeds", seeds)
        overrides = list(spec.get("overrides") or []) + overrides
    for text in params:
        key, values = parse_param(text)
        grid[key] = values
    return stage, recipe, grid, seeds, overrides


def run(project: Project, sweep: Sweep, grid: dict, seeds: int, *, executor: str, parallel: int | None,
        tracking_uri: str | None, console, err) -> list[tuple[SweepPoint, Any]]:
    """Run the points of `sweep` not complete yet as ONE job array (local: in waves of `parallel`), after bringing
    their shared upstream up to date. Returns the points that failed, with their launch results."""
    import uuid
    from functools import partial

    from . import pipeline
    from .launch import launch_array, snapshot, wait_all
    from .launch.cluster import TERMINAL
    from .tracking import LAUNCH_ENV, close_interrupted

    resources = sweep.base.resources_for(sweep.stage)
    if parallel is not None:
        if parallel < 1:
            raise InputError(f"--parallel {parallel}: give 1 or more")
        resources = type(resources)(**{**resources.__dict__, "array_parallelism": parallel})
    pipeline.prepare_launch(project, sweep.base, executor, tracking_uri, [sweep.stage], resources)
    # the shared upstream is brought up to date first, where the sweep runs, then pinned by its DVC digests
    pipeline.reproduce(project, sweep.base.name, pipeline.parent_stage(sweep.base, sweep.stage))
    pinned = pin_inputs(project, sweep.base, sweep.stage)
    todo = [p for p in sweep.points if not is_done(project, sweep, p, pinned)]
    stage, recipe = sweep.stage, sweep.recipe
    console.print(f"sweep {sweep.id}: {stage}@{recipe}, {len(sweep.points)} point(s), "
                  f"{len(sweep.points) - len(todo)} already complete, {len(todo)} to run on {executor}",
                  highlight=False, markup=False)
    if not todo:
        return []
    parent = parent_run(project, sweep, grid, seeds)
    write_points(project, sweep)
    fns = [partial(run_point, str(project.root), recipe, stage, str(point_dir(project, sweep, p)), pinned, parent,
                   sweep.id) for p in todo]
    tags = [{"stage": stage, "point": f"{recipe}/{p.id}", "sweep": sweep.id, "run": f"{stage}@{recipe}/{p.id}"}
            for p in todo]

    labels: dict[str, str] = {}  # job id -> "point <id> (<grid values>)", filled as the points are submitted

    def show(update) -> None:
        """Each point's training progress and how its job ended; not every PENDING/RUNNING poll."""
        from rich.text import Text

        label = labels.get(update.job_id, update.job_id)
        if update.state in TERMINAL or update.state == "REQUEUED":
            console.print(Text(f"{label}: job {update.job_id} {update.state}", style="dim"), highlight=False,
                          soft_wrap=True)
        elif update.line is not None and update.task == 0 and update.line.startswith(f"[{stage}] step "):
            # log text, not rich markup; one line however narrow the terminal
            console.print(Text(f"{label}: {update.line}"), highlight=False, soft_wrap=True)

    # the array is named after its recipe first: squeue and the test cluster's cleanup find a recipe's jobs by prefix
    job_dir, name = project.jobs_dir / recipe / f"sweep-{sweep.id}", f"{recipe}-{sweep.id}-{stage}"
    os.environ[LAUNCH_ENV] = launch_id = uuid.uuid4().hex  # each point's job tags its MLflow run with it
    # one snapshot for every point, taken now: later waves must not pick up code edited meanwhile
    code_dir = snapshot.take(job_dir)
    code = {pkg: code_dir / pkg for pkg in snapshot.project_packages()}
    try:
        if executor == "slurm":  # ONE array; SLURM holds all but array_parallelism of its elements
            handles = launch_array(fns, kind=executor, resources=resources, job_dir=job_dir, name=name,
                                   project=project.root, tags=tags, code=code)
            labels.update(_labels(handles, todo))
            console.print(f"submitted {len(handles)} point(s) as one array: {handles[0].job_id.split('_')[0]}",
                          highlight=False)
            results = wait_all(handles, on_update=show)
        else:  # submitit's local executor starts a whole array at once: bound it here, in waves
            width = parallel or min(resources.array_parallelism, os.cpu_count() or 1)
            results = []
            for i in range(0, len(fns), width):
                handles = launch_array(fns[i:i + width], kind=executor, resources=resources, job_dir=job_dir,
                                       name=name, project=project.root, tags=tags[i:i + width], code=code)
                labels.update(_labels(handles, todo[i:i + width]))
                results += wait_all(handles, on_update=show)
    except KeyboardInterrupt:  # wait_all has stopped the running points at a step boundary (or at once)
        from rich.text import Text

        _finish_parent(parent, status="KILLED")
        err.print(Text(f"sweep {sweep.id}: cancelled; its running points stopped and kept their checkpoints, "
                       "completed points stay complete: run the same sweep again to finish it"), highlight=False)
        raise SystemExit(130) from None  # what a shell reports for a command stopped by Ctrl-C
    failed = [(p, r) for p, r in zip(todo, results) if not (r.ok and r.value.ok)]
    died = [p for p, r in failed if not r.ok]
    if died:  # their jobs ended without a result (killed, out of memory...): no run stays RUNNING
        files = [work_dir(point_dir(project, sweep, p), p.recipe, stage, stage_inputs(p.recipe, recipe, stage, pinned))
                 / "mlflow_run_id" for p in died]
        close_interrupted(project, launch_id, files, "its job ended without a result")
    _finish_parent(parent, status="FAILED" if failed else "FINISHED")
    for p, r in failed:
        why = r.value.message if r.ok else r.state
        from rich.text import Text

        # user values (labels) and job messages are text, not rich markup
        err.print(Text.assemble((f"point {p.id} ({p.label()}) failed:", "red"), f" {why}; log: {r.stdout}"),
                  highlight=False)
    return failed


def _labels(handles, points: list[SweepPoint]) -> dict[str, str]:
    return {h.job_id: f"point {p.id} ({p.label()})" for h, p in zip(handles, points)}


def _finish_parent(run_id: str, status: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status)


@dataclass
class PointCheck:
    point: SweepPoint
    problems: list[str]  # what is missing or wrong; empty when the point's run, metrics and checkpoint are all there

    @property
    def ok(self) -> bool:
        return not self.problems


# what a saved GemModel holds (gem_models.gem.GemModel.save): config, the three parts, each part's weights
CHECKPOINT_FILES = ("gem_config.json", "connector.safetensors", "backbone/config.json", "depth_generator/transformer")


def verify(project: Project, sweep: Sweep) -> list[PointCheck]:
    """Each point of a finished sweep, checked end to end: its summary says completed; its MLflow child run of the
    sweep is FINISHED, with every final loss and the learning rate logged at the last step; its checkpoint holds
    every model file and every safetensors file opens."""
    import mlflow
    from safetensors import safe_open

    from .tracking import setup

    exp = setup(project)
    client = mlflow.MlflowClient()
    runs = {r.data.tags.get("gemctl.sweep_point"): r for r in client.search_runs(
        [exp], filter_string=f"tags.`gemctl.sweep` = '{sweep.id}'", max_results=50000)}
    checks = []
    for p in sweep.points:
        problems: list[str] = []
        out = point_dir(project, sweep, p) / "out"
        summary = read_summary(out) or {}
        if summary.get("status") != "completed" or not summary.get("model_id"):
            problems.append(f"summary: status {summary.get('status')!r}, model_id {summary.get('model_id')!r}")
        run = runs.get(p.id)
        if run is None:
            problems.append("no MLflow run")
        else:
            if run.info.status != "FINISHED":
                problems.append(f"MLflow run {run.info.run_id} is {run.info.status}")
            if summary.get("mlflow_run_id") not in (None, run.info.run_id):
                problems.append(f"summary names run {summary['mlflow_run_id']}, the sweep's is {run.info.run_id}")
            for key in [*(summary.get("losses") or {}), "lr"]:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                if not steps or max(steps) != summary.get("step"):
                    problems.append(f"metric {key}: logged at steps {steps}, last step is {summary.get('step')}")
        model = out / "model"
        problems += [f"checkpoint lacks {name}" for name in CHECKPOINT_FILES if not (model / name).exists()]
        weights = sorted(model.rglob("*.safetensors")) if model.is_dir() else []
        if not any(w.parent.name == "backbone" for w in weights):
            problems.append("checkpoint lacks backbone weights")
        for w in weights:
            try:
                with safe_open(str(w), "pt") as f:
                    f.keys()
            except Exception as e:  # a truncated or foreign file: safetensors raises its own error types
                problems.append(f"checkpoint file {w.relative_to(model)} does not open: {e}")
        checks.append(PointCheck(p, problems))
    return checks
