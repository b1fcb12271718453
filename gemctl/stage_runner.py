"""Run one stage of one recipe: read its resolved recipe, check its inputs, wrap the stage program in lineage.

This is what `gemctl stage run STAGE --recipe NAME` (the DVC stage command) executes, in-process or inside a
SLURM job. The stage programs themselves (gem_stages) know nothing of DVC, MLflow or SLURM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gem_stages.config import STAGES
from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .pipeline import previous_stage
from .project import Project
from .recipe import Recipe, from_params


def read_summary(project: Project, recipe: str, stage: str) -> dict | None:
    path = project.stage_dir(recipe, stage) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def dvc_digest(project: Project, recipe: str, stage: str) -> str | None:
    """The md5 DVC recorded in dvc.lock for a stage's output folder."""
    import yaml

    lock = project.root / "dvc.lock"
    if not lock.is_file():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    entry = (data.get("stages") or {}).get(f"{stage}@{recipe}") or {}
    for out in entry.get("outs") or []:
        if out.get("path") == f"runs/{recipe}/{stage}":
            return out.get("md5")
    return None


# Stage settings that do not change what is computed: changing them keeps resume state valid.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every")


def stage_key(recipe: Recipe, stage: str, inputs: dict) -> str:
    """Identity of a stage's computation: its settings, its inputs (data and parent checkpoint digests) and the
    world size (it sets the data order). Resume state is only reused by a run with exactly the same identity."""
    d = recipe.to_dict()
    settings = {k: v for k, v in d["stages"][stage].items() if k not in _BOOKKEEPING}
    relevant = {"seed": d["seed"], "model": d["model"], "runtime": d["runtime"], "stage": settings,
                "inputs": inputs, "world_size": recipe.resources.world_size}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


def quiet_libraries() -> None:
    """Keep stage logs to gemctl's own progress: no per-file progress bars or registry chatter."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import mlflow  # noqa: F401  (configures its loggers on import: quieten them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_stage(root: str, recipe_name: str, stage: str, should_stop: Callable[[], bool] | None = None) -> dict:
    """Run `stage` of recipe `recipe_name` in project `root`. Returns the stage summary (status "preempted" if it
    checkpointed on request and must be run again to finish)."""
    quiet_libraries()
    project = Project(Path(root))
    recipe = from_params(project.params_file(recipe_name))
    out_dir = project.stage_dir(recipe_name, stage)

    if stage == "data":
        from gem_stages.data.config import check_config
        from gem_stages.data.generate import prepare_dataset

        from .tracking import StageRun

        check_config(recipe.data)
        with StageRun(project, recipe, stage) as run:
            manifest = prepare_dataset(recipe.data, out_dir)
            summary = {"stage": stage, "recipe": recipe.name, "recipe_hash": recipe.content_hash,
                       "mlflow_run_id": run.run_id, "digest": manifest.get("digest"),
                       "counts": manifest.get("counts", {})}
            import mlflow

            mlflow.set_tag("gemctl.data_digest", str(manifest.get("digest")))
            atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
        return summary

    if stage not in STAGES:
        raise InputError(f"unknown stage '{stage}': choose one of data, {', '.join(STAGES)}")
    stage_cfg = getattr(recipe.stages, stage)
    data_dir = project.stage_dir(recipe_name, "data")
    if not (data_dir / "dataset.json").is_file():
        raise InputError(f"{stage}@{recipe_name} needs the dataset in runs/{recipe_name}/data: "
                         f"run `gemctl train {stage} --recipe {recipe_name}` (it builds upstream stages first)")
    init_dir, parent = None, None
    if stage != "stage1" and stage_cfg.init == "previous":
        prev = previous_stage(stage)
        parent = read_summary(project, recipe_name, prev)
        init_dir = project.stage_dir(recipe_name, prev) / "model"
        if parent is None or not init_dir.is_dir():
            raise InputError(f"{stage}@{recipe_name} starts from {prev}'s checkpoint, which does not exist: "
                             f"run `gemctl train {stage} --recipe {recipe_name}` to build it first")
        parent = {"run_id": parent.get("mlflow_run_id", ""), "model_id": parent.get("model_id"),
                  "checkpoint": str(init_dir)}

    data_summary = read_summary(project, recipe_name, "data") or {}
    data = {"name": f"gem-{recipe.data.source}:{recipe_name}", "uri": str(data_dir.resolve()),
            "digest": dvc_digest(project, recipe_name, "data") or str(data_summary.get("digest", ""))}

    inputs = {"data": data["digest"], "parent": parent and (parent.get("model_id") or parent["checkpoint"])}
    work_dir = project.resume_dir(recipe_name) / f"{stage}-{stage_key(recipe, stage, inputs)}"
    return train_with_lineage(project, recipe, stage, data_dir=data_dir, init_dir=init_dir, data=data,
                              parent=parent, out_dir=out_dir, work_dir=work_dir, should_stop=should_stop)


def train_with_lineage(project: Project, recipe: Recipe, stage: str, *, data_dir: Path, init_dir: Path | None,
                       data: dict, parent: dict | None, out_dir: Path, work_dir: Path,
                       should_stop: Callable[[], bool] | None = None, tags: dict | None = None,
                       record: dict | None = None, register: bool = True) -> dict:
    """The training stage program inside one MLflow run; resume state (and the run id) live in work_dir.
    `record` adds fields to the summary; `register` adds the checkpoint to the model registry too."""
    from gem_stages.train import train_stage

    from .tracking import StageRun

    stage_cfg = getattr(recipe.stages, stage)
    if int(os.environ.get("RANK", "0")) != 0:
        # other ranks of a multi-process job train alongside rank 0; lineage and the checkpoint are rank 0's
        return train_stage(stage, model_cfg=recipe.model, stage_cfg=stage_cfg, runtime=recipe.runtime,
                           seed=recipe.seed, data_dir=data_dir, init_dir=init_dir, out_dir=out_dir,
                           work_dir=work_dir, tracker=None, should_stop=should_stop)
    run_id_file = work_dir / "mlflow_run_id"
    resume_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
    with StageRun(project, recipe, stage, data=data, parent=parent, resume_run_id=resume_id, tags=tags) as run:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_id_file, run.run_id)
        try:
            summary = train_stage(stage, model_cfg=recipe.model, stage_cfg=stage_cfg, runtime=recipe.runtime,
                                  seed=recipe.seed, data_dir=data_dir, init_dir=init_dir, out_dir=out_dir,
                                  work_dir=work_dir, tracker=run, should_stop=should_stop)
        except InputError:
            run_id_file.unlink(missing_ok=True)  # the run is deleted: a fixed re-run starts a new one
            raise
        if summary["status"] == "preempted":
            run.preempted = True
            return summary
        summary.update(recipe=recipe.name, recipe_hash=recipe.content_hash, mlflow_run_id=run.run_id,
                       **(record or {}))
        # model_id is written last: a summary with it means training and lineage both completed
        summary["model_id"] = run.log_checkpoint((out_dir / "model").resolve(), summary["step"], register=register)
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    shutil.rmtree(work_dir, ignore_errors=True)
    return summary


def input_error(e: InputError) -> dict:
    """A job's result for a user input error: the launcher prints the message as one line and exits 2."""
    return {"status": "input_error", "message": str(e)}


def is_input_error(value) -> bool:
    return isinstance(value, dict) and value.get("status") == "input_error"


def stage_job(root: str, recipe_name: str, stage: str) -> dict:
    """What a launched job runs (any executor): run_stage with the launcher's preemption flag, and a user input
    error returned as a result (one line for the CLI to print) rather than raised as a traceback."""
    from .launch import should_stop

    try:
        return run_stage(root, recipe_name, stage, should_stop=should_stop)
    except InputError as e:
        return input_error(e)
