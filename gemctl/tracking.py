"""MLflow lineage: one run per stage execution, linking recipe, code, data digest, parent checkpoint and the result.

    run (stage3@tiny·<recipe hash>)
      params   flattened resolved recipe
      tags     gemctl.stage / recipe / recipe_hash / git_commit / git_dirty / git_diff_digest / versions;
               MLflow's own mlflow.source.* (what ran, the git commit and remote) that its UI shows
      inputs   dataset (name, DVC digest: the data run logs the same one); the parent stage's LoggedModel as an
               input model (also as tags, with the parent run and checkpoint)
      metrics  loss parts per step (also the stage's loss curve file, a DVC plot)
      outputs  LoggedModel of the stage's checkpoint (registered as <recipe>-<stage>, the version tagged with the
               stage, recipe, its hash and the commit); the checkpoint folder's model card (model_card.py)

The default store is embedded in the project (sqlite, artifacts beside it); $GEMCTL_TRACKING_URI or --tracking-uri
points elsewhere.
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .project import Project
from .schema import flatten

EXPERIMENT = "gemctl"
MLFLOW_NOTE = "mlflow.note.content"  # a run's or logged model's description in MLflow's UI


def setup(project: Project) -> str:
    """Point mlflow at the project's store; create the experiment with its artifact location; deliver what stages
    spooled while the store was away (tracking_spool). Returns the experiment's id."""
    from .tracking_spool import deliver_all

    exp = _setup(project)
    deliver_all(project, quiet=True)
    return exp


def _setup(project: Project) -> str:
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
    return exp.experiment_id if exp is not None else ensure_experiment(uri)


def ensure_experiment(uri: str, name: str = EXPERIMENT) -> str:
    """The id of experiment `name` in the store at `uri`, created if missing. Artifacts live with their store:
    beside its database (the project's own: mlruns/artifacts); a server's store chooses its own."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if (exp := client.get_experiment_by_name(name)) is not None:
        return exp.experiment_id
    artifacts = _artifacts_beside(uri) if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def _artifacts_beside(sqlite_uri: str) -> str:
    return (Path(sqlite_uri.split("sqlite:///", 1)[1]).parent / "artifacts").resolve().as_uri()


def run_name(stage: str, recipe) -> str:
    """stage@recipe·<first 8 of the resolved recipe's hash>: two runs of a stage with other settings differ."""
    return f"{stage}@{recipe.name}\u00b7{recipe.content_hash[:8]}"


def dvc_digest(root: Path, path: Path) -> str:
    """The md5 DVC records in dvc.lock for a file or folder output (a folder's ends in .dir), computed as DVC does
    (its .dvcignore applied), before DVC itself hashes it: the stage that writes the output logs it."""
    import tempfile

    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(Path(path).resolve()), fs, "md5", dry_run=True,
                          ignore=DvcIgnoreFilter(fs, str(Path(root).resolve())))
    return obj.hash_info.value


def loss_curve_file(out_dir: Path) -> Path:
    """A stage's loss curve: beside its output folder, not in it (runs/<recipe>/<stage>.loss.csv), so that dvc.yaml
    declares it as the stage's plot (a DVC output may not lie inside another)."""
    return out_dir.with_name(f"{out_dir.name}.loss.csv")


def write_loss_curve(points: Path, out: Path) -> None:
    """The logged points as CSV (step, then each logged value): a resumed run logs some steps twice, the later
    value counts."""
    rows: dict[int, dict] = {}
    for line in points.read_text().splitlines():
        point = json.loads(line)
        rows.setdefault(point["step"], {}).update(point)
    keys = ["step", *sorted({k for r in rows.values() for k in r} - {"step"})]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    atomic_write_text(out, text.getvalue())


def code_version(root: Path) -> dict[str, str]:
    """git commit and whether code (not outputs or the lock file) differs from it. A job reads what its launcher
    recorded at submit time (pin_code_version): the tree may have moved on since, the job's snapshot has not."""
    if os.environ.get("GEMCTL_GIT_COMMIT"):
        pinned = {key: os.environ[env] for key, env in _PINNED.items() if os.environ.get(env)}
        return {"gemctl.git_dirty": "false", **pinned, "gemctl.code_snapshot": os.environ.get("GEMCTL_CODE", "")}

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = git("status", "--porcelain", "--", *CODE_PATHS)
    version = {"gemctl.git_commit": commit, "gemctl.git_dirty": "true" if dirty else "false"}
    if remote := git("remote", "get-url", "origin"):
        version["gemctl.git_remote"] = remote
    if dirty:
        version["gemctl.git_diff_digest"] = _diff_digest(root)
    return version


# what counts as code: a change elsewhere (outputs, dvc.lock, notes) does not make a run's code dirty
CODE_PATHS = ("gemctl", "models", "stages", "recipes", "dvc.yaml", "pyproject.toml")


def _diff_digest(root: Path) -> str:
    """sha256 (16 hex) of the uncommitted code changes: the diff against HEAD and the new files' names and
    contents. Two dirty runs with the same commit and digest ran the same code."""
    h = hashlib.sha256()
    diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", *CODE_PATHS], cwd=root, capture_output=True)
    h.update(diff.stdout)
    new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z", "--", *CODE_PATHS], cwd=root,
                         capture_output=True).stdout.split(b"\0")
    for name in sorted(n for n in new if n):
        h.update(name + b"\0")
        with contextlib.suppress(OSError):
            h.update((root / name.decode()).read_bytes())
    return h.hexdigest()[:16]


_PINNED = {"gemctl.git_commit": "GEMCTL_GIT_COMMIT", "gemctl.git_dirty": "GEMCTL_GIT_DIRTY",
           "gemctl.git_diff_digest": "GEMCTL_GIT_DIFF", "gemctl.git_remote": "GEMCTL_GIT_REMOTE"}


def pin_code_version(root: Path) -> None:
    """Record the code version now, in the environment jobs inherit (call before submitting)."""
    if not os.environ.get("GEMCTL_GIT_COMMIT"):
        for key, value in code_version(root).items():
            os.environ[_PINNED[key]] = value


def source_tags(version: dict[str, str], entry: str) -> dict[str, str]:
    """MLflow's standard source fields, which its UI shows on every run: what ran (`entry`, a gemctl command), the
    git commit and the repository's remote (when it has one)."""
    tags = {"mlflow.source.name": entry, "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": version["gemctl.git_commit"]}
    if version.get("gemctl.git_remote"):
        tags["mlflow.source.git.repoURL"] = version["gemctl.git_remote"]
    return tags


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
        # every logged point, kept with the resume state (a requeued job appends): the stage's loss curve file
        self.loss_log = work_dir / "losses.jsonl" if work_dir is not None else None
        self.version = code_version(project.root)
        self.run_id: str | None = None
        self._buffer: list[Any] = []
        self._points: list[str] = []  # lines for loss_log not yet written
        self._last_flush = 0.0
        self.preempted = False
        self.outage = None  # tracking_spool.Outage: logging past a store outage, once the run exists

    def __enter__(self) -> StageRun:
        import mlflow

        from .tracking_spool import Outage

        exp = setup(self.project)
        launch = {LAUNCH_TAG: os.environ[LAUNCH_ENV]} if os.environ.get(LAUNCH_ENV) else {}
        resume_id = self.run_id_file.read_text().strip() if self.run_id_file and self.run_id_file.is_file() else None
        if resume_id and _is_live(resume_id):
            _close_if_running(resume_id, "the job running it ended without a result; found when the stage ran again")
            run = mlflow.start_run(run_id=resume_id)
            mlflow.set_tags(launch)
        else:
            # the launch tag is written with the run: its launcher finds it even if the job dies the next moment
            run = mlflow.start_run(experiment_id=exp, run_name=run_name(self.stage, self.recipe),
                                   tags={**source_tags(self.version, self._entry()), **self.tags, **launch})
        self.run_id = run.info.run_id
        if self.run_id_file is not None:
            self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_id_file, self.run_id)
        if run.info.run_id != resume_id:
            self._log_start()
        self.outage = Outage(self.project, self.project.tracking_uri, run_id=self.run_id)
        return self

    def _entry(self) -> str:
        """The command that made this run (MLflow's source name)."""
        if "gemctl.sweep" in self.tags:
            return f"gemctl sweep {self.tags['gemctl.sweep']}"
        return f"gemctl stage run {self.stage} --recipe {self.recipe.name}"

    def _about(self) -> str:
        return f"{self.stage} of recipe {self.recipe.name} (resolved recipe {self.recipe.content_hash})"

    def _log_start(self) -> None:
        import mlflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH as per_batch

        params = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(self.recipe.to_dict()).items()}
        items = list(params.items())
        for i in range(0, len(items), per_batch):
            mlflow.log_params(dict(items[i:i + per_batch]))
        start = (f"starts from {self.parent['checkpoint']}" if self.parent
                 else "prepares the data" if self.stage == "data" else "starts from the base weights")
        mlflow.set_tags({
            MLFLOW_NOTE: f"{self._about()}; {start}. `gemctl lineage {self.run_id[:12]}` shows its ancestry.",
            "gemctl.stage": self.stage,
            "gemctl.recipe": self.recipe.name,
            "gemctl.recipe_hash": self.recipe.content_hash,
            "gemctl.executor": os.environ.get("GEMCTL_EXECUTOR", "local"),
            **self.version,
            **package_versions(),
        })
        if self.data:
            from .tracking_spool import meta_dataset

            mlflow.log_input(meta_dataset(self.data["uri"], self.data["name"], self.data["digest"]),
                             context="training")
        if self.parent:
            mlflow.set_tags({"gemctl.parent_run_id": self.parent["run_id"],
                             "gemctl.parent_model_id": self.parent.get("model_id") or "",
                             "gemctl.parent_checkpoint": self.parent["checkpoint"]})
            elsewhere = self.parent.get("tracking_uri") not in (None, self.project.tracking_uri)
            if elsewhere:  # the parent was logged to another store (--tracking-uri): its ids mean nothing here
                mlflow.set_tag("gemctl.parent_tracking_uri", self.parent["tracking_uri"])
            elif self.parent.get("model_id"):
                # the parent's checkpoint as an input model: the UI links this run to it, and the parent's model
                # page lists this run. mlflow.log_inputs(models=...) refuses it off Databricks; the client call
                # works on a database store and through a tracking server alike (MLflow 3.17).
                from mlflow import MlflowClient
                from mlflow.entities import LoggedModelInput

                MlflowClient().log_inputs(self.run_id, models=[LoggedModelInput(self.parent["model_id"])])
                link_back(self.parent["model_id"])


    def log_dataset(self, data_dir: Path, name: str) -> str:
        """The data stage: its prepared dataset as this run's output (an input in MLflow's terms, with context
        "output": runs have no dataset outputs), under the name and digest the training stages log it with: the
        digest DVC records for the folder in dvc.lock. Returns that digest."""
        digest = dvc_digest(self.project.root, data_dir)
        self.outage.do({"op": "input", "source": str(data_dir), "name": name, "digest": digest, "context": "output"})
        self.outage.do({"op": "tags", "tags": {"gemctl.data_digest": digest}})
        return digest

    # Tracker protocol ------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if self.loss_log is not None:
            self._points.append(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}))
        # sqlite commits are ~10 ms each: batch them, but keep the UI at most a few seconds behind
        if len(self._buffer) >= 200 or time.monotonic() - self._last_flush > 5:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self.run_id:
            self.outage.metrics(self._buffer)  # or its spool, while the store is away
            self._buffer = []
        if self._points and self.loss_log is not None:
            with open(self.loss_log, "a") as f:
                f.write("\n".join(self._points) + "\n")
            self._points = []
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------------------------------------------------------
    def log_checkpoint(self, checkpoint: Path, step: int, register: bool = True) -> str | None:
        """Record the stage's checkpoint as a LoggedModel output (external: weights stay where DVC keeps them),
        (register) as a new version of the registered model <recipe>-<stage>, and write its model card. Returns
        the logged model's id; None while the store is away (the record is spooled: tracking_spool)."""
        name = f"{self.recipe.name}-{self.stage}"
        tags = {"gemctl.checkpoint": str(checkpoint), "gemctl.stage": self.stage,
                "gemctl.recipe": self.recipe.name, "gemctl.recipe_hash": self.recipe.content_hash,
                # the model page's "Logged from" and description (else: submitit's _submit.py, and none)
                **source_tags(self.version, self._entry()),
                MLFLOW_NOTE: f"The checkpoint of {self._about()}: {checkpoint} (weights stay there, tracked by DVC)."}
        self.flush()
        if self.loss_log is not None and self.loss_log.is_file():
            write_loss_curve(self.loss_log, loss_curve_file(checkpoint.parent))
        # sweep points: logged models of their runs, not versions of the pipeline's model
        registry = self._registry() if register else None
        return self.outage.do({"op": "model", "name": name, "tags": tags, "step": step,
                               "checkpoint": str(checkpoint), "registry": registry})

    def _registry(self) -> dict:
        """The registered model's description and its new version's tags and description, so that versions tell
        apart in the registry's UI (tracking_spool._model registers it and links it to its logged model both ways,
        as mlflow.register_model does, less its printing to stderr on every call)."""
        commit = self.version["gemctl.git_commit"]
        dirty = self.version.get("gemctl.git_dirty") == "true"
        return {"description": f"GEM checkpoints of stage {self.stage} of recipe {self.recipe.name}, one version "
                               "per run that trained it (gemctl).",
                "version_tags": {"gemctl.stage": self.stage, "gemctl.recipe": self.recipe.name,
                                 "gemctl.recipe_hash": self.recipe.content_hash, "gemctl.git_commit": commit,
                                 "gemctl.run_name": run_name(self.stage, self.recipe)},
                "version_description": f"{self._about()}, code {commit[:12]}"
                                       f"{' with uncommitted changes' if dirty else ''}; trained by run {self.run_id}."}

    def __exit__(self, exc_type, exc, tb) -> bool:
        import mlflow

        self.flush()
        if exc_type is None:
            # a preempted run is reopened (RUNNING again) by the requeued job that resumes it
            self.outage.end("KILLED" if self.preempted else "FINISHED")
        elif issubclass(exc_type, InputError):
            mlflow.end_run("FAILED")
            mlflow.delete_run(self.run_id)
            if self.run_id_file is not None:  # the run is deleted: a fixed re-run starts a new one
                self.run_id_file.unlink(missing_ok=True)
        else:
            self.outage.end("FAILED")
        return False


# --- evaluation ------------------------------------------------------------------------------------------------------
USED_BY = "Starting point of:"
_MAX_LINKS = 40


def link_back(model_id: str) -> None:
    """The way back from a parent checkpoint to the runs that started from it: MLflow's logged-model page lists
    only the runs that made or scored a model, not those that took it as input. Its description gets links to them
    (found by their gemctl.parent_model_id tag, so that two children writing at once both end up listed, give or
    take a race that the next child repairs)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    model = client.get_logged_model(model_id)
    children = client.search_runs([model.experiment_id], filter_string=f"tags.`gemctl.parent_model_id` = '{model_id}'",
                                  order_by=["attributes.start_time ASC"])
    links = [f"[{r.info.run_name}](#/experiments/{r.info.experiment_id}/runs/{r.info.run_id})" for r in children]
    if len(links) > _MAX_LINKS:
        links = [*links[:_MAX_LINKS], f"and {len(links) - _MAX_LINKS} more (`gemctl lineage {model_id} --down`)"]
    own = model.tags.get(MLFLOW_NOTE, "").split(USED_BY)[0].rstrip()
    client.set_logged_model_tags(model_id, {MLFLOW_NOTE: f"{own}\n\n{USED_BY} {', '.join(links)}".lstrip()})


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
                   checkpoint: Path, model_id: str | None, plan: dict, source_run: str | None = None) -> tuple[
                       str | None, str]:
    """One MLflow run per evaluation: the benchmark as an evaluation dataset input (with its digest), the scores
    as metrics logged on the checkpoint's LoggedModel (when known), results.json and predictions.jsonl as
    artifacts (and a depth benchmark's depth_sheet.png, a closed loop's rollout videos), then the checkpoint's
    model card again. While the store is away (or its artifacts' disk is full) the rest is spooled (tracking_spool).
    Returns the run id (None until a spooled run is delivered) and the spool key the run is tagged with."""
    from .tracking_spool import Outage, short_budget
    from .tracking_store import install

    install()
    version = code_version(project.root)
    entry = f"gemctl stage eval {benchmark} --recipe {recipe}" if recipe else f"gemctl eval {benchmark} --ckpt"
    tags = {"gemctl.eval.benchmark": benchmark, "gemctl.checkpoint": str(checkpoint),
            "gemctl.eval.metric": str(results.get("metric", "")), **version, **package_versions(),
            **source_tags(version, entry)}
    if recipe:
        tags["gemctl.recipe"] = recipe
    if not model_id and (Path(checkpoint).parent / "summary.json").is_file():
        # a stage whose logged model was spooled: delivered since, found by its checkpoint
        with contextlib.suppress(Exception), short_budget():
            model_id = find_logged_model(project, Path(checkpoint))
    if model_id:
        tags["gemctl.model_id"] = model_id
    if source_run:
        tags["gemctl.checkpoint_run_id"] = source_run
    if os.environ.get(LAUNCH_ENV):
        tags[LAUNCH_TAG] = os.environ[LAUNCH_ENV]
    with contextlib.suppress(Exception):  # what MLflow's start_run adds (its git fields: of the entry script)
        tags["mlflow.user"] = getpass.getuser()

    outage = Outage(project, project.tracking_uri, doing="the evaluation")
    outage.create_run(EXPERIMENT, f"eval {benchmark}@{recipe}" if recipe else f"eval {benchmark}", tags)
    outage.do({"op": "params", "params": {k: str(v) for k, v in plan.items() if k not in ("path",)}})
    dataset = None
    if plan.get("path"):
        dataset = {"source": (project.root / plan["path"]).resolve().as_uri(), "name": benchmark,
                   "digest": plan.get("data_digest") or None}
        outage.do({"op": "input", **dataset, "context": "evaluation"})
    key = _metric_key(benchmark)
    metrics = {f"{key}/{_metric_key(str(results.get('metric', 'score')))}": float(results["overall"])}
    metrics |= {f"{key}/{_metric_key(c)}": float(v) for c, v in results.get("categories", {}).items()}
    counts = results.get("counts", {})
    metrics |= {f"{key}/items": float(counts.get("items", 0)),
                f"{key}/unparsable": float(counts.get("unparsable", 0)),
                f"{key}/undecodable": float(counts.get("undecodable", 0))}
    metrics |= {f"{key}/{k}": float(v) for k, v in (results.get("depth") or {}).items()
                if k != "scored" and v is not None}  # AbsRel, delta1, RMSE of depth items
    now = int(time.time() * 1000)
    outage.do({"op": "metrics", "metrics": [[k, v, now, 0] for k, v in metrics.items()], "model_id": model_id,
               "dataset": dataset})
    for f in ("results.json", "predictions.jsonl", "depth_sheet.png"):
        if (out_dir / f).is_file():
            outage.do({"op": "artifacts", "src": str(out_dir / f), "path": None})
    if (out_dir / "videos").is_dir():  # closed loop: rollout videos of the first episodes
        outage.do({"op": "artifacts", "src": str(out_dir / "videos"), "path": "videos"})
    outage.end("FINISHED")
    if model_id and (Path(checkpoint).parent / "summary.json").is_file():  # a stage's checkpoint: its card
        outage.do({"op": "card", "dir": str(Path(checkpoint).parent)})
    # the same scores as DVC metrics (dvc.yaml's eval stage declares the file; not cached: git keeps it, so that
    # `dvc metrics diff` compares commits)
    atomic_write_text(metrics_file(out_dir), json.dumps(
        {k.split("/", 1)[1]: v for k, v in sorted(metrics.items())}, indent=2) + "\n")
    return outage.run_id, outage.key


def metrics_file(out_dir: Path) -> Path:
    """An evaluation's scores for DVC: beside its output folder (runs/<recipe>/eval/<benchmark>.metrics.json), as
    dvc.yaml's eval stage declares it (a DVC output may not lie inside another)."""
    return out_dir.with_name(f"{out_dir.name}.metrics.json")
