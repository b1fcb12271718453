"""Run one stage of one recipe: read its resolved recipe, build its inputs, wrap the stage program in lineage.

`gemctl stage run STAGE --recipe NAME` (the DVC stage command) calls launch_stage, which runs stage_job as a job
(in-process, a local subprocess or a SLURM job) and turns its StageOutcome into an exit code. Sweep points run the
same train_with_lineage on inputs built by the same stage_inputs. The stage programs themselves (gem_stages) know
nothing of DVC, MLflow or SLURM.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gem_stages.config import STAGES
from gem_stages.errors import InputError

from . import outcome
from .launch.resources import Resources
from .outcome import CANCELLED_EXIT, StageOutcome
from .pipeline import input_stages, previous_stage
from .project import Project
from .recipe import Recipe, from_params


def read_summary(project: Project, recipe: str, stage: str) -> dict | None:
    return outcome.read_summary(project.stage_dir(recipe, stage))


def dvc_digests(project: Project, recipe: str, stages: list[str]) -> dict[str, str | None]:
    """The md5 DVC recorded in dvc.lock for each stage's output folder (None: not recorded), reading it once."""
    import yaml

    lock = project.root / "dvc.lock"
    recorded = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}) if lock.is_file() else {}
    digests: dict[str, str | None] = {}
    for stage in stages:
        outs = (recorded.get(f"{stage}@{recipe}") or {}).get("outs") or []
        digests[stage] = next((o.get("md5") for o in outs if o.get("path") == f"runs/{recipe}/{stage}"), None)
    return digests


# Stage settings that do not change what is computed: changing them keeps resume state valid.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every")


def stage_key(recipe: Recipe, stage: str, inputs: dict) -> str:
    """Identity of a stage's computation: its settings, its inputs (data and parent checkpoint digests) and the
    world size (it sets the data order). Resume state is only reused by a run with exactly the same identity."""
    d = recipe.to_dict()
    settings = {k: v for k, v in d["stages"][stage].items() if k not in _BOOKKEEPING}
    relevant = {"seed": d["seed"], "model": d["model"], "runtime": d["runtime"], "stage": settings,
                "inputs": inputs, "world_size": recipe.resources_for(stage).world_size}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


def quiet_libraries() -> None:
    """Keep stage logs to gemctl's own progress: no per-file progress bars or registry chatter."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import mlflow  # noqa: F401  (configures its loggers on import: quieten them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class StageInputs:
    """What a training stage reads, for a plain run and a sweep point alike."""

    data_dir: Path  # the prepared dataset
    data: dict  # its MLflow dataset input: name, uri, digest
    init_dir: Path | None  # the parent stage's model, when the stage starts from it
    parent: dict | None  # the parent's lineage: run_id, model_id, checkpoint, tracking_uri (its store)
    digests: dict[str, str]  # upstream output name -> DVC digest: part of the stage's identity (resume key)


def upstream_outputs(project: Project, recipe: Recipe, recipe_name: str, stage: str) -> dict[str, dict]:
    """The outputs `stage` reads, where `gemctl train` builds them: {name: {dir, digest, summary}} for the data and
    the previous stage. The digest is DVC's (dvc.lock), else the data's own digest (a stage run outside DVC)."""
    outputs = {}
    names = input_stages(recipe, stage)
    recorded = dvc_digests(project, recipe_name, names)
    for up in names:
        summary = read_summary(project, recipe_name, up) or {}
        digest = recorded[up] or str(summary.get("digest") or summary.get("model_id") or "")
        outputs[up] = {"dir": str(project.stage_dir(recipe_name, up)), "digest": digest, "summary": summary}
    outputs.update(imported_input(project, recipe, stage))
    return outputs


def imported_input(project: Project, recipe: Recipe, stage: str) -> dict[str, dict]:
    """{"imported": {dir, digest, summary}} when the stage starts from an imported model (`init: imported:NAME`):
    its checkpoint folder, the manifest's content digest and the manifest itself; {} otherwise."""
    from .importer import imported_name, resolve

    name = imported_name(getattr(recipe.stages, stage).init)
    if name is None:
        return {}
    manifest = resolve(project, name)
    return {"imported": {"dir": manifest["dir"], "digest": manifest["digest"], "summary": manifest}}


def dataset_name(recipe: Recipe, recipe_name: str) -> str:
    """The prepared data's name in MLflow: the data run logs it under this name, the stages that read it too."""
    return f"gem-{recipe.data.source}:{recipe_name}"


def stage_inputs(recipe: Recipe, recipe_name: str, stage: str, upstream: dict[str, dict]) -> StageInputs:
    """The one place a training stage's inputs are built, from `upstream` (upstream_outputs, or a sweep's pinned
    copies of them). Refuses, with the command that fixes it, an input that does not exist."""
    if stage not in STAGES:
        raise InputError(f"unknown stage '{stage}': choose one of data, {', '.join(STAGES)}")
    data_dir = Path(upstream["data"]["dir"])
    if not (data_dir / "dataset.json").is_file():
        raise InputError(f"{stage}@{recipe_name} needs the dataset in runs/{recipe_name}/data: "
                         f"run `gemctl train {stage} --recipe {recipe_name}` (it builds upstream stages first)")
    data = {"name": dataset_name(recipe, recipe_name), "uri": str(data_dir.resolve()),
            "digest": upstream["data"]["digest"]}
    init_dir, parent = None, None
    init = getattr(recipe.stages, stage).init
    if init.startswith("imported:"):
        if "imported" not in upstream:
            raise InputError(f"{stage}@{recipe_name} starts from {init}, which this run was not given: imported "
                             "models start plain runs (`gemctl train`), not sweep points")
        manifest = upstream["imported"]["summary"]
        init_dir = Path(upstream["imported"]["dir"])
        parent = {"run_id": manifest.get("mlflow_run_id", ""), "model_id": manifest.get("model_id"),
                  "checkpoint": str(init_dir), "tracking_uri": manifest.get("tracking_uri")}
    elif stage != "stage1" and init == "previous":
        prev = previous_stage(stage)
        summary = upstream[prev]["summary"]
        init_dir = Path(upstream[prev]["dir"]) / "model"
        if not summary or not init_dir.is_dir():
            raise InputError(f"{stage}@{recipe_name} starts from {prev}'s checkpoint, which does not exist: "
                             f"run `gemctl train {stage} --recipe {recipe_name}` to build it first")
        parent = {"run_id": summary.get("mlflow_run_id", ""), "model_id": summary.get("model_id"),
                  "checkpoint": str(init_dir), "tracking_uri": summary.get("tracking_uri")}
    digests = {name: entry["digest"] for name, entry in sorted(upstream.items())}
    return StageInputs(data_dir=data_dir, data=data, init_dir=init_dir, parent=parent, digests=digests)


def work_dir(parent_dir: Path, recipe: Recipe, stage: str, inputs: StageInputs) -> Path:
    """The stage's resume state (checkpoints, MLflow run id): one folder per stage identity."""
    return parent_dir / f"{stage}-{stage_key(recipe, stage, inputs.digests)}"


def run_stage(root: str, recipe_name: str, stage: str, should_stop: Callable[[], bool] | None = None) -> dict:
    """Run `stage` of recipe `recipe_name` in project `root`. Returns the stage summary (status "preempted" if it
    checkpointed on request and must be run again to finish)."""
    quiet_libraries()
    project = Project(Path(root))
    recipe = from_params(project.params_file(recipe_name))
    out_dir = project.stage_dir(recipe_name, stage)

    if stage == "data":
        from gem_stages.data.generate import prepare_dataset

        from .depth_stage import labelling_counts, with_labelled_depth
        from .tracking import StageRun

        with StageRun(project, recipe, stage) as run:
            manifest = prepare_dataset(with_labelled_depth(project, recipe_name, recipe.data), out_dir)
            summary = {"stage": stage, "recipe": recipe.name, "recipe_hash": recipe.content_hash,
                       "mlflow_run_id": run.run_id, "tracking_uri": project.tracking_uri,
                       "digest": manifest.get("digest"),
                       "counts": {**manifest.get("counts", {}), **labelling_counts(project, recipe_name)}}
            outcome.write_summary(out_dir, summary)
            run.log_dataset(out_dir, dataset_name(recipe, recipe_name))  # hashes the folder: the summary is in it
            run.log_metrics(data_count_metrics(summary["counts"]), step=0)  # records, skipped (by reason), samples
        return summary

    inputs = stage_inputs(recipe, recipe_name, stage, upstream_outputs(project, recipe, recipe_name, stage))
    return train_with_lineage(project, recipe, stage, inputs, out_dir=out_dir,
                              work_dir=work_dir(project.resume_dir(recipe_name), recipe, stage, inputs),
                              should_stop=should_stop)


def data_count_metrics(counts: dict) -> dict[str, float]:
    """The data stage's counts as MLflow metrics: data/records, data/skipped, data/skipped/<reason>, ..."""
    flat = {k: v for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    flat.update({f"skipped/{reason}": n for reason, n in (counts.get("skipped_by_reason") or {}).items()})
    return {f"data/{k}": float(v) for k, v in flat.items()}


def train_with_lineage(project: Project, recipe: Recipe, stage: str, inputs: StageInputs, *, out_dir: Path,
                       work_dir: Path, should_stop: Callable[[], bool] | None = None, tags: dict | None = None,
                       record: dict | None = None, register: bool = True) -> dict:
    """The training stage program inside one MLflow run; resume state (and the run id) live in work_dir.
    `record` adds fields to the summary; `register` adds the checkpoint to the model registry too."""
    from gem_stages.train import train_stage

    from .tracking import StageRun

    stage_cfg = getattr(recipe.stages, stage)
    train = partial(train_stage, stage, model_cfg=recipe.model, stage_cfg=stage_cfg, runtime=recipe.runtime,
                    seed=recipe.seed, data_dir=inputs.data_dir, init_dir=inputs.init_dir, out_dir=out_dir,
                    work_dir=work_dir, should_stop=should_stop)
    if int(os.environ.get("RANK", "0")) != 0:
        # other ranks of a multi-process job train alongside rank 0; lineage and the checkpoint are rank 0's
        return train(tracker=None)
    with StageRun(project, recipe, stage, data=inputs.data, parent=inputs.parent, work_dir=work_dir,
                  tags=tags) as run:
        summary = train(tracker=run)
        if summary["status"] == "preempted":
            run.preempted = True
            return summary
        summary.update(recipe=recipe.name, recipe_hash=recipe.content_hash, mlflow_run_id=run.run_id,
                       tracking_uri=project.tracking_uri, **(record or {}))
        # model_id is written last: a summary with it means training and lineage both completed
        summary["model_id"] = run.log_checkpoint((out_dir / "model").resolve(), summary["step"], register=register)
        outcome.write_summary(out_dir, summary)
    shutil.rmtree(work_dir, ignore_errors=True)
    return summary


def job_outcome(run: Callable[[], dict]) -> StageOutcome:
    """A stage job's result, whatever the executor: the summary as a StageOutcome, and a user input error as one
    (one line for the launcher to print, exit 2) rather than raised as a traceback."""
    try:
        summary = run()
    except InputError as e:
        return StageOutcome("input_error", message=str(e))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return StageOutcome("no_space", message=f"no space left on the filesystem of {e.filename or 'the output'}: "
                            "free some and run again (complete checkpoints were kept: it resumes from the newest)")
    return StageOutcome(summary.get("status", "completed"), summary)


def stage_job(root: str, recipe_name: str, stage: str) -> StageOutcome:
    """What a launched job runs (any executor): run_stage with the launcher's preemption flag."""
    from .launch import should_stop

    return job_outcome(partial(run_stage, root, recipe_name, stage, should_stop=should_stop))


def job_resources(recipe: Recipe, stage: str) -> Resources:
    """What the job of `stage` asks the cluster for: the stage's resources, except that data preparation is one
    CPU process (it must not hold, or multiply over, the training allocation) and the label_depth stage's jobs
    are depth_stage.shard_resources."""
    from dataclasses import replace

    from .depth_stage import STAGE as LABEL_DEPTH
    from .depth_stage import shard_resources

    if stage == LABEL_DEPTH:
        return shard_resources(recipe)
    resources = recipe.resources_for(stage)
    return replace(resources, nodes=1, gpus_per_node=0, tasks_per_node=None) if stage == "data" else resources


def launch_stage(project: Project, recipe_name: str, stage: str, on_update=None) -> tuple[int, str]:
    """`gemctl stage run`: run the stage as a job on $GEMCTL_EXECUTOR and block until it ends. Returns the exit
    code and what to print (empty when the job's own log said it). A failure leaves its error file (read by
    pipeline.reproduce); a job that died without a result (killed, out of memory, node lost) has its MLflow run
    closed FAILED here rather than left RUNNING."""
    import uuid

    from .launch import kind_from_env, launch
    from .tracking import LAUNCH_ENV, close_interrupted

    kind = kind_from_env()
    recipe = from_params(project.params_file(recipe_name))
    resources = job_resources(recipe, stage)
    recipe_dir = project.recipe_dir(recipe_name)
    os.environ[LAUNCH_ENV] = launch_id = uuid.uuid4().hex  # the job tags its MLflow run with it
    try:
        result = launch(partial(stage_job, str(project.root), recipe_name, stage), kind=kind, resources=resources,
                        job_dir=project.jobs_dir / recipe_name / stage, name=f"{stage}@{recipe_name}",
                        on_update=on_update if kind != "debug" else None, project=project.root,
                        tags={"stage": stage, "point": recipe_name, "run": f"{stage}@{recipe_name}"})
    except InputError as e:  # refused at submission (resources, SLURM unreachable)
        outcome.write_error(recipe_dir, stage, str(e), 2)
        return 2, str(e)
    except KeyboardInterrupt:  # a debug job (in this process: no checkpoint), or a third Ctrl-C
        outcome.write_error(recipe_dir, stage, "interrupted", CANCELLED_EXIT)
        return CANCELLED_EXIT, "interrupted"
    if result.ok and result.value.status in ("input_error", "no_space"):
        code = 2 if result.value.status == "input_error" else 1
        outcome.write_error(recipe_dir, stage, result.value.message, code)
        return code, result.value.message
    if result.ok:
        return 0, ""
    work = _work_dir(project, recipe, recipe_name, stage)
    if result.state == "CANCELLED":  # `gemctl cancel`, or Ctrl-C here: not a failure, nothing to show of its log
        why = f"job {result.job_id} cancelled"
        # a job stopped at once left its run RUNNING (one that reached a step boundary ended it KILLED)
        close_interrupted(project, launch_id, [work / "mlflow_run_id"] if work else [], why, status="KILLED")
        message = f"cancelled (job {result.job_id}); {_kept(work)}"
        outcome.write_error(recipe_dir, stage, message, CANCELLED_EXIT)
        return CANCELLED_EXIT, message
    code = result.exit_code or 1
    outcome.write_error(recipe_dir, stage, f"job {result.job_id} {result.state}", code)
    why = f"job {result.job_id} ended {result.state} (exit {code})"
    close_interrupted(project, launch_id, [work / "mlflow_run_id"] if work else [], why)
    tail = result.log_tail(20) or (result.error or "")
    return code, f"{why}; last lines of its log:\n{tail}\nfull log: {result.stdout}"




def _work_dir(project: Project, recipe: Recipe, recipe_name: str, stage: str) -> Path | None:
    """The stage's resume state (its checkpoints and MLflow run id); None for the data stage or when its inputs
    are gone."""
    if stage == "data":
        return None
    try:
        inputs = stage_inputs(recipe, recipe_name, stage, upstream_outputs(project, recipe, recipe_name, stage))
    except InputError:
        return None
    return work_dir(project.resume_dir(recipe_name), recipe, stage, inputs)


def _kept(work: Path | None) -> str:
    """What a stopped stage leaves to resume from. A checkpoint cut short by a hard stop is removed (the trainer
    would remove it on resume anyway): only complete ones remain."""
    if work is None or not work.is_dir():
        return "nothing to resume from"
    for partial_ckpt in work.glob("ckpt-*.tmp"):
        shutil.rmtree(partial_ckpt, ignore_errors=True)
    # ckpt-<step>, zero-padded: the name sorts and tells the step (reading it would import torch here)
    done = sorted(p.name for p in work.glob("ckpt-*") if p.is_dir() and p.name[5:].isdigit())
    if not done:
        return "stopped before its first checkpoint: it starts over when run again"
    return f"checkpoint of step {int(done[-1][5:])} kept: running it again resumes from there"
