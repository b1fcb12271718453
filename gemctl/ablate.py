"""Ablations: variants x seeds of a recipe, each trained and scored through the DVC pipeline, then compared.

    gemctl ablate recipes/ablations/gem-synth.yaml --seeds 3

An ablation file names a base recipe, overrides for all of it, and variants (dotted settings over the base); the
first variant, or `baseline:`, is what the others are compared to. Variants may differ anywhere in the chain (the
generator's target changes stage 1-2, `init: base` skips their output, a loss weight changes stage 3 only), so a
sweep, which pins one shared upstream, does not fit: every variant x seed is its own derived recipe, named by the
hash of its resolved settings (abl-<hash>), and runs the whole pipeline up to the stage its evaluations score.
DVC skips what is current, so a finished run is reused by any ablation that resolves to the same settings, and
a re-run submits nothing. The seed is the recipe's `seed` (model init, data order, noise in every stage); the data
(data.seed) and so the held-out items stay the same, which pairs the scores item by item and seed by seed.

    runs/abl-<hash>/                      a derived recipe's pipeline (params.json, stages, eval/<bench>/)
    runs/ablations/<name>/                report.md, report.html, plots/<metric>.svg, scores.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gem_stages.errors import InputError

from .project import Project
from .recipe import Recipe, resolve

KEYS = ("description", "recipe", "seeds", "baseline", "overrides", "eval", "variants")
LOWER_IS_BETTER = ("absrel", "rmse")  # depth errors: a negative difference is the better one
PREFIX = "abl-"  # derived recipes' names: abl-<settings hash>


@dataclass
class Variant:
    name: str
    settings: dict[str, Any]  # dotted recipe key -> value, over the ablation's base


@dataclass
class Ablation:
    name: str  # the file's stem: its report goes to runs/ablations/<name>/
    recipe: str  # base recipe
    seeds: int
    baseline: str
    variants: list[Variant]
    overrides: list[str] = field(default_factory=list)  # key=value for every variant (e.g. fewer steps)
    eval: list[dict] | None = None  # the benchmarks scored (None: the base recipe's eval list)
    description: str = ""


@dataclass
class Run:
    variant: str
    seed: int
    recipe: Recipe  # derived: named abl-<hash of its settings>


def load(path: Path, seeds: int | None = None, only: list[str] | None = None) -> Ablation:
    """Read and check an ablation file (one-line InputError for anything wrong); --seeds replaces its seeds,
    --variant (`only`) keeps those variants and the baseline."""
    shown = path.name
    if not path.is_file():
        raise InputError(f"no ablation file {path}: ablation files live in recipes/ablations/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise InputError(f"ablation file {shown} is not valid YAML: fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(f"ablation file {shown} must be a mapping ({', '.join(KEYS)})")
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise InputError(f"ablation file {shown}: unknown key(s) {', '.join(unknown)}: use {', '.join(KEYS)}")
    variants = data.get("variants")
    if not isinstance(variants, dict) or len(variants) < 2:
        raise InputError(f"ablation file {shown}: variants must map at least two names to their settings "
                         "(e.g. gem: {} and no-depth: {stages.stage3.loss.depth: 0})")
    for name, settings in variants.items():
        if not isinstance(settings, dict) and settings is not None:
            raise InputError(f"ablation file {shown}: variant {name} must map dotted recipe keys to values, "
                             f"e.g. {{stages.stage3.loss.depth: 0}}")
    n = data.get("seeds", 1) if seeds is None else seeds
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"ablation file {shown}: seeds must be an integer of 1 or more, got {n!r}")
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InputError(f"ablation file {shown}: overrides must be a list of key=value strings")
    benchmarks = data.get("eval")
    if benchmarks is not None and (not isinstance(benchmarks, list) or not benchmarks):
        raise InputError(f"ablation file {shown}: eval must be a non-empty list of benchmarks, e.g. "
                         "[{benchmark: gem-synth-qa, limit: 60}]")
    baseline = str(data.get("baseline", next(iter(variants))))
    if baseline not in map(str, variants):
        raise InputError(f"ablation file {shown}: baseline {baseline} is not one of its variants "
                         f"({', '.join(map(str, variants))})")
    kept = [Variant(str(k), dict(v or {})) for k, v in variants.items()]
    if only:
        missing = [name for name in only if name not in {v.name for v in kept}]
        if missing:
            raise InputError(f"--variant {missing[0]}: ablation file {shown} has no such variant (it has "
                             f"{', '.join(v.name for v in kept)})")
        kept = [v for v in kept if v.name in only or v.name == baseline]
        if len(kept) < 2:
            raise InputError(f"--variant names only the baseline {baseline}: name a variant to compare with it")
    return Ablation(name=path.stem, recipe=str(data.get("recipe", "tiny")), seeds=n, baseline=baseline,
                    variants=kept, overrides=overrides,
                    eval=benchmarks, description=str(data.get("description", "")))


def settings_hash(recipe: Recipe) -> str:
    """What makes two runs the same run: every resolved setting but the name, the description and the eval list
    (scoring more benchmarks must not retrain)."""
    d = recipe.to_dict()
    for key in ("name", "description", "eval"):
        d.pop(key, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _override_text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def expand(project: Project, ab: Ablation) -> list[Run]:
    """Every variant x seed as a resolved, derived recipe; refuses (before anything is written) a setting that
    does not resolve and a variant that resolves to the same recipe as another."""
    extra = list(ab.overrides) + ([f"eval={json.dumps(ab.eval)}"] if ab.eval is not None else [])
    base = resolve(project.recipes_dir, ab.recipe, extra)
    first: dict[str, str] = {}  # settings hash at the first seed -> variant
    runs: list[Run] = []
    for v in sorted(ab.variants, key=lambda v: v.name != ab.baseline):  # the baseline first
        texts = [_override_text(k, val) for k, val in v.settings.items()]
        if any(k == "seed" for k in v.settings):
            raise InputError(f"ablation {ab.name}, variant {v.name}: seed is set by --seeds, not by a variant")
        for i in range(ab.seeds):
            seed = base.seed + i
            try:
                r = resolve(project.recipes_dir, ab.recipe, extra + texts + [f"seed={seed}"])
            except InputError as e:
                raise InputError(f"ablation {ab.name}, variant {v.name}: {e}") from None
            if not r.eval:
                raise InputError(f"ablation {ab.name}: recipe {ab.recipe} has no eval list: give the ablation "
                                 "file one (eval: [{benchmark: gem-synth-qa}])")
            h = settings_hash(r)
            if i == 0:
                if h in first:
                    raise InputError(f"ablation {ab.name}: variant {v.name} resolves to the same recipe as "
                                     f"{first[h]}: give it a setting that differs, or remove it")
                first[h] = v.name
            runs.append(Run(v.name, seed, dataclasses.replace(r, name=PREFIX + h)))
    return runs


def report_dir(project: Project, ab: Ablation) -> Path:
    return project.runs_dir / "ablations" / ab.name


@dataclass
class Progress:
    stages: int = 0  # training stage jobs that ran now
    evals: int = 0  # evaluations that ran now


def run(project: Project, ab: Ablation, runs: list[Run], *, executor: str, tracking_uri: str | None,
        console) -> Progress:
    """Train and score every run through DVC (what is current is skipped): one run after the other, since DVC
    holds the repo lock; on SLURM each stage of each run is its own job."""
    from . import pipeline
    from .eval import plan, write_plan

    progress = Progress()
    plans = {r.recipe.name: [plan(project, r.recipe, e.benchmark) for e in r.recipe.eval] for r in runs}
    stages = sorted({s for r in runs for p in plans[r.recipe.name] for s in pipeline.upstream(p["stage"], r.recipe)},
                    key=pipeline.PIPELINE.index)
    for r in runs:  # the first one's preflight refuses what cannot run on this machine before anything runs
        rec = r.recipe
        pipeline.prepare_launch(project, rec, executor, tracking_uri, stages)
        for p in plans[rec.name]:
            write_plan(project, rec.name, p)
            pipeline.list_eval(project, rec.name, p["benchmark"], p["stage"])
        for p in plans[rec.name]:
            ran, result = pipeline.reproduce_eval(project, rec.name, p["benchmark"], p["stage"])
            progress.stages += len(result.ran)
            progress.evals += ran
            if ran or result.ran:
                console.print(f"{r.variant} seed {r.seed} ({rec.name}): trained {', '.join(result.ran) or '-'}, "
                              f"scored {p['benchmark']}", highlight=False, markup=False)
    return progress


def scores(project: Project, runs: list[Run]) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> variant -> seed -> score, from each run's results.json: a benchmark's overall score as
    `<benchmark>`, each of its categories (when more than one) as `<benchmark>/<category>`, and a depth
    benchmark's other metrics as `<benchmark>/<name>`."""
    from .eval import out_dir

    out: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        for e in r.recipe.eval:
            path = out_dir(project, r.recipe.name, e.benchmark) / "results.json"
            results = json.loads(path.read_text())
            found = {e.benchmark: results.get("overall")}
            categories = results.get("categories") or {}
            if len(categories) > 1:  # a single category is the overall score again
                found.update({f"{e.benchmark}/{c}": v for c, v in categories.items()})
            for k, v in (results.get("depth") or {}).items():  # depth quality's other metrics (AbsRel, RMSE)
                if k not in ("scored", results.get("metric")):
                    found[f"{e.benchmark}/{k}{' (lower is better)' if k in LOWER_IS_BETTER else ''}"] = v
            for metric, value in found.items():
                if isinstance(value, (int, float)):
                    out.setdefault(metric, {}).setdefault(r.variant, {})[r.seed] = float(value)
    return out


def log_parent(project: Project, ab: Ablation, runs: list[Run], folder: Path, table: list[dict]) -> str:
    """One MLflow parent run per ablation (reused on a re-run): its settings, the runs it compares, and the
    report as artifacts."""
    import mlflow

    from .tracking import setup

    exp = setup(project)
    key = hashlib.sha256(json.dumps([ab.name, sorted(r.recipe.name for r in runs)]).encode()).hexdigest()[:8]
    found = mlflow.search_runs([exp], filter_string=f"tags.`gemctl.ablation` = '{ab.name}' and "
                               f"tags.`gemctl.ablation_id` = '{key}'", output_format="list")
    client = mlflow.MlflowClient()
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp, run_name=f"ablation {ab.name} ({key})", tags={
            "gemctl.ablation": ab.name, "gemctl.ablation_id": key, "gemctl.recipe": ab.recipe,
            "mlflow.note.content": ab.description}).info.run_id
        for k, v in {"recipe": ab.recipe, "seeds": str(ab.seeds), "baseline": ab.baseline,
                     "variants": json.dumps({v.name: v.settings for v in ab.variants}),
                     "overrides": json.dumps(ab.overrides)}.items():
            client.log_param(run_id, k, v[:6000])
    logged = client.get_run(run_id).data.metrics  # a re-run adds what is new, never a second value of the same
    for row in table:
        if row["diff"] is not None:
            name = _metric_key(f"{row['metric']}.{row['variant']}.diff".replace("/", "."))
            if name not in logged:
                client.log_metric(run_id, name, row["diff"])
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _metric_key(text: str) -> str:
    # MLflow keys: alphanumerics, _ - . space / only
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in text)


def runs_json(runs: list[Run]) -> list[dict]:
    return [{"variant": r.variant, "seed": r.seed, "recipe": r.recipe.name} for r in runs]


def file_path(project: Project, file: str) -> Path:
    """FILE as given (absolute, or from the current folder), else from the project root."""
    path = Path(file)
    return path if path.is_absolute() or path.exists() else project.root / path
