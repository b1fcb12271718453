"""When the tracking store goes away mid-stage (a server stopped, a sqlite file locked by another process), training
goes on: the metrics the stage logs, and the end of its run, are kept in a spool file and delivered when the store is
back: by `gemctl sync`, by every command that opens the store (tracking.setup), and by the stage itself, which tries
again every PROBE_S seconds.

    .gemctl/spool/<run id>.jsonl      one JSON record a line, appended and fsynced before training goes on
      {"op": "store", "uri": ...}     the store the run lives in (first line)
      {"op": "metrics", "metrics": [[key, value, timestamp ms, step], ...]}
      {"op": "end", "status": "FINISHED", "end_time": ms}

Delivery (`deliver`) is idempotent: a metric point is keyed by (key, step, timestamp, value) and skipped when the
store already has it (MLflow would store the same point twice, and a call that timed out may have landed), and a
run is ended only while it is still RUNNING. The spool file goes once everything in it is in the store; a
delivery cut short leaves it whole, and the next one skips what got through.

The store must answer when a stage starts (preflight refuses in one line otherwise): the run, and its id in the
resume state, exist before training does. Only what is logged after that is spooled: metric points and the run's
end. Not (yet): the logged model, its registration and the model card's links at the end of a stage, evaluation
runs, artifacts; a store away at those moments still fails the stage.

Every store call of a stage runs on a short budget (`short_budget`): MLflow's HTTP client would retry a refused
connection for about 4 minutes and gemctl's sqlite retries last about a minute, during which training would wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

from .project import Project

PROBE_S = 30.0  # during an outage, how often a stage tries again to deliver (each try costs up to the budget)
HTTP_RETRIES = "1"  # MLflow's HTTP client, within a stage's budget: one retry (its default: 7, with backoff)
HTTP_TIMEOUT_S = "20"  # seconds per HTTP request (MLflow's default: 120)
_BATCH = 1000  # metrics per log_batch (MLflow's limit)
_QUIET = ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "urllib3.connectionpool", "urllib3.util.retry")


def spool_dir(project: Project) -> Path:
    return project.root / ".gemctl" / "spool"


def spool_file(project: Project, run_id: str) -> Path:
    return spool_dir(project) / f"{run_id}.jsonl"


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


def deliver(path: Path) -> int:
    """Replay one run's spool into its store; remove the spool once all of it is there. Returns the metric points
    written (those the store already had are skipped; 0 if another process is delivering it). Raises what the store
    raises while it is still away."""
    with _locked(path, wait=False) as mine:
        return _deliver(path) if mine and path.exists() else 0


def _deliver(path: Path) -> int:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    records = _read(path)
    uri = next((r["uri"] for r in records if r.get("op") == "store"), None)
    client = MlflowClient(tracking_uri=uri)
    run_id = path.stem
    points = [tuple(m) for r in records if r.get("op") == "metrics" for m in r["metrics"]]
    have: set[tuple] = set()
    for key in dict.fromkeys(p[0] for p in points):
        have |= {(m.key, m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, key)}
    todo = [p for p in dict.fromkeys(points) if (p[0], float(p[1]), p[2], p[3]) not in have]
    for i in range(0, len(todo), _BATCH):
        client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v, ts, step in todo[i:i + _BATCH]])
    for end in (r for r in records if r.get("op") == "end"):
        if client.get_run(run_id).info.status == "RUNNING":
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's URL when a server ends it
                client.set_terminated(run_id, end["status"], end_time=end["end_time"])
    path.unlink()
    return len(todo)


def deliver_all(project: Project, quiet: bool = False) -> dict[str, int | str]:
    """Every spool of the project: run id -> points delivered, or the one line saying why not (store still away).
    Before a command uses the store (quiet), and by `gemctl sync`."""
    from .tracking_store import install

    install()
    out: dict[str, int | str] = {}
    for path in sorted(spool_dir(project).glob("*.jsonl")) if spool_dir(project).is_dir() else []:
        try:
            with short_budget() if quiet else contextlib.nullcontext():
                out[path.stem] = deliver(path)
        except Exception as e:  # the store is still away: the spool stays for later
            out[path.stem] = first_line(e)
    return out


def first_line(e: BaseException) -> str:
    """The root of an error (database is locked, connection refused), not the layers that wrapped it."""
    seen = {id(e)}
    while e.__cause__ is not None and id(e.__cause__) not in seen:
        e = e.__cause__
        seen.add(id(e))
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:200]


class Outage:
    """A stage's view of its store: calls go through on a short budget; the first that fails starts an outage
    (one warning line), after which what the stage logs goes to its spool, and delivery is tried again at most
    every PROBE_S seconds."""

    def __init__(self, project: Project, uri: str):
        self.project, self.uri = project, uri
        self.path: Path | None = None  # the run's spool while an outage lasts
        self._next_probe = 0.0
        self.warned = False

    def metrics(self, run_id: str, metrics: list) -> None:
        """Log metric points (mlflow.entities.Metric), or spool them."""
        from mlflow import MlflowClient

        self._probe(run_id)
        if self.path is None:
            try:
                with short_budget():
                    MlflowClient().log_batch(run_id, metrics=metrics)
                return
            except Exception as e:
                self._start(run_id, e)
        append(self.path, [{"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]}],
               self.uri)

    def end(self, run_id: str, status: str) -> None:
        """End the run (mlflow.end_run), or spool its end."""
        import mlflow

        self._probe(run_id, force=True)
        if self.path is None:
            try:
                with short_budget():
                    mlflow.end_run(status)  # it leaves the active run first, then tells the store
                return
            except Exception as e:
                self._start(run_id, e)
        append(self.path, [{"op": "end", "status": status, "end_time": int(time.time() * 1000)}], self.uri)
        _leave_active_run(run_id)

    def _start(self, run_id: str, e: BaseException) -> None:
        self.path = spool_file(self.project, run_id)
        self._next_probe = time.monotonic() + PROBE_S
        if not self.warned:
            self.warned = True
            print(f"warning: the tracking store is unavailable ({first_line(e)}): training goes on, what it logs is "
                  f"kept in {self.path} and delivered when the store is back (gemctl sync)", file=sys.stderr,
                  flush=True)

    def _probe(self, run_id: str, force: bool = False) -> None:
        if self.path is None or not (force or time.monotonic() >= self._next_probe):
            return
        try:
            with short_budget():
                deliver(self.path)
            self.path = None
        except Exception:
            self._next_probe = time.monotonic() + PROBE_S


def _leave_active_run(run_id: str) -> None:
    """What mlflow.end_run does in this process, less telling the store: else the next run of the process would
    nest in this one, and MLflow's exit hook would wait minutes on the store to end it."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        os.environ.pop("MLFLOW_RUN_ID", None)
