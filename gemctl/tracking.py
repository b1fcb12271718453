"""MLflow lineage: one run per stage execution, linking recipe, code, data digest, parent checkpoint and the result.

    run (stage3@tiny)
      params   flattened resolved recipe
      tags     gemctl.stage / recipe / recipe_hash / git_commit / git_dirty / versions
      inputs   dataset (name, DVC digest); the parent stage's run and LoggedModel as tags
      metrics  loss parts per step
      outputs  LoggedModel of the stage's checkpoint (registered as <recipe>-<stage>)

The default store is embedded in the project (sqlite, artifacts beside it); $GEMCTL_TRACKING_URI or --tracking-uri
points elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .project import Project
from .schema import flatten

EXPERIMENT = "gemctl"
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LEN = 6000


def setup(project: Project) -> str:
    """Point mlflow at the project's store; create the experiment with its artifact location. Returns its id."""
    import mlflow

    from .tracking_store import install

    logging.getLogger("alembic").setLevel(logging.WARNING)
    install()  # sqlite stores: bounded retries while another writer holds the database; tables created once
    uri = project.tracking_uri
    if uri.startswith("sqlite:"):
        Path(uri.split("sqlite:///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if uri.startswith("sqlite:"):
        # sweep points write concurrently: WAL lets readers and one writer proceed together (persistent per db)
        import sqlite3

        with contextlib.closing(sqlite3.connect(uri.split("sqlite:///", 1)[1], timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    if exp is not None:
        return exp.experiment_id
    # artifacts live with their store: beside its database (the project's own: mlruns/artifacts); a server's
    # store chooses its own
    artifacts = _artifacts_beside(uri) if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    except Exception:  # another process created it first
        return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


def _artifacts_beside(sqlite_uri: str) -> str:
    return (Path(sqlite_uri.split("sqlite:///", 1)[1]).parent / "artifacts").resolve().as_uri()


def code_version(root: Path) -> dict[str, str]:
    """git commit and whether code (not outputs or the lock file) differs from it. A job reads what its launcher
    recorded at submit time (pin_code_version): the tree may have moved on since, the job's snapshot has not."""
    if os.environ.get("GEMCTL_GIT_COMMIT"):
        return {"gemctl.git_commit": os.environ["GEMCTL_GIT_COMMIT"],
                "gemctl.git_dirty": os.environ.get("GEMCTL_GIT_DIRTY", "false"),
                "gemctl.code_snapshot": os.environ.get("GEMCTL_CODE", "")}

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = git("status", "--porcelain", "--", "gemctl", "models", "stages", "recipes", "dvc.yaml", "pyproject.toml")
    return {"gemctl.git_commit": commit, "gemctl.git_dirty": "true" if dirty else "false"}


def pin_code_version(root: Path) -> None:
    """Record the code version now, in the environment jobs inherit (call before submitting)."""
    if not os.environ.get("GEMCTL_GIT_COMMIT"):
        v = code_version(root)
        os.environ["GEMCTL_GIT_COMMIT"] = v["gemctl.git_commit"]
        os.environ["GEMCTL_GIT_DIRTY"] = v["gemctl.git_dirty"]


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("gemctl", "torch", "transformers", "diffusers", "accelerate", "dvc", "mlflow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[f"gemctl.version.{pkg}"] = importlib.metadata.version(pkg)
    return out


def _is_live(run_id: str) -> bool:
    """A run that can be continued: it exists and was not deleted (an input error deletes its run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


# A launch's id, in the environment of its job ($GEMCTL_LAUNCH) and on the MLflow run the job opens (tag)
LAUNCH_ENV = "GEMCTL_LAUNCH"
LAUNCH_TAG = "gemctl.launch"
INTERRUPTED_TAG = "gemctl.interrupted"  # why a run ended without a result (its job was killed, crashed...)


def _close_if_running(run_id: str, why: str, status: str = "FAILED") -> bool:
    """End a run left RUNNING by a job that died without closing it: FAILED (KILLED for a job the user stopped),
    with the reason as a tag."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        info = client.get_run(run_id).info
    except MlflowException:  # no such run
        return False
    if info.lifecycle_stage != "active" or info.status != "RUNNING":  # deleted (an input error), or ended
        return False
    client.set_tag(run_id, INTERRUPTED_TAG, why)
    client.set_terminated(run_id, status)
    return True


def close_interrupted(project: Project, launch_id: str, run_id_files: list[Path], why: str,
                      status: str = "FAILED") -> list[str]:
    """After the jobs of a launch ended, some without a result: close the MLflow runs they left RUNNING (found by
    the launch's tag, and by the run ids in their resume state). Returns their ids."""
    import mlflow

    setup(project)
    found = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.`{LAUNCH_TAG}` = '{launch_id}' and attributes.status = 'RUNNING'")
    ids = [r.info.run_id for r in found]
    ids += [f.read_text().strip() for f in run_id_files if f.is_file()]
    return [i for i in dict.fromkeys(ids) if _close_if_running(i, why, status)]


class StageRun:
    """Context manager around one stage execution. Also the stage's Tracker (log_metrics).

    On a user input error the run is deleted (no partial lineage); on an exception it ends FAILED; on preemption
    it ends KILLED and the requeued job continues the same run. A job killed outright (SIGKILL, OOM, lost node)
    leaves its run RUNNING: its launcher closes it (close_interrupted), and failing that the next run of the stage
    does, before it continues the run from the stage's resume state. The run id lives in `work_dir` (the resume
    state) from the moment the run exists.
    """

    def __init__(self, project: Project, recipe, stage: str, *, data: dict | None = None,
                 parent: dict | None = None, work_dir: Path | None = None, tags: dict | None = None):
        self.project, self.recipe, self.stage = project, recipe, stage
        self.tags = tags or {}  # extra tags, e.g. mlflow.parentRunId and gemctl.sweep for a sweep point
        self.data, self.parent = data, parent
        self.run_id_file = work_dir / "mlflow_run_id" if work_dir is not None else None
        self.run_id: str | None = None
        self._buffer: list[Any] = []
        self._last_flush = 0.0
        self.preempted = False

    def __enter__(self) -> StageRun:
        import mlflow

        exp = setup(self.project)
        launch = {LAUNCH_TAG: os.environ[LAUNCH_ENV]} if os.environ.get(LAUNCH_ENV) else {}
        resume_id = self.run_id_file.read_text().strip() if self.run_id_file and self.run_id_file.is_file() else None
        if resume_id and _is_live(resume_id):
            _close_if_running(resume_id, "the job running it ended without a result; found when the stage ran again")
            run = mlflow.start_run(run_id=resume_id)
            mlflow.set_tags(launch)
        else:
            # the launch tag is written with the run: its launcher finds it even if the job dies the next moment
            run = mlflow.start_run(experiment_id=exp, run_name=f"{self.stage}@{self.recipe.name}",
                                   tags={**self.tags, **launch})
        self.run_id = run.info.run_id
        if self.run_id_file is not None:
            self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_id_file, self.run_id)
        if run.info.run_id != resume_id:
            self._log_start()
        return self

    def _log_start(self) -> None:
        import mlflow

        params = {k: str(v)[:_MAX_PARAM_LEN] for k, v in flatten(self.recipe.to_dict()).items()}
        items = list(params.items())
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            mlflow.log_params(dict(items[i:i + _MAX_PARAMS_PER_BATCH]))
        mlflow.set_tags({
            "gemctl.stage": self.stage,
            "gemctl.recipe": self.recipe.name,
            "gemctl.recipe_hash": self.recipe.content_hash,
            "gemctl.executor": os.environ.get("GEMCTL_EXECUTOR", "local"),
            **code_version(self.project.root),
            **package_versions(),
        })
        if self.data:
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(self.data["uri"])
            ds = MetaDataset(source, name=self.data["name"], digest=self.data["digest"])
            mlflow.log_input(ds, context="training")
        if self.parent:
            # Model inputs (log_inputs(models=...)) are Databricks-only in MLflow 3: the link is kept as tags.
            mlflow.set_tags({"gemctl.parent_run_id": self.parent["run_id"],
                             "gemctl.parent_model_id": self.parent.get("model_id") or "",
                             "gemctl.parent_checkpoint": self.parent["checkpoint"]})

    # Tracker protocol ------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        # sqlite commits are ~10 ms each: batch them, but keep the UI at most a few seconds behind
        if len(self._buffer) >= 200 or time.monotonic() - self._last_flush > 5:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self.run_id:
            from mlflow import MlflowClient

            MlflowClient().log_batch(self.run_id, metrics=self._buffer)
            self._buffer = []
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------------------------------------------------------
    def log_checkpoint(self, checkpoint: Path, step: int, register: bool = True) -> str:
        """Record the stage's checkpoint as a LoggedModel output (external: weights stay where DVC keeps them),
        and (register) as a new version of the registered model <recipe>-<stage>."""
        import mlflow
        from mlflow.entities import LoggedModelOutput

        name = f"{self.recipe.name}-{self.stage}"
        tags = {"gemctl.checkpoint": str(checkpoint), "gemctl.stage": self.stage,
                "gemctl.recipe": self.recipe.name, "gemctl.recipe_hash": self.recipe.content_hash}
        model = mlflow.create_external_model(name=name, source_run_id=self.run_id, tags=tags)
        mlflow.log_outputs(models=[LoggedModelOutput(model.model_id, step)])
        if not register:  # sweep points: logged models of their runs, not versions of the pipeline's model
            return model.model_id
        # the client, not mlflow.register_model: that one prints to stderr on every call
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient()
        try:
            client.create_registered_model(name)
        except MlflowException:  # registered by an earlier run: add a version
            pass
        client.create_model_version(name, source=f"models:/{model.model_id}", run_id=self.run_id,
                                    model_id=model.model_id)
        return model.model_id

    def __exit__(self, exc_type, exc, tb) -> bool:
        import mlflow

        self.flush()
        if exc_type is None:
            # a preempted run is reopened (RUNNING again) by the requeued job that resumes it
            mlflow.end_run("KILLED" if self.preempted else "FINISHED")
        elif issubclass(exc_type, InputError):
            mlflow.end_run("FAILED")
            mlflow.delete_run(self.run_id)
            if self.run_id_file is not None:  # the run is deleted: a fixed re-run starts a new one
                self.run_id_file.unlink(missing_ok=True)
        else:
            mlflow.end_run("FAILED")
        return False


# --- evaluation ------------------------------------------------------------------------------------------------------
def _metric_key(text: str) -> str:
    """A benchmark or category name as an MLflow metric key (letters, digits, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def find_logged_model(project: Project, checkpoint: Path) -> str | None:
    """The logged model a stage recorded for this checkpoint folder (the newest), or None."""
    import mlflow

    exp = setup(project)
    found = mlflow.search_logged_models(experiment_ids=[exp], output_format="list", order_by=[
        {"field_name": "creation_time", "ascending": False}],
        filter_string=f"tags.`gemctl.checkpoint` = '{checkpoint}'")
    return found[0].model_id if found else None


def log_evaluation(project: Project, *, results: dict, out_dir: Path, benchmark: str, recipe: str | None,
                   checkpoint: Path, model_id: str | None, plan: dict, source_run: str | None = None) -> str:
    """One MLflow run per evaluation: the benchmark as an evaluation dataset input (with its digest), the scores
    as metrics logged on the checkpoint's LoggedModel (when known), results.json and predictions.jsonl as
    artifacts (and a depth benchmark's depth_sheet.png, a closed loop's rollout videos). Returns the run id."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    exp = setup(project)
    tags = {"gemctl.eval.benchmark": benchmark, "gemctl.checkpoint": str(checkpoint),
            "gemctl.eval.metric": str(results.get("metric", "")), **code_version(project.root), **package_versions()}
    if recipe:
        tags["gemctl.recipe"] = recipe
    if model_id:
        tags["gemctl.model_id"] = model_id
    if source_run:
        tags["gemctl.checkpoint_run_id"] = source_run
    if os.environ.get(LAUNCH_ENV):
        tags[LAUNCH_TAG] = os.environ[LAUNCH_ENV]
    name = f"eval {benchmark}@{recipe}" if recipe else f"eval {benchmark}"
    with mlflow.start_run(experiment_id=exp, run_name=name, tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in plan.items() if k not in ("path",)})
        dataset = None
        if plan.get("path"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = resolve_dataset_source((project.root / plan["path"]).resolve().as_uri())
            dataset = MetaDataset(source, name=benchmark, digest=plan.get("data_digest") or None)
            mlflow.log_input(dataset, context="evaluation")
        key = _metric_key(benchmark)
        metrics = {f"{key}/{_metric_key(str(results.get('metric', 'score')))}": float(results["overall"])}
        metrics |= {f"{key}/{_metric_key(c)}": float(v) for c, v in results.get("categories", {}).items()}
        counts = results.get("counts", {})
        metrics |= {f"{key}/items": float(counts.get("items", 0)),
                    f"{key}/unparsable": float(counts.get("unparsable", 0)),
                    f"{key}/undecodable": float(counts.get("undecodable", 0))}
        metrics |= {f"{key}/{k}": float(v) for k, v in (results.get("depth") or {}).items()
                    if k != "scored" and v is not None}  # AbsRel, delta1, RMSE of depth items
        mlflow.log_metrics(metrics, model_id=model_id, dataset=dataset)
        for f in ("results.json", "predictions.jsonl", "depth_sheet.png"):
            if (out_dir / f).is_file():
                mlflow.log_artifact(str(out_dir / f))
        if (out_dir / "videos").is_dir():  # closed loop: rollout videos of the first episodes
            mlflow.log_artifacts(str(out_dir / "videos"), "videos")
    return run.info.run_id
