"""Evaluation as a pipeline stage: `gemctl eval BENCH --recipe R` scores a stage's checkpoint on one benchmark.

    gemctl eval cv-bench --recipe tiny
      plan: the recipe's eval entry (or defaults) + command-line settings, the benchmark's data digest
        -> runs/tiny/eval/cv-bench.json            (a DVC dependency: changed settings or data re-score)
        -> params.yaml evals: tiny__cv-bench        (declares the DVC stage eval@tiny__cv-bench)
      dvc repro eval@tiny__cv-bench                 (the checkpoint's stages first; skipped when all is current)
        -> gemctl stage eval cv-bench --recipe tiny (launch_eval: one job, or K shard jobs as one array, merged)
        -> runs/tiny/eval/cv-bench/{results.json, predictions.jsonl}, an MLflow evaluation run on the checkpoint's
           logged model

`--ckpt DIR` scores any checkpoint folder the same way, outside the pipeline (no DVC, no recipe).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from . import outcome
from .outcome import StageOutcome
from .project import Project
from .recipe import Recipe, from_params


def settings_file(project: Project, recipe: str, benchmark: str) -> Path:
    return project.recipe_dir(recipe) / "eval" / f"{benchmark}.json"


def out_dir(project: Project, recipe: str, benchmark: str) -> Path:
    return project.recipe_dir(recipe) / "eval" / benchmark


def plan(project: Project | None, recipe: Recipe | None, benchmark: str, **given) -> dict:
    """What one evaluation runs: the recipe's `eval:` entry for `benchmark` (or the defaults), with the settings
    given on the command line (None: not given), and the benchmark data's digest. Refuses a missing benchmark or
    data path (InputError) before anything is written."""
    from gem_stages.eval.config import EvalEntry, entry
    from gem_stages.eval.registry import resolve_benchmark
    from gem_stages.eval.run import digest

    base = (entry(recipe.eval, benchmark) if recipe is not None else None) or EvalEntry(benchmark=benchmark)
    chosen = replace(base, **{k: v for k, v in given.items() if v is not None})
    root = project.root if project is not None else None
    if benchmark in CLOSED_LOOP:  # simulated episodes: no data to read, the policy is stage 4's
        if recipe is None:
            raise InputError(f"{benchmark} acts with a recipe's stage-4 settings: run it with --recipe, not --ckpt")
        return {"benchmark": benchmark, "path": None, "data_digest": "", "stage": chosen.stage_for(True),
                "limit": chosen.limit, "batch_size": chosen.batch_size, "max_new_tokens": chosen.max_new_tokens,
                "shards": chosen.shards}
    if benchmark.startswith(GEM_SYNTH) and not chosen.path and recipe is not None and project is not None:
        chosen = replace(chosen, path=str(heldout(project, recipe)))
    bench = resolve_benchmark(benchmark, chosen.path, root)
    has_data = bool(chosen.path) or getattr(bench, "needs_data", True)
    spec = root / "benchmarks" / f"{benchmark}.yaml" if root is not None else None
    data_digest = digest(bench.root) if has_data and bench.root.exists() else ""
    if spec is not None and spec.is_file():
        data_digest = f"{data_digest}+{digest(spec)}" if data_digest else digest(spec)
    path = bench.root.resolve()
    if root is not None and path.is_relative_to(root.resolve()):  # the settings file holds no machine's paths
        path = path.relative_to(root.resolve())
    return {"benchmark": benchmark, "path": str(path) if has_data else None,
            "data_digest": data_digest, "stage": chosen.stage_for(getattr(bench, "closed_loop", False)),
            "limit": chosen.limit, "batch_size": chosen.batch_size, "max_new_tokens": chosen.max_new_tokens,
            "shards": chosen.shards}


# Closed-loop benchmarks: GEM-VLA acts in a simulated task (gem_stages.eval.closed_loop, .libero); `limit` is the
# number of episodes (per task for LIBERO), `shards` splits the episodes
CLOSED_LOOP = ("gem-synth-closed-loop", "libero_spatial", "libero_object", "libero_goal", "libero_10")
GEM_SYNTH = "gem-synth-"  # the held-out gem-synth benchmarks: their data is rendered from the recipe's data settings


def heldout(project: Project, recipe: Recipe) -> Path:
    """The recipe's gem-synth held-out scenes (never in training), rendered on first use and kept while the data
    settings stay the same. They live in .gemctl (not in git, not a DVC output): the same settings render the
    same scenes, and their digest is in each evaluation's settings file."""
    from gem_stages.eval.gem_synth import ensure_heldout

    root = project.root / ".gemctl" / "heldout" / recipe.name
    ensure_heldout(recipe.data, root)
    return root


def write_plan(project: Project, recipe: str, p: dict) -> None:
    """The settings file DVC depends on; rewritten only when its content changes."""
    path = settings_file(project, recipe, p["benchmark"])
    text = json.dumps(p, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


# --- the stage program --------------------------------------------------------------------------------------------
def score(checkpoint: Path, p: dict, out: Path, shard: tuple[int, int], *, project_root: Path | None,
          runtime=None, record: dict | None = None) -> dict:
    """Load the checkpoint and score shard k of K of the planned evaluation into `out`."""
    import torch

    from gem_stages.eval.registry import resolve_benchmark
    from gem_stages.eval.run import evaluate, load_model

    if not (Path(checkpoint) / "gem_config.json").is_file():
        raise InputError(f"no checkpoint in {checkpoint}: train it first, or give a stage's model folder")
    if runtime is not None and runtime.cpu_threads:
        torch.set_num_threads(runtime.cpu_threads)
    bench = resolve_benchmark(p["benchmark"], p["path"], project_root)
    model = load_model(checkpoint, getattr(runtime, "device", "auto"))
    settings = {"checkpoint": str(Path(checkpoint).resolve()), **(record or {}), "data_path": p["path"],
                "data_digest": p["data_digest"]}
    return evaluate(model, bench, out, batch_size=p["batch_size"], limit=p["limit"], shard=shard,
                    max_new_tokens=p["max_new_tokens"], settings=settings)


def closed_loop_env(recipe: Recipe, benchmark: str, limit: int | None):
    """The simulated task of a closed-loop benchmark, rendered as the recipe's stage 4 saw its episodes."""
    samples = recipe.stages.stage4.episodes
    if benchmark == "gem-synth-closed-loop":
        from gem_stages.eval.closed_loop import SynthPickPlace, synth_config

        return SynthPickPlace(synth_config(recipe.data, samples, **({"episodes": limit} if limit else {})))
    from gem_stages.eval.libero import LiberoConfig, LiberoSuite

    given = {"cameras": tuple(samples.cameras)} if samples.cameras else {}
    return LiberoSuite(LiberoConfig(suite=benchmark, **given, **({"episodes_per_task": limit} if limit else {})))


def _closed_loop(project: Project, recipe: Recipe, p: dict, shard: tuple[int, int], record: dict) -> dict:
    from gem_stages.eval.closed_loop import load_policy, merge, run_shard

    checkpoint = project.stage_dir(recipe.name, p["stage"]) / "model"
    out = out_dir(project, recipe.name, p["benchmark"])
    device = recipe.runtime.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(checkpoint, recipe.model, recipe.stages.stage4.episodes, device=device, seed=recipe.seed)
    env = closed_loop_env(recipe, p["benchmark"], p["limit"])
    run_shard(env, policy, out, shard[0], shard[1])
    if shard[1] > 1:
        return {}
    return _settle(merge(env, out, 1), out, {"checkpoint": str(checkpoint.resolve()), **record}, p)


def _settle(results: dict, out: Path, settings: dict, p: dict) -> dict:
    """A closed-loop merge's results.json with the settings every evaluation records."""
    results["settings"] = {**settings, "limit": p["limit"], "shards": p["shards"]}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results


def _stage_score(root: str, recipe_name: str, benchmark: str, shard: tuple[int, int]) -> dict:
    from .stage_runner import dvc_digests, quiet_libraries

    quiet_libraries()
    project = Project(Path(root))
    recipe = from_params(project.params_file(recipe_name))
    p = json.loads(settings_file(project, recipe_name, benchmark).read_text())
    stage_dir = project.stage_dir(recipe_name, p["stage"])
    summary = outcome.read_summary(stage_dir) or {}
    record = {"stage": p["stage"], "checkpoint_digest": dvc_digests(project, recipe_name, [p["stage"]])[p["stage"]]
              or summary.get("model_id") or "", "model_id": summary.get("model_id")}
    if benchmark in CLOSED_LOOP:
        if recipe.runtime.cpu_threads:
            import torch

            torch.set_num_threads(recipe.runtime.cpu_threads)
        return {"status": "completed", "results": _closed_loop(project, recipe, p, shard, record)}
    results = score(stage_dir / "model", p, out_dir(project, recipe_name, benchmark), shard,
                    project_root=project.root, runtime=recipe.runtime, record=record)
    return {"status": "completed", "results": results}


def eval_job(root: str, recipe_name: str, benchmark: str, shard: tuple[int, int]) -> StageOutcome:
    """What a launched evaluation job runs (any executor)."""
    from .stage_runner import job_outcome

    return job_outcome(partial(_stage_score, root, recipe_name, benchmark, shard))


def launch_eval(project: Project, recipe_name: str, benchmark: str, on_update=None) -> tuple[int, str]:
    """`gemctl stage eval`: score as one job (or K shard jobs, one array), merge, record in MLflow. Returns the exit
    code and what to print."""
    from .launch import kind_from_env, launch_array, wait_all
    from .stage_runner import dvc_digests

    kind = kind_from_env()
    recipe = from_params(project.params_file(recipe_name))
    p = json.loads(settings_file(project, recipe_name, benchmark).read_text())
    name = f"eval-{benchmark}"
    res = recipe.resources_for(p["stage"])
    # one process per shard: generation is not data-parallel here
    res = replace(res, nodes=1, gpus_per_node=min(res.gpus_per_node, 1), tasks_per_node=None)
    shards = p["shards"]
    fns = [partial(eval_job, str(project.root), recipe_name, benchmark, (k, shards)) for k in range(shards)]
    tags = [{"stage": name, "point": recipe_name if shards == 1 else f"{recipe_name}/shard-{k}-of-{shards}",
             "run": f"{benchmark}@{recipe_name}"} for k in range(shards)]
    try:
        # the job is named like a stage's, <what>@<recipe>: `gemctl logs cv-bench@tiny`, squeue shows cv-bench@tiny
        handles = launch_array(fns, kind=kind, resources=res, job_dir=project.jobs_dir / recipe_name / name,
                               name=f"{benchmark}@{recipe_name}", project=project.root, tags=tags)
        results = wait_all(handles, on_update if kind != "debug" else None)
    except InputError as e:
        outcome.write_error(project.recipe_dir(recipe_name), name, str(e), 2)
        return 2, str(e)
    for r in results:
        if r.ok and r.value.status in ("input_error", "no_space"):
            code = 2 if r.value.status == "input_error" else 1
            outcome.write_error(project.recipe_dir(recipe_name), name, r.value.message, code)
            return code, r.value.message
        if not r.ok and r.state == "CANCELLED":  # `gemctl cancel`, or Ctrl-C here: what the user asked for
            from .outcome import CANCELLED_EXIT

            outcome.write_error(project.recipe_dir(recipe_name), name, "cancelled", CANCELLED_EXIT)
            return CANCELLED_EXIT, f"cancelled (job {r.job_id}): nothing recorded; run it again to score"
        if not r.ok:
            code = r.exit_code or 1
            outcome.write_error(project.recipe_dir(recipe_name), name, f"job {r.job_id} {r.state}", code)
            return code, f"job {r.job_id} ended {r.state}; last lines of its log:\n{r.log_tail(20)}"
    out = out_dir(project, recipe_name, benchmark)
    summary = outcome.read_summary(project.stage_dir(recipe_name, p["stage"])) or {}
    digest = dvc_digests(project, recipe_name, [p["stage"]])[p["stage"]]
    if shards > 1 and benchmark in CLOSED_LOOP:
        from gem_stages.eval.closed_loop import merge

        checkpoint = project.stage_dir(recipe_name, p["stage"]) / "model"
        _settle(merge(closed_loop_env(recipe, benchmark, p["limit"]), out, shards), out, {
            "checkpoint": str(checkpoint.resolve()), "stage": p["stage"], "checkpoint_digest": digest or "",
            "model_id": summary.get("model_id")}, p)
    elif shards > 1:
        from gem_stages.eval.registry import resolve_benchmark
        from gem_stages.eval.run import merge_shards

        bench = resolve_benchmark(benchmark, p["path"], project.root)
        merge_shards(bench, out, shards, limit=p["limit"])
    record(project, out, benchmark=benchmark, recipe=recipe_name, checkpoint=project.stage_dir(
        recipe_name, p["stage"]) / "model", model_id=summary.get("model_id"), plan=p,
        source_run=summary.get("mlflow_run_id"), checkpoint_digest=digest)
    return 0, ""


def record(project: Project, out: Path, *, benchmark: str, recipe: str | None, checkpoint: Path, model_id: str | None,
           plan: dict, source_run: str | None = None, checkpoint_digest: str | None = None) -> dict:
    """Log the evaluation to MLflow and add its lineage to results.json."""
    from .tracking import log_evaluation

    results_path = out / "results.json"
    results = json.loads(results_path.read_text())
    run_id, key = log_evaluation(project, results=results, out_dir=out, benchmark=benchmark, recipe=recipe,
                                 checkpoint=Path(checkpoint).resolve(), model_id=model_id, plan=plan,
                                 source_run=source_run)
    # a run spooled while the store was away has no id yet: its gemctl.record tag (the key) finds it once delivered
    results["lineage"] = {"mlflow_run_id": run_id, "record": key, "model_id": model_id,
                          "tracking_uri": project.tracking_uri, "checkpoint_digest": checkpoint_digest}
    atomic_write_text(results_path, json.dumps(results, indent=2, default=str) + "\n")
    return results


# --- outside the pipeline -------------------------------------------------------------------------------------------
def score_checkpoint(project: Project | None, checkpoint: Path, benchmark: str, out: Path | None, **given) -> tuple[
        dict, Path]:
    """`gemctl eval BENCH --ckpt DIR`: score any checkpoint folder in this process; results under DIR/eval/BENCH
    (or `out`); recorded in MLflow on the checkpoint's logged model when the store knows it."""
    from gem_stages.eval.run import digest, merge_shards

    checkpoint = Path(checkpoint)
    if not (checkpoint / "gem_config.json").is_file():
        raise InputError(f"--ckpt {checkpoint}: no GemModel checkpoint there (no gem_config.json): give a model "
                         "folder, e.g. runs/<recipe>/stage3/model")
    p = plan(project, None, benchmark, **given)
    out = Path(out) if out is not None else default_out(project, checkpoint, benchmark)
    ckpt_digest = digest(checkpoint, skip=("eval",))
    for k in range(p["shards"]):
        score(checkpoint, p, out, (k, p["shards"]), project_root=project.root if project else None,
              record={"checkpoint_digest": ckpt_digest})
    if p["shards"] > 1:
        from gem_stages.eval.registry import resolve_benchmark

        merge_shards(resolve_benchmark(benchmark, p["path"], project.root if project else None), out, p["shards"],
                     limit=p["limit"])
    if project is None:
        return json.loads((out / "results.json").read_text()), out
    from .tracking import find_logged_model

    model_id = find_logged_model(project, checkpoint.resolve())
    return record(project, out, benchmark=benchmark, recipe=None, checkpoint=checkpoint, model_id=model_id, plan=p,
                  checkpoint_digest=ckpt_digest), out


def default_out(project: Project | None, checkpoint: Path, benchmark: str) -> Path:
    """Where `--ckpt` results go without --out: CKPT/eval/BENCH, except for a checkpoint the pipeline made (under
    runs/, a DVC output that must not change): .gemctl/eval/<its path under runs>/BENCH."""
    ckpt = checkpoint.resolve()
    if project is not None and ckpt.is_relative_to(project.runs_dir.resolve()):
        return project.root / ".gemctl" / "eval" / ckpt.relative_to(project.runs_dir.resolve()) / benchmark
    return checkpoint / "eval" / benchmark


def in_dvc_stage(recipe: str, benchmark: str) -> bool:
    from .pipeline import EVAL, eval_key

    return os.environ.get("DVC_STAGE") == f"{EVAL}@{eval_key(recipe, benchmark)}"
