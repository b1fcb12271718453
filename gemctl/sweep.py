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

from .pipeline import previous_stage
from .project import Project
from .recipe import Recipe, from_params, parse_override, resolve, write_params
from .stage_runner import dvc_digest, input_error, read_summary, stage_key, train_with_lineage

SWEEP_STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclass
class SweepPoint:
    overrides: dict[str, Any]  # the grid values of this point (dotted key -> value), seed included if swept
    recipe: Recipe  # resolved recipe of the point

    @property
    def id(self) -> str:
        return self.recipe.content_hash

    def label(self) -> str:
        return " ".join(f"{k.split('.')[-1] if k != 'seed' else 'seed'}={v}" for k, v in self.overrides.items())


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
    """Points may differ only in the swept stage (and its seed): upstream is built once and shared."""
    for up in SWEEP_STAGES[: SWEEP_STAGES.index(stage)]:
        a, b = _upstream_key(base, up), _upstream_key(point, up)
        if a != b:
            raise InputError(f"sweep point {values} changes upstream stage {up}: sweep only settings of {stage} "
                             f"(stages.{stage}.*, seed), or sweep {up} instead")
    if base.to_dict()["data"] != point.to_dict()["data"]:
        raise InputError(f"sweep point {values} changes the data: sweep only settings of {stage}")


def _upstream_key(recipe: Recipe, stage: str) -> str:
    # the seed of the swept stage may vary; upstream always comes from the base recipe's pipeline
    d = recipe.to_dict()
    return json.dumps({"model": d["model"], "runtime": d["runtime"], "stage": d["stages"][stage]}, sort_keys=True)


def point_dir(project: Project, sweep: Sweep, point: SweepPoint) -> Path:
    return project.recipe_dir(sweep.recipe) / "sweeps" / sweep.stage / point.id


def input_digests(pinned: dict) -> dict[str, str]:
    return {name: entry["digest"] for name, entry in sorted(pinned.items())}


def is_done(project: Project, sweep: Sweep, point: SweepPoint, pinned: dict) -> bool:
    """Complete: trained, its lineage recorded (model_id is written last), and on the current upstream."""
    path = point_dir(project, sweep, point) / "out" / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    return (summary.get("status") == "completed" and bool(summary.get("model_id"))
            and summary.get("inputs") == input_digests(pinned))


def pin_inputs(project: Project, recipe: str, stage: str) -> dict:
    """Pinned copies (hard links, keyed by DVC digest) of the data and the parent checkpoint of `stage`."""
    pinned: dict[str, Any] = {}
    needed = list(dict.fromkeys(["data", previous_stage(stage)]))  # stage1's previous stage is the data
    for up in needed:
        digest = dvc_digest(project, recipe, up)
        src = project.stage_dir(recipe, up)
        if digest is None or not src.is_dir():
            raise InputError(f"{up}@{recipe} is not built: run `gemctl train {up} --recipe {recipe}` first")
        dest = project.recipe_dir(recipe) / "sweeps" / "inputs" / digest.replace(".dir", "")
        if not dest.is_dir():
            tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, copy_function=_link_or_copy)
            os.replace(tmp, dest)
        pinned[up] = {"dir": str(dest), "digest": digest, "summary": read_summary(project, recipe, up) or {}}
    return pinned


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def run_point(root: str, recipe: str, stage: str, point_path: str, pinned: dict, parent_run_id: str,
              sweep_id: str) -> dict:
    """One sweep point, inside its array job: the stage program on pinned inputs, as a child MLflow run."""
    from .launch import should_stop
    from .stage_runner import quiet_libraries

    quiet_libraries()
    project = Project(Path(root))
    pdir = Path(point_path)
    try:
        point = from_params(pdir / "params.json")
        data_dir = Path(pinned["data"]["dir"])
        data = {"name": f"gem-{point.data.source}:{recipe}", "uri": str(data_dir), "digest": pinned["data"]["digest"]}
        init_dir, parent = None, None
        stage_cfg = getattr(point.stages, stage)
        if stage != "stage1" and stage_cfg.init == "previous":
            prev = pinned[previous_stage(stage)]
            init_dir = Path(prev["dir"]) / "model"
            parent = {"run_id": prev["summary"].get("mlflow_run_id", ""), "model_id": prev["summary"].get("model_id"),
                      "checkpoint": str(init_dir)}
        tags = {"mlflow.parentRunId": parent_run_id, "gemctl.sweep": sweep_id, "gemctl.sweep_point": pdir.name}
        return train_with_lineage(project, point, stage, data_dir=data_dir, init_dir=init_dir, data=data,
                                  record={"inputs": input_digests(pinned)}, register=False,
                                  parent=parent, out_dir=pdir / "out",
                                  work_dir=pdir / f"resume-{stage_key(point, stage, input_digests(pinned))}",
                                  should_stop=should_stop, tags=tags)
    except InputError as e:
        return input_error(e)


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
