"""Lineage of a checkpoint, read back from what the stages recorded: MLflow runs (tags, dataset inputs, model
inputs), logged models, the model registry, dvc.lock and the checkpoint folders.

    upstream   run -> its data (DVC digest, path, the data run, the dataset's files), code (commit, dirty, diff
               digest, versions), recipe (name, hash, resolved params), the parent stage's run (recursively), and
               the sweep it was a point of
    downstream run -> child stage runs (sweep points grouped under their sweep) and every evaluation score
               computed from its checkpoint (recursively)

Each node is a plain dict (what --json prints); `resolve_target` turns what a user types into a run. Reads are
targeted queries (one per link), never a scan of the whole store: of the project's sqlite tables directly
(lineage_store.py), or through MLflow's client for other stores.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from gem_stages.errors import InputError

from .project import Project
from .tracking import EXPERIMENT

STAGES = ("data", "stage1", "stage2", "stage3", "stage4")
_HEX = re.compile(r"[0-9a-f]+")


# --- the store ---------------------------------------------------------------------------------------------------
# GEMCTL_LINEAGE_READER=mlflow reads a sqlite store through MLflow too (the tests run both readers on one store)
READER_ENV = "GEMCTL_LINEAGE_READER"


class Store:
    """The project's MLflow store, opened read-only (nothing is created), with the queries lineage makes.

    The project's own sqlite store is read from its tables (gemctl/lineage_store.py), so that `gemctl lineage` and
    `gemctl runs` never import mlflow (2 s a command); other stores (servers), or a schema that reader does not
    know, through MlflowClient. Both answer with objects of the same shape."""

    def __init__(self, project: Project):
        self.project, self.uri = project, project.tracking_uri
        reachable(self.uri)
        self._client = None
        self.reader = None  # the sqlite reader, when it reads this store
        exp_id = None
        if self.uri.startswith("sqlite:///") and os.environ.get(READER_ENV, "sqlite") != "mlflow":
            from . import lineage_store

            path = self.uri.removeprefix("sqlite:///")
            exp_id = lineage_store.experiment_id(path, EXPERIMENT)
            if exp_id:
                self.reader = lineage_store.open_reader(path, exp_id)
                exp_id = exp_id if self.reader is not None else None
        if exp_id is None:
            try:
                exp = self.client.get_experiment_by_name(EXPERIMENT)
            except Exception as e:  # a store MLflow cannot open: a broken file, a server that stopped answering
                raise InputError(f"the MLflow store {self.uri} cannot be read ({_first_line(e)}): check "
                                 "--tracking-uri or GEMCTL_TRACKING_URI") from None
            exp_id = exp.experiment_id if exp is not None else ""
        if not exp_id:
            raise InputError(f"the MLflow store {self.uri} holds no gemctl runs yet: run a stage first "
                             "(`gemctl train stage1`), or point --tracking-uri at the store that has them")
        self.experiment = str(exp_id)
        self._runs: dict[str, Any] = {}
        self._searches: dict[tuple, list] = {}
        self._models: dict[str, Any] = {}
        self._versions: dict[str, str] | None = None

    @property
    def client(self):
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            mlflow.set_tracking_uri(self.uri)
            self._client = MlflowClient(self.uri)
        return self._client

    def find(self, run_id: str):
        """The run with this id, None when there is none."""
        if run_id not in self._runs:
            if self.reader is not None:
                found = self.reader.get_run(run_id)
            else:
                from mlflow.exceptions import MlflowException

                try:
                    found = self.client.get_run(run_id)
                except MlflowException:
                    found = None
            if found is None:
                return None
            self._runs[run_id] = found
        return self._runs[run_id]

    def run(self, run_id: str):
        found = self.find(run_id)
        if found is None:
            raise InputError(f"run {run_id} is named in {self.uri} but not stored there (deleted?): "
                             "`gemctl runs` lists the runs it holds")
        return found

    def search(self, tags: dict[str, str | None] | None = None, run_id_prefix: str | None = None,
               dataset_digest: str | None = None) -> list:
        """Live runs whose tags equal `tags` (None: the tag is absent), whose id starts with `run_id_prefix`, that
        take a dataset of `dataset_digest`; newest first. Asked once per command (lineage asks the same links of
        several nodes)."""
        key = (tuple(sorted((tags or {}).items())), run_id_prefix, dataset_digest)
        if key not in self._searches:
            if self.reader is not None:
                found = self.reader.search_runs(tags, run_id_prefix, dataset_digest)
            else:
                found = self.client.search_runs([self.experiment], _run_filter(tags, run_id_prefix, dataset_digest),
                                                order_by=["attributes.start_time DESC"], max_results=50000)
            for r in found:
                self._runs.setdefault(r.info.run_id, r)
            self._searches[key] = list(found)
        return self._searches[key]

    def models(self, checkpoint: str | None = None, id_prefix: str | None = None) -> list:
        """Live logged models tagged with checkpoint folder `checkpoint` and/or whose id starts with `id_prefix`;
        newest first."""
        if self.reader is not None:
            return self.reader.search_logged_models(checkpoint, id_prefix)
        where = ([f"tags.`gemctl.checkpoint` = '{checkpoint}'"] if checkpoint is not None else []) + \
            ([f"model_id LIKE '{id_prefix}%'"] if id_prefix is not None else [])
        return self.client.search_logged_models([self.experiment], filter_string=" and ".join(where) or None,
                                                max_results=1000,
                                                order_by=[{"field_name": "creation_time", "ascending": False}])

    def model(self, model_id: str):
        """The logged model with this id, None when there is none."""
        if model_id not in self._models:
            if self.reader is not None:
                self._models[model_id] = self.reader.get_logged_model(model_id)
            else:
                try:
                    self._models[model_id] = self.client.get_logged_model(model_id)
                except Exception:  # MLflow's not-found, as an exception of the store's kind
                    self._models[model_id] = None
        return self._models[model_id]

    def version(self, model_id: str) -> str | None:
        """'name vN' of the registry version a logged model is, if any (the registry is read once)."""
        if self._versions is None:
            self._versions = {}
            found = (self.reader.search_model_versions() if self.reader is not None
                     else self.client.search_model_versions(max_results=200000))
            for v in found:
                source = v.source or ""
                linked = v.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else "")
                self._versions[linked] = f"{v.name} v{v.version}"
        return self._versions.get(model_id)


def _run_filter(tags: dict[str, str | None] | None, run_id_prefix: str | None, dataset_digest: str | None) -> str:
    """The MLflow filter string of Store.search's arguments."""
    where = [f"tags.`{k}` IS NULL" if v is None else f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    if run_id_prefix is not None:
        where.append(f"attributes.run_id LIKE '{run_id_prefix}%'")
    if dataset_digest is not None:
        where.append(f"datasets.digest = '{dataset_digest}'")
    return " and ".join(where)


def reachable(uri: str) -> None:
    """Refuse a store that is not there, naming it, before MLflow would retry for minutes or create an empty one."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise InputError(f"no MLflow store at {uri}: nothing was recorded in this project yet (run a stage "
                             "first), or point --tracking-uri / GEMCTL_TRACKING_URI at the store that has the runs")
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise InputError(f"the MLflow server {uri} cannot be reached ({reason}): start it (`gemctl mlflow "
                             "serve`), or fix --tracking-uri / GEMCTL_TRACKING_URI") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# --- targets -----------------------------------------------------------------------------------------------------
def resolve_target(store: Store, target: str):
    """The run TARGET names: a checkpoint folder, STAGE@RECIPE, a run id or a logged-model id (unique prefixes)."""
    if re.fullmatch(r"[A-Za-z0-9_\-]+@[A-Za-z0-9_.\-]+", target) and target.split("@")[0] in STAGES:
        return _stage_at_recipe(store, *target.split("@", 1))
    path = Path(target)
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.exists():
        return _checkpoint(store, path.resolve())
    if target.startswith("m-"):
        return _model(store, target)
    if _HEX.fullmatch(target):
        if len(target) == 32 and store.find(target) is not None:
            return store.run(target)
        found = store.search(run_id_prefix=target)
        if len(found) == 1:
            return found[0]
        if found:
            raise InputError(f"'{target}' is the start of {len(found)} run ids: "
                             f"{_listed([_label(r) for r in found])}: give more characters")
    raise InputError(f"'{target}' names no checkpoint folder, run or logged model in {store.uri}: give a run id "
                     f"(or its first characters), a logged model id (m-...), a checkpoint folder, or STAGE@RECIPE "
                     f"(recorded: {_listed(_recorded(store)) or 'none'})")


def _stage_at_recipe(store: Store, stage: str, recipe: str):
    """The run behind the pipeline's current checkpoint (its summary.json), else the newest such run."""
    summary = store.project.stage_dir(recipe, stage) / "summary.json"
    if summary.is_file():
        run_id = json.loads(summary.read_text()).get("mlflow_run_id")
        if run_id:
            return store.run(run_id)
    found = store.search({"gemctl.stage": stage, "gemctl.recipe": recipe, "gemctl.sweep": None})
    if found:
        return found[0]
    raise InputError(f"no run of {stage}@{recipe} is recorded in {store.uri}: choose one of "
                     f"{_listed(_recorded(store)) or 'none (nothing trained yet)'}")


def _recorded(store: Store) -> list[str]:
    """STAGE@RECIPE of every stage run recorded (what a user may name)."""
    return sorted({f"{r['attributes']['stage']}@{r['attributes']['recipe']}" for r in rows(store, set())
                   if r["attributes"]["stage"] in STAGES})


def _checkpoint(store: Store, path: Path):
    for folder in (path, path / "model"):
        found = store.models(checkpoint=str(folder))
        if found:
            return store.run(found[0].source_run_id)
    for folder in (path, path.parent):
        summary = folder / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("mlflow_run_id"):
            return store.run(json.loads(summary.read_text())["mlflow_run_id"])
    raise InputError(f"{path} is no checkpoint recorded in {store.uri}: give a stage's output folder (e.g. "
                     "runs/RECIPE/stage3) or its model/ folder")


def _model(store: Store, prefix: str):
    found = store.models(id_prefix=prefix)
    if len(found) == 1:
        return store.run(found[0].source_run_id)
    if found:
        raise InputError(f"'{prefix}' is the start of {len(found)} logged model ids: "
                         f"{_listed([f'{m.model_id} ({m.name})' for m in found])}: give more characters")
    raise InputError(f"no logged model id starts with '{prefix}' in {store.uri}: `gemctl runs` lists the runs "
                     "and `gemctl lineage RUN` their models")


def _label(run) -> str:
    return f"{run.info.run_id} ({run.info.run_name})"


def _listed(items: list[str], most: int = 12) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


# --- nodes -------------------------------------------------------------------------------------------------------
def node(store: Store, run) -> dict:
    """One run as a lineage node: what it is, its code, recipe, data and checkpoint."""
    t = run.data.tags
    kind = ("sweep" if t.get("gemctl.sweep_parent") == "true" else "eval" if "gemctl.eval.benchmark" in t
            else "data" if t.get("gemctl.stage") == "data" else "stage")
    n: dict[str, Any] = {
        "kind": kind, "run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
        "stage": t.get("gemctl.stage"), "recipe": t.get("gemctl.recipe"), "recipe_hash": t.get("gemctl.recipe_hash"),
        "start_time": run.info.start_time,
    }
    if "gemctl.git_commit" in t:
        n["code"] = {"commit": t["gemctl.git_commit"], "dirty": t.get("gemctl.git_dirty") == "true",
                     "diff_digest": t.get("gemctl.git_diff_digest"),
                     "versions": {k.removeprefix("gemctl.version."): v for k, v in sorted(t.items())
                                  if k.startswith("gemctl.version.")}}
    if kind in ("stage", "data"):
        n["params"] = dict(sorted(run.data.params.items()))
    if t.get("gemctl.sweep"):
        n["sweep"] = {"id": t["gemctl.sweep"], "point": t.get("gemctl.sweep_point"),
                      "run_id": t.get("mlflow.parentRunId")}
    datasets = [d for d in run.inputs.dataset_inputs if _context(d) != "evaluation"]
    if datasets:
        n["data"] = [_dataset(store, run, d) for d in datasets]
    if kind == "data":
        n["data_digest"] = t.get("gemctl.data_digest")
    models = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    if models:
        n["models"] = []
        for model_id in models:
            m = store.model(model_id)
            n["models"].append({"id": model_id, "name": m.name, "checkpoint": m.tags.get("gemctl.checkpoint"),
                                "registered": store.version(model_id)})
    if kind == "eval":
        n["benchmark"] = t.get("gemctl.eval.benchmark")
        n["metric"] = t.get("gemctl.eval.metric")
        n["checkpoint"] = t.get("gemctl.checkpoint")
        n["model_id"] = t.get("gemctl.model_id")
        n["metrics"] = dict(sorted(run.data.metrics.items()))
    return n


def _context(d) -> str:
    return next((tag.value for tag in d.tags if tag.key == "mlflow.data.context"), "")


def _dataset(store: Store, run, d) -> dict:
    """A dataset input: DVC digest, path, and (where found) the data run that prepared it and its files."""
    try:
        path = json.loads(d.dataset.source).get("uri", d.dataset.source)
    except ValueError:
        path = d.dataset.source
    out = {"name": d.dataset.name, "digest": d.dataset.digest, "path": path}
    data_run, how = _data_run(store, run, d.dataset.digest)
    if data_run is not None:
        out["run_id"], out["found_by"] = data_run.info.run_id, how
        out["manifest_digest"] = data_run.data.tags.get("gemctl.data_digest")
    folder = Path(path)
    if _dvc_digest(store.project, folder) == d.dataset.digest:  # the folder on disk still holds this version
        out["files"] = _files(folder)
    return out


def _data_run(store: Store, run, digest: str):
    """The data stage's run that produced `digest`: one that records the dataset with that digest; else the one
    behind the pipeline's data folder while dvc.lock holds that digest; else the newest before `run` started.
    One search (the recipe's data runs, few) serves all three."""
    recipe = run.data.tags.get("gemctl.recipe", "")
    candidates = store.search({"gemctl.stage": "data", "gemctl.recipe": recipe})
    for r in candidates:
        if any(d.dataset.digest == digest for d in r.inputs.dataset_inputs):
            return r, "digest"
    folder = store.project.stage_dir(recipe, "data")
    if _dvc_digest(store.project, folder) == digest and (folder / "summary.json").is_file():
        run_id = json.loads((folder / "summary.json").read_text()).get("mlflow_run_id")
        if run_id:
            return store.run(run_id), "dvc.lock"
    before = [r for r in candidates if r.info.start_time <= run.info.start_time]
    return (before[0], "time") if before else (None, "")


def _dvc_digest(project: Project, folder: Path) -> str | None:
    """dvc.lock's md5 of an output folder, None when it records none."""
    import yaml

    lock = project.root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        rel = str(folder.resolve().relative_to(project.root.resolve()))
    except ValueError:
        return None
    data = _lock_cache.get(lock) or yaml.safe_load(lock.read_text()) or {}
    _lock_cache[lock] = data
    for stage in (data.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            if o.get("path") == rel:
                return o.get("md5")
    return None


_lock_cache: dict[Path, dict] = {}


def _files(folder: Path) -> dict:
    """What the data folder's files.md5 says: how many files, and those ingested from outside it (absolute paths:
    a `files` data source) with their md5."""
    listing = folder / "files.md5"
    if not listing.is_file():
        return {}
    rows = [line.split("  ", 1) for line in listing.read_text().splitlines() if "  " in line]
    return {"count": len(rows), "ingested": {p: md5 for md5, p in rows if p.startswith("/")}}


# --- trees -------------------------------------------------------------------------------------------------------
def upstream(store: Store, run) -> dict:
    """The node of `run` with its ancestry: parent stage runs down to stage 1, its data, its sweep."""
    n = node(store, run)
    t = run.data.tags
    parent_id = _parent_run_id(store, run)
    if n["kind"] == "eval":
        parent_id = t.get("gemctl.checkpoint_run_id") or _model_run(store, t.get("gemctl.model_id"))
    if parent_id:
        n["parent_checkpoint"] = t.get("gemctl.parent_checkpoint") or n.get("checkpoint")
        n["parent_model_id"] = t.get("gemctl.parent_model_id") or n.get("model_id")
        n["parent"] = upstream(store, store.run(parent_id))
    if n.get("sweep", {}).get("run_id"):
        sweep = store.run(n["sweep"]["run_id"])
        n["sweep"].update(name=sweep.info.run_name, params=dict(sorted(sweep.data.params.items())))
    return n


def _parent_run_id(store: Store, run) -> str | None:
    """The parent stage's run: the input model's source run where MLflow records one, else the tag."""
    for m in getattr(run.inputs, "model_inputs", None) or []:
        source = _model_run(store, m.model_id)
        if source:
            return source
    return run.data.tags.get("gemctl.parent_run_id") or None


def _model_run(store: Store, model_id: str | None) -> str | None:
    if not model_id:
        return None
    m = store.model(model_id)
    return m.source_run_id if m is not None else None


def downstream(store: Store, run, seen: set | None = None) -> dict:
    """The node of `run` with what came from it: child stage runs (a sweep's points under the sweep) and the
    evaluations of its checkpoints."""
    seen = seen if seen is not None else set()
    seen.add(run.info.run_id)
    n = node(store, run)
    children, sweeps = [], {}
    if n["kind"] == "sweep":
        kids = store.search({"mlflow.parentRunId": run.info.run_id})
    elif n["kind"] == "data":
        digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
        lock = _dvc_digest(store.project, store.project.stage_dir(n["recipe"] or "", "data"))
        if lock and _current_data_run(store, n["recipe"]) == run.info.run_id:
            digests.add(lock)
        kids = [r for d in sorted(digests) for r in store.search({"gemctl.stage": "stage1"}, dataset_digest=d)]
    else:
        kids = store.search({"gemctl.parent_run_id": run.info.run_id})
    for kid in kids:
        if kid.info.run_id in seen:
            continue
        sid = kid.data.tags.get("gemctl.sweep")
        if sid and n["kind"] != "sweep" and kid.data.tags.get("mlflow.parentRunId"):
            sweeps.setdefault(kid.data.tags["mlflow.parentRunId"], []).append(kid)
        else:
            children.append(downstream(store, kid, seen))
    for sweep_id, points in sweeps.items():
        s = node(store, store.run(sweep_id))
        s["children"] = [downstream(store, p, seen) for p in points]
        children.append(s)
    if children:
        n["children"] = children
    scores = []
    for m in n.get("models", []):
        for ev in store.search({"gemctl.model_id": m["id"]}):
            scores.append(node(store, ev))
    if scores:
        n["scores"] = scores
    return n


def _current_data_run(store: Store, recipe: str | None) -> str | None:
    summary = store.project.stage_dir(recipe or "", "data") / "summary.json"
    return json.loads(summary.read_text()).get("mlflow_run_id") if summary.is_file() else None


# --- diff --------------------------------------------------------------------------------------------------------
def chain(n: dict) -> list[dict]:
    """The node and its parents, target first."""
    out = [n]
    while "parent" in out[-1]:
        out.append(out[-1]["parent"])
    return out


def diff(a: dict, b: dict) -> dict:
    """What differs between two upstream trees: recipe keys (old -> new), data digests, code commits and parent
    checkpoints, stage by stage; with each side's scores."""
    pa, pb = a.get("params", {}), b.get("params", {})
    recipe = {k: [pa.get(k), pb.get(k)] for k in sorted(pa.keys() | pb.keys()) if pa.get(k) != pb.get(k)}
    ca, cb = {_stage_of(x): x for x in chain(a)}, {_stage_of(x): x for x in chain(b)}
    data, code, parents = {}, {}, {}
    for stage in sorted(ca.keys() | cb.keys(), key=lambda s: STAGES.index(s) if s in STAGES else 99):
        x, y = ca.get(stage, {}), cb.get(stage, {})
        dx, dy = _digests(x), _digests(y)
        for name in sorted(dx.keys() | dy.keys()):
            if dx.get(name) != dy.get(name):
                data[f"{stage} {name}"] = [dx.get(name), dy.get(name)]
        kx, ky = _code(x), _code(y)
        if kx != ky:
            code[stage] = [kx, ky]
    # the ancestors' checkpoints (the two targets' own always differ: they are two runs)
    pa_, pb_ = {_stage_of(x): x for x in chain(a)[1:]}, {_stage_of(x): x for x in chain(b)[1:]}
    for stage in sorted(pa_.keys() | pb_.keys(), key=lambda s: STAGES.index(s) if s in STAGES else 99):
        mx, my = _checkpoint_of(pa_.get(stage, {})), _checkpoint_of(pb_.get(stage, {}))
        if mx != my:
            parents[stage] = [mx, my]
    return {"a": _short(a), "b": _short(b), "recipe": recipe, "data": data, "code": code, "parents": parents}


def _stage_of(n: dict) -> str:
    return n.get("stage") or n.get("kind", "?")


def _digests(n: dict) -> dict[str, str]:
    return {d["name"]: d["digest"] for d in n.get("data", [])}


def _code(n: dict) -> str | None:
    c = n.get("code")
    if not c:
        return None
    return c["commit"] + (f"+dirty:{c.get('diff_digest') or '?'}" if c["dirty"] else "")


def _checkpoint_of(n: dict) -> str | None:
    models = n.get("models") or []
    return models[0]["id"] if models else None


def _short(n: dict) -> dict:
    return {"run_id": n["run_id"], "name": n["name"], "recipe_hash": n.get("recipe_hash"),
            "checkpoint": _checkpoint_of(n), "scores": scores_of(n)}


def scores_of(n: dict) -> dict[str, float]:
    """benchmark/metric -> value over the evaluations listed on a node (downstream trees)."""
    out: dict[str, float] = {}
    for s in n.get("scores", []):
        out |= s.get("metrics", {})
    return out


def with_scores(store: Store, n: dict) -> dict:
    """Add to an upstream node the evaluations of its own checkpoint (diff shows them side by side)."""
    scores = [node(store, ev) for m in n.get("models", []) for ev in store.search({"gemctl.model_id": m["id"]})]
    if scores:
        n["scores"] = scores
    return n


# --- runs table --------------------------------------------------------------------------------------------------
def rows(store: Store, params: set[str] | None = None) -> list[dict]:
    """Every run of the store as {"metrics", "params", "tags", "attributes"} (what --where reads), with only the
    `params` named (None: all). A stage run's metrics include the scores its checkpoint got from evaluation runs
    (joined here). The project's own sqlite store is read directly, in five queries: through MLflow, loading 1,000
    runs with their ~200 params each takes seconds (bench/bench_lineage.py); other stores through one paged
    search_runs."""
    runs = None
    if store.reader is not None:
        import sqlite3

        try:
            runs = _sqlite_runs(store.uri.removeprefix("sqlite:///"), store.experiment, params)
        except sqlite3.Error:  # a schema this reader does not know (another MLflow version): ask MLflow
            runs = None
    if runs is None:
        runs = _api_runs(store, params)
    scores: dict[str, dict[str, float]] = {}  # model id -> every metric its evaluations logged
    headline: dict[str, dict[str, float]] = {}  # run or model id -> each benchmark's overall score
    for r in runs:
        t = r["tags"]
        if "gemctl.eval.benchmark" in t:
            key = f"{t['gemctl.eval.benchmark']}/{t.get('gemctl.eval.metric', '')}"
            top = {k: v for k, v in r["metrics"].items() if k == key}
            headline[r["run_id"]] = top
            if t.get("gemctl.model_id"):
                scores.setdefault(t["gemctl.model_id"], {}).update(r["metrics"])
                headline.setdefault(t["gemctl.model_id"], {}).update(top)
    out = []
    for r in runs:
        t = r["tags"]
        metrics = dict(r["metrics"])
        models = r["models"]
        top = dict(headline.get(r["run_id"], {}))
        for m in models:
            metrics |= scores.get(m, {})
            top |= headline.get(m, {})
        kind = ("sweep" if t.get("gemctl.sweep_parent") == "true" else "eval" if "gemctl.eval.benchmark" in t
                else t.get("gemctl.stage", ""))
        out.append({"metrics": metrics, "params": r["params"], "tags": t, "attributes": {
            "run_id": r["run_id"], "run_name": r["name"], "status": r["status"],
            "start_time": r["start_time"], "end_time": r["end_time"], "kind": kind, "models": models,
            "stage": kind if kind in ("eval", "sweep") else t.get("gemctl.stage"), "recipe": t.get("gemctl.recipe"),
            "recipe_hash": t.get("gemctl.recipe_hash"), "scores": top}})
    return out


def _api_runs(store: Store, params: set[str] | None) -> list[dict]:
    found = store.client.search_runs([store.experiment], max_results=50000)
    page = found
    while page.token:  # more than one page on a server that caps page sizes
        page = store.client.search_runs([store.experiment], max_results=50000, page_token=page.token)
        found += page
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start_time": r.info.start_time, "end_time": r.info.end_time, "tags": dict(r.data.tags),
             "metrics": dict(r.data.metrics),
             "params": {k: v for k, v in r.data.params.items() if params is None or k in params},
             "models": [o.model_id for o in (r.outputs.model_outputs if r.outputs else [])]} for r in found]


def _sqlite_runs(path: str, experiment: str, params: set[str] | None) -> list[dict]:
    """The experiment's live runs straight from MLflow's sqlite tables (read-only): attributes, tags, params,
    latest metrics and the logged models each run output."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        live = "SELECT run_uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'"
        runs = {row[0]: {"run_id": row[0], "name": row[1], "status": row[2], "start_time": row[3],
                         "end_time": row[4], "tags": {}, "metrics": {}, "params": {}, "models": []}
                for row in db.execute("SELECT run_uuid, name, status, start_time, end_time FROM runs "
                                      "WHERE experiment_id = ? AND lifecycle_stage = 'active'", (int(experiment),))}
        for key, value, run in db.execute(f"SELECT key, value, run_uuid FROM tags WHERE run_uuid IN ({live})",
                                          (int(experiment),)):
            if run in runs:
                runs[run]["tags"][key] = value
        chosen = "" if params is None else f" AND key IN ({','.join('?' * len(params))})"
        for key, value, run in db.execute(f"SELECT key, value, run_uuid FROM params WHERE run_uuid IN ({live})"
                                          + chosen, (int(experiment), *sorted(params or ()))):
            if run in runs:
                runs[run]["params"][key] = value
        for key, value, is_nan, run in db.execute("SELECT key, value, is_nan, run_uuid FROM latest_metrics "
                                                  f"WHERE run_uuid IN ({live})", (int(experiment),)):
            if run in runs:
                runs[run]["metrics"][key] = float("nan") if is_nan else value
        for run, model in db.execute("SELECT source_id, destination_id FROM inputs WHERE source_type = 'RUN_OUTPUT' "
                                     "AND destination_type = 'MODEL_OUTPUT'"):
            if run in runs:
                runs[run]["models"].append(model)
    return list(runs.values())
