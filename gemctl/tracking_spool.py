"""When the tracking store goes away mid-stage or mid-evaluation (a server stopped, a sqlite file locked by another
process, a full disk under the artifacts), the work goes on: what it logs is kept in a spool file and delivered when
the store is back: by `gemctl sync`, by every command that opens the store (tracking.setup), and by a running stage
itself, which tries again every PROBE_S seconds.

    .gemctl/spool/<key>.jsonl         one JSON record a line, appended and fsynced before the work goes on;
                                      <key>: the run's id, or `eval-<hex>` for an evaluation whose run the store
                                      never created
      {"op": "store", "uri": ...}     the store the run lives in (first line)
      {"op": "run", "experiment", "run_name", "tags", "start_time"}
                                      create the run (an evaluation's): found again by its gemctl.record tag
      {"op": "params", "params": {...}} / {"op": "tags", "tags": {...}}
      {"op": "input", "source", "name", "digest", "context"}              a dataset input
      {"op": "metrics", "metrics": [[key, value, timestamp ms, step], ...], "model_id", "dataset"}
      {"op": "model", "name", "tags", "step", "checkpoint", "registry"}   a stage's checkpoint as a logged model,
                                      its output of the run, its version in the registry, the model card's links
      {"op": "artifacts", "files": "<key>.files/<n>", "path"}            copies (hard links) of the files to log
      {"op": "end", "status": "FINISHED", "end_time": ms}
      {"op": "card", "dir": ...}      rewrite a checkpoint's model card (an evaluation's new scores)

Delivery (`deliver`) is idempotent, record by record: a metric point is keyed by (key, step, timestamp, value) and
skipped when the store has it (MLflow would store the same point twice, and a call that timed out may have landed);
a run to create, a logged model and a model version are looked up before they are made; params and tags rewrite the
same values; artifacts overwrite the same files; a run is ended only while it is still RUNNING. The spool file goes
once everything in it is in the store; a delivery cut short leaves it whole, and the next one skips what got through.

A stage's run must exist when it starts (preflight refuses in one line when the store does not answer): its id is in
the resume state before training begins. Every store call of a stage or an evaluation runs on a short budget
(`short_budget`): MLflow's HTTP client would retry a refused connection for about 4 minutes and gemctl's sqlite
retries last about a minute, during which training would wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from .project import Project

PROBE_S = 30.0  # during an outage, how often a stage tries again to deliver (each try costs up to the budget)
HTTP_RETRIES = "1"  # MLflow's HTTP client, within a stage's budget: one retry (its default: 7, with backoff)
HTTP_TIMEOUT_S = "20"  # seconds per HTTP request (MLflow's default: 120)
RECORD_TAG = "gemctl.record"  # an evaluation run's spool key: a run created on delivery is found by it, not made twice
_QUIET = ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "urllib3.connectionpool", "urllib3.util.retry")


def spool_dir(project: Project) -> Path:
    return project.root / ".gemctl" / "spool"


def spool_file(project: Project, key: str) -> Path:
    return spool_dir(project) / f"{key}.jsonl"


def new_key() -> str:
    """A spool key for a run that does not exist yet (an evaluation's)."""
    return f"eval-{uuid.uuid4().hex}"


def _files_dir(path: Path) -> Path:
    return path.with_suffix(".files")


@contextlib.contextmanager
def _locked(path: Path, wait: bool = True):
    """Exclusive use of a run's spool among this machine's processes (a stage appending, a sync delivering: a
    delivery must not drop what is appended meanwhile, nor two deliveries write a point twice). Yields whether it
    got it (wait=False: False when another process holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append(path: Path, records: list[dict], uri: str) -> None:
    """Add records to a run's spool, on disk (fsynced) before returning."""
    with _locked(path):
        _append(path, records, uri)


def _append(path: Path, records: list[dict], uri: str) -> None:
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(json.dumps({"op": "store", "uri": uri}) + "\n")
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path) -> list[dict]:
    """The spool's records; a last line cut short by a crash while writing it was never acknowledged: skipped."""
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


@contextlib.contextmanager
def short_budget():
    """Store calls fail in seconds rather than minutes: MLflow's HTTP retries lowered, gemctl's sqlite retries off
    (one attempt: MLflow's own 20 s busy timeout)."""
    from . import tracking_store

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = HTTP_RETRIES
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = HTTP_TIMEOUT_S
    depth = getattr(tracking_store._local, "depth", 0)
    tracking_store._local.depth = 1  # `retrying` calls through once
    # a failed call is handled here (spooled, one warning line): not also logged with its traceback by MLflow
    loggers = [logging.getLogger(name) for name in _QUIET]
    disabled = [log.disabled for log in loggers]
    for log in loggers:
        log.disabled = True
    try:
        yield
    finally:
        tracking_store._local.depth = depth
        for log, was in zip(loggers, disabled, strict=True):
            log.disabled = was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- one record into the store: the same code live and on delivery ------------------------------------------------
class _Delivery:
    """What one delivery learned from the store so far: the metric points it already has (per key)."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id
        self.have: dict[str, set[tuple]] = {}


def apply(uri: str, record: dict, state: _Delivery, files_root: Path | None = None, live: bool = False):
    """Write one record to the store at `uri` for run `state.run_id`. Idempotent unless `live` (a first attempt:
    nothing can be there yet, so nothing is looked up). Returns the run id ("run") or the model id ("model")."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        return _OPS[record["op"]](record, state, files_root, live)


def _create_run(rec: dict, state: _Delivery, files_root, live: bool) -> str:
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import get_tracking_uri

    from .tracking import ensure_experiment

    client = MlflowClient()
    experiment_id = ensure_experiment(get_tracking_uri(), rec["experiment"])
    if not live:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RECORD_TAG}` = "
                                   f"'{rec['tags'][RECORD_TAG]}'", run_view_type=3)  # ALL: active and deleted
        if found:
            state.run_id = found[0].info.run_id
            return state.run_id
    run = client.create_run(experiment_id, start_time=rec["start_time"], tags=rec["tags"], run_name=rec["run_name"])
    state.run_id = run.info.run_id
    return state.run_id


def _params(rec: dict, state: _Delivery, files_root, live: bool) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH as per_batch

    items = [Param(k, str(v)) for k, v in rec["params"].items()]
    for i in range(0, len(items), per_batch):
        MlflowClient().log_batch(state.run_id, params=items[i:i + per_batch])


def _tags(rec: dict, state: _Delivery, files_root, live: bool) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    MlflowClient().log_batch(state.run_id, tags=[RunTag(k, str(v)) for k, v in rec["tags"].items()])


def meta_dataset(source: str, name: str, digest: str | None):
    """A dataset MLflow records by name, digest and source (a local path or URI), without reading it."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore")
        resolved = resolve_dataset_source(str(source))
    return MetaDataset(resolved, name=name, digest=digest)


def _input(rec: dict, state: _Delivery, files_root, live: bool) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    # what mlflow.log_input does, for a run that is not this process's active one; MLflow keeps one input row per
    # (run, dataset): logging it again changes nothing
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, rec["context"])] if rec.get("context") else []
    MlflowClient().log_inputs(state.run_id, [DatasetInput(meta_dataset(rec["source"], rec["name"], rec.get("digest"))._to_mlflow_entity(), tags)])


def _metrics(rec: dict, state: _Delivery, files_root, live: bool) -> int:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    points = list(dict.fromkeys(tuple(m) for m in rec["metrics"]))
    if not live:
        for key in dict.fromkeys(p[0] for p in points):
            if key not in state.have:
                state.have[key] = {(m.key, m.value, m.timestamp, m.step)
                                   for m in client.get_metric_history(state.run_id, key)}
        points = [p for p in points if (p[0], float(p[1]), p[2], p[3]) not in state.have[p[0]]]
    if rec.get("model_id") or rec.get("dataset"):  # scores on a logged model and a dataset: MLflow's fluent call
        d = rec.get("dataset")
        dataset = meta_dataset(d["source"], d["name"], d.get("digest")) if d else None
        groups: dict[tuple, dict] = {}
        for key, value, ts, step in points:
            groups.setdefault((ts, step), {})[key] = float(value)
        for (ts, step), values in groups.items():
            mlflow.log_metrics(values, step=step, timestamp=ts, model_id=rec.get("model_id"), dataset=dataset,
                               run_id=state.run_id)
    else:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH as per_batch

        for i in range(0, len(points), per_batch):
            client.log_batch(state.run_id, metrics=[Metric(k, float(v), ts, step)
                                                    for k, v, ts, step in points[i:i + per_batch]])
    for key, value, ts, step in points:
        state.have.setdefault(key, set()).add((key, float(value), ts, step))
    return len(points)


def _model(rec: dict, state: _Delivery, files_root, live: bool) -> str:
    """A stage's checkpoint: a logged model (external: the weights stay where DVC keeps them), an output of its run,
    a new version of the registered model (`registry`), and the checkpoint folder's model card."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = MlflowClient()
    run = client.get_run(state.run_id)
    model = None
    if not live:
        for m in client.search_logged_models([run.info.experiment_id], filter_string=(
                f"tags.`gemctl.checkpoint` = '{rec['checkpoint']}'")):
            if m.source_run_id != state.run_id:
                continue
            if m.status == LoggedModelStatus.READY:
                model = m
            else:  # made by a call cut short before it finished: made again below
                client.delete_logged_model(m.model_id)
    if model is None:
        model = mlflow.create_external_model(name=rec["name"], source_run_id=state.run_id, tags=rec["tags"],
                                             experiment_id=run.info.experiment_id)
    outputs = {o.model_id for o in (client.get_run(state.run_id).outputs.model_outputs or [])} if not live else set()
    if model.model_id not in outputs:
        client.log_outputs(state.run_id, [LoggedModelOutput(model.model_id, rec["step"])])
    if reg := rec.get("registry"):
        name = rec["name"]
        try:
            client.create_registered_model(name, description=reg["description"])
        except MlflowException:  # registered by an earlier run: add a version
            pass
        versions = [] if live else [v for v in client.search_model_versions(f"name = '{name}'")
                                    # (a server's answer leaves model_id out: the source names the model)
                                    if v.run_id == state.run_id and v.source == f"models:/{model.model_id}"]
        version = versions[0] if versions else client.create_model_version(
            name, source=f"models:/{model.model_id}", run_id=state.run_id, model_id=model.model_id,
            tags=reg["version_tags"], description=reg["version_description"])
        client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [{"name": version.name, "version": str(version.version)}])})
    card_dir = Path(rec["checkpoint"]).parent
    summary = card_dir / "summary.json"
    # the card describes the checkpoint in that folder: only while it is still this run's (not trained again since)
    if summary.is_file() and json.loads(summary.read_text()).get("mlflow_run_id") in (None, state.run_id):
        from . import model_card

        model_card.write(card_dir, run_id=state.run_id, model_id=model.model_id)
    return model.model_id


def _artifacts(rec: dict, state: _Delivery, files_root: Path | None, live: bool) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    src = Path(rec["src"]) if live else files_root / rec["files"]
    if src.is_dir():
        client.log_artifacts(state.run_id, str(src), rec.get("path"))
    else:
        client.log_artifact(state.run_id, str(src), rec.get("path"))


def _end(rec: dict, state: _Delivery, files_root, live: bool) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    if live or client.get_run(state.run_id).info.status == "RUNNING":
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's URL when a server ends it
            client.set_terminated(state.run_id, rec["status"], end_time=rec.get("end_time"))


def _card(rec: dict, state: _Delivery, files_root, live: bool) -> None:
    """Rewrite a checkpoint's model card (its scores changed)."""
    from . import model_card

    model_card.write(Path(rec["dir"]))


_OPS = {"card": _card, "run": _create_run, "params": _params, "tags": _tags, "input": _input, "metrics": _metrics,
        "model": _model, "artifacts": _artifacts, "end": _end}


# --- delivery -------------------------------------------------------------------------------------------------------
def deliver(path: Path) -> tuple[str, int]:
    """Replay one spool into its store; remove it once all of it is there. Returns the run's id and the metric
    points written (those the store already had are skipped); (None, 0) while another process delivers it. Raises
    what the store raises while it is still away."""
    with _locked(path, wait=False) as mine:
        if not mine:
            return None, 0
        if not path.exists():  # delivered meanwhile
            return path.stem, 0
        return _deliver(path)


def _deliver(path: Path) -> tuple[str, int]:
    records = _read(path)
    uri = next((r["uri"] for r in records if r.get("op") == "store"), None)
    state = _Delivery(None if any(r.get("op") == "run" for r in records) else path.stem)
    points = 0
    for record in records:
        if record.get("op") in _OPS:
            result = apply(uri, record, state, files_root=path.parent)
            points += result if record["op"] == "metrics" else 0
    path.unlink()
    shutil.rmtree(_files_dir(path), ignore_errors=True)
    return state.run_id, points


def deliver_all(project: Project, quiet: bool = False) -> dict[str, int | str]:
    """Every spool of the project: run id -> points delivered, or the one line saying why not (store still away).
    Before a command uses the store (quiet), and by `gemctl sync`."""
    from .tracking_store import install

    install()
    out: dict[str, int | str] = {}
    for path in sorted(spool_dir(project).glob("*.jsonl")) if spool_dir(project).is_dir() else []:
        try:
            with short_budget() if quiet else contextlib.nullcontext():
                run_id, points = deliver(path)
            out[run_id or path.stem] = points
        except Exception as e:  # the store is still away: the spool stays for later
            out[path.stem] = first_line(e)
    return out


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store that is away raises: MLflow's errors (a server's answers, wrapped database errors), the
    database's own, and the OS's (a refused connection, a full disk; requests' errors are OSErrors)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, OSError


def first_line(e: BaseException) -> str:
    """The root of an error (database is locked, connection refused), not the layers that wrapped it."""
    seen = {id(e)}
    while e.__cause__ is not None and id(e.__cause__) not in seen:
        e = e.__cause__
        seen.add(id(e))
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:200]


# --- live -----------------------------------------------------------------------------------------------------------
class Outage:
    """One run's view of its store: calls go through on a short budget; the first that fails starts an outage
    (one warning line), after which every record goes to the run's spool, in order, and delivery is tried again at
    most every PROBE_S seconds (a stage) or at the run's end.

    `run_id`: the run, when it exists; else `key` names the spool of a run still to be created (`create_run`)."""

    def __init__(self, project: Project, uri: str, run_id: str | None = None, key: str | None = None,
                 doing: str = "training"):
        self.project, self.uri, self.doing = project, uri, doing
        self.state = _Delivery(run_id)
        self.key = run_id or key or new_key()
        self.path: Path | None = None  # the run's spool while an outage lasts
        self._next_probe = 0.0
        self._files = 0
        self._run_record: dict | None = None
        self.warned = False

    @property
    def run_id(self) -> str | None:
        return self.state.run_id

    def create_run(self, experiment: str, run_name: str, tags: dict) -> str | None:
        """Create the run in the experiment of that name (tagged with its spool key), or spool its creation. Its
        id, or None until delivered."""
        rec = {"op": "run", "experiment": experiment, "run_name": run_name,
               "tags": {**tags, RECORD_TAG: self.key}, "start_time": int(time.time() * 1000)}
        self._run_record = rec
        run_id = self.do(rec)
        if run_id:
            self.key = run_id
        return run_id

    def do(self, record: dict, force_probe: bool = False):
        """Write one record (see the module's docstring; an "artifacts" record names its files as "src"), or spool
        it. Returns what `apply` returns, or None when spooled."""
        self._probe(force_probe)
        if self.path is None:
            try:
                with short_budget():
                    return apply(self.uri, record, self.state, live=True)
            except store_errors() as e:  # not a bug of the call: that raises
                self._start(e)
        kept = [self._kept(record)]
        if self.run_id is None and record["op"] != "run" and not self.path.exists():
            kept.insert(0, self._run_record)  # the spool was delivered meanwhile, the run's creation with it
        append(self.path, kept, self.uri)
        return None

    def metrics(self, metrics: list) -> None:
        """Log metric points (mlflow.entities.Metric), or spool them."""
        self.do({"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]})

    def end(self, status: str) -> None:
        """End the run, or spool its end; either way this process leaves it (the next run of the process must not
        nest in it, nor MLflow's exit hook wait on the store to end it)."""
        self.do({"op": "end", "status": status, "end_time": int(time.time() * 1000)}, force_probe=True)
        if self.run_id:
            _leave_active_run(self.run_id)

    def _kept(self, record: dict) -> dict:
        """The record as the spool keeps it: an artifact's files hard-linked (else copied) beside the spool, so
        that a later run rewriting them, or their folder going, changes nothing delivered."""
        if record["op"] != "artifacts":
            return record
        self._files += 1
        rel = f"{_files_dir(self.path).name}/{self._files}"
        dest = self.path.parent / rel
        src = Path(record["src"])
        dest.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True, copy_function=_link_or_copy)
            return {"op": "artifacts", "files": rel, "path": record.get("path")}
        _link_or_copy(src, dest / src.name)
        return {"op": "artifacts", "files": f"{rel}/{src.name}", "path": record.get("path")}

    def _start(self, e: BaseException) -> None:
        self.path = spool_file(self.project, self.key)
        self._next_probe = time.monotonic() + PROBE_S
        if not self.warned:
            self.warned = True
            print(f"warning: the tracking store is unavailable ({first_line(e)}): {self.doing} goes on, what it "
                  f"logs is kept in {self.path} and delivered when the store is back (gemctl sync)", file=sys.stderr,
                  flush=True)

    def _probe(self, force: bool = False) -> None:
        if self.path is None or not (force or time.monotonic() >= self._next_probe):
            return
        try:
            with short_budget():
                run_id, _ = deliver(self.path)
        except Exception:
            self._next_probe = time.monotonic() + PROBE_S
            return
        if run_id is None:  # another process is delivering it: stay on the spool
            self._next_probe = time.monotonic() + PROBE_S
            return
        self.state.run_id = run_id
        self.path = None


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _leave_active_run(run_id: str) -> None:
    """What mlflow.end_run does in this process, less telling the store."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        os.environ.pop("MLFLOW_RUN_ID", None)
