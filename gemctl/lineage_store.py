"""The project's sqlite MLflow store read straight from its tables (read-only), for `gemctl lineage`.

Importing mlflow and opening its store costs about 2 s per command (bench/bench_lineage.py); lineage needs a few
rows. This reader answers the same questions as the MlflowClient calls lineage makes, with objects that carry the
same attribute names (run.info.run_id, run.data.tags, run.inputs.dataset_inputs, ...), so lineage reads either.
The tables are MLflow 3's (store/tracking/dbmodels/models.py, store/model_registry/dbmodels/models.py); `open`
returns None on a schema it does not know, and lineage then asks MLflow.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

# the columns read, per table: probed once at open, so another schema falls back to MLflow before any query
_COLUMNS = {
    "runs": "run_uuid, name, status, start_time, end_time, experiment_id, lifecycle_stage",
    "tags": "key, value, run_uuid",
    "params": "key, value, run_uuid",
    "latest_metrics": "key, value, is_nan, run_uuid",
    "inputs": "input_uuid, source_type, source_id, destination_type, destination_id",
    "input_tags": "input_uuid, name, value",
    "datasets": "dataset_uuid, name, digest, dataset_source",
    "logged_models": "model_id, experiment_id, name, creation_timestamp_ms, lifecycle_stage, source_run_id",
    "logged_model_tags": "model_id, tag_key, tag_value",
    "model_versions": "name, version, source, current_stage",
}


@dataclass
class Info:
    run_id: str
    run_name: str | None
    status: str
    start_time: int | None
    end_time: int | None


@dataclass
class Data:
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Tag:
    key: str
    value: str


@dataclass
class Dataset:
    name: str
    digest: str
    source: str


@dataclass
class DatasetInput:
    dataset: Dataset
    tags: list[Tag]


@dataclass
class ModelRef:  # a run's model input or output
    model_id: str


@dataclass
class Inputs:
    dataset_inputs: list[DatasetInput]
    model_inputs: list[ModelRef]


@dataclass
class Outputs:
    model_outputs: list[ModelRef]


@dataclass
class Run:
    info: Info
    data: Data
    inputs: Inputs
    outputs: Outputs


@dataclass
class LoggedModel:
    model_id: str
    name: str
    source_run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Version:
    name: str
    version: int
    source: str
    model_id: str | None = None  # MLflow's sqlite registry leaves it unset too: the link is in `source`


class SqliteReader:
    """One read-only connection to the store; every query is scoped to the gemctl experiment."""

    def __init__(self, db: sqlite3.Connection, experiment: str):
        self.db, self.experiment = db, int(experiment)

    def close(self) -> None:
        self.db.close()

    # --- runs ---------------------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run | None:
        found = self._runs("r.run_uuid = ?", [run_id])
        return found[0] if found else None

    def search_runs(self, tags: dict[str, str | None] | None = None, run_id_prefix: str | None = None,
                    dataset_digest: str | None = None) -> list[Run]:
        """Live runs whose tags equal `tags` (None: the tag is absent), whose id starts with `run_id_prefix`, that
        take a dataset with `dataset_digest` as input; newest first."""
        where, args = [], []
        for key, value in (tags or {}).items():
            if value is None:
                where.append("NOT EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?)")
                args.append(key)
            else:
                where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? "
                             "AND t.value = ?)")
                args += [key, value]
        if run_id_prefix is not None:
            where.append("substr(r.run_uuid, 1, ?) = ?")  # not LIKE: a prefix is literal
            args += [len(run_id_prefix), run_id_prefix]
        if dataset_digest is not None:
            where.append("EXISTS (SELECT 1 FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id "
                         "WHERE i.destination_type = 'RUN' AND i.destination_id = r.run_uuid "
                         "AND i.source_type = 'DATASET' AND d.digest = ?)")
            args.append(dataset_digest)
        return self._runs(" AND ".join(where) or "1", args)

    def _runs(self, where: str, args: list) -> list[Run]:
        rows = self.db.execute("SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time FROM runs r "
                               f"WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND ({where}) "
                               "ORDER BY r.start_time DESC, r.run_uuid", [self.experiment, *args]).fetchall()
        if not rows:
            return []
        runs = {row[0]: Run(Info(*row), Data({}, {}, {}), Inputs([], []), Outputs([])) for row in rows}
        ids = list(runs)
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):  # sqlite's bound-parameter limit
            marks = ",".join("?" * len(chunk))
            for key, value, run in self.db.execute(f"SELECT key, value, run_uuid FROM tags WHERE run_uuid IN "
                                                   f"({marks})", chunk):
                runs[run].data.tags[key] = value
            for key, value, run in self.db.execute(f"SELECT key, value, run_uuid FROM params WHERE run_uuid IN "
                                                   f"({marks})", chunk):
                runs[run].data.params[key] = value
            for key, value, is_nan, run in self.db.execute("SELECT key, value, is_nan, run_uuid FROM latest_metrics "
                                                           f"WHERE run_uuid IN ({marks})", chunk):
                runs[run].data.metrics[key] = float("nan") if is_nan else value
            for source_type, run, model in self.db.execute(
                    "SELECT source_type, source_id, destination_id FROM inputs WHERE source_id IN "
                    f"({marks}) AND ((source_type = 'RUN_INPUT' AND destination_type = 'MODEL_INPUT') OR "
                    "(source_type = 'RUN_OUTPUT' AND destination_type = 'MODEL_OUTPUT'))", chunk):
                r = runs[run]
                (r.inputs.model_inputs if source_type == "RUN_INPUT" else r.outputs.model_outputs).append(
                    ModelRef(model))
            inputs: dict[str, DatasetInput] = {}  # input id -> the run's input of that dataset
            per_run: dict[tuple[str, str], DatasetInput] = {}  # one input per dataset and run, as MLflow gives
            for input_uuid, run, dataset, name, digest, source in self.db.execute(
                    "SELECT i.input_uuid, i.destination_id, d.dataset_uuid, d.name, d.digest, d.dataset_source "
                    "FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id WHERE i.source_type = 'DATASET' "
                    f"AND i.destination_type = 'RUN' AND i.destination_id IN ({marks}) ORDER BY i.rowid", chunk):
                if (run, dataset) not in per_run:
                    per_run[run, dataset] = DatasetInput(Dataset(name, digest, source), [])
                    runs[run].inputs.dataset_inputs.append(per_run[run, dataset])
                inputs[input_uuid] = per_run[run, dataset]
            if inputs:
                keys = list(inputs)
                for part in (keys[i:i + 500] for i in range(0, len(keys), 500)):
                    for input_uuid, name, value in self.db.execute(
                            "SELECT input_uuid, name, value FROM input_tags WHERE input_uuid IN "
                            f"({','.join('?' * len(part))})", part):
                        inputs[input_uuid].tags.append(Tag(name, value))
        return list(runs.values())

    # --- logged models and the registry ---------------------------------------------------------------------------
    def get_logged_model(self, model_id: str) -> LoggedModel | None:
        found = self._models("model_id = ?", [model_id])
        return found[0] if found else None

    def search_logged_models(self, checkpoint: str | None = None, id_prefix: str | None = None) -> list[LoggedModel]:
        """Live logged models tagged with `checkpoint` and/or whose id starts with `id_prefix`; newest first."""
        where, args = [], []
        if checkpoint is not None:
            where.append("EXISTS (SELECT 1 FROM logged_model_tags t WHERE t.model_id = m.model_id "
                         "AND t.tag_key = 'gemctl.checkpoint' AND t.tag_value = ?)")
            args.append(checkpoint)
        if id_prefix is not None:
            where.append("substr(m.model_id, 1, ?) = ?")
            args += [len(id_prefix), id_prefix]
        return self._models(" AND ".join(where) or "1", args)

    def _models(self, where: str, args: list) -> list[LoggedModel]:
        rows = self.db.execute("SELECT m.model_id, m.name, m.source_run_id FROM logged_models m WHERE "
                               f"m.experiment_id = ? AND m.lifecycle_stage != 'deleted' AND ({where}) "
                               "ORDER BY m.creation_timestamp_ms DESC, m.model_id",
                               [self.experiment, *args]).fetchall()
        models = {row[0]: LoggedModel(*row) for row in rows}
        ids = list(models)
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            for model, key, value in self.db.execute("SELECT model_id, tag_key, tag_value FROM logged_model_tags "
                                                     f"WHERE model_id IN ({','.join('?' * len(chunk))})", chunk):
                models[model].tags[key] = value
        return list(models.values())

    def search_model_versions(self) -> list[Version]:
        return [Version(*row) for row in self.db.execute(
            "SELECT name, version, source FROM model_versions WHERE current_stage != 'Deleted_Internal' "
            "ORDER BY name, version")]


def open_reader(path: str, experiment: str) -> SqliteReader | None:
    """A reader of the sqlite store at `path`, or None when its tables are not the ones this reader knows."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        for table, columns in _COLUMNS.items():
            db.execute(f"SELECT {columns} FROM {table} LIMIT 0")
    except sqlite3.Error:
        db.close()
        return None
    return SqliteReader(db, experiment)


def experiment_id(path: str, name: str) -> str | None:
    """The id of the live experiment `name` ("" when there is none), or None when the store cannot be read so."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                             (name,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else ""
