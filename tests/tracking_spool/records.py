"""What the outage tests log (a stage's run with its checkpoint, an evaluation), and everything a store holds about
one run, in a form two runs can be compared by: ids, paths and times replaced by placeholders."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mlflow import MlflowClient

from gemctl.project import Project
from gemctl.recipe import resolve
from gemctl.tracking import StageRun, log_evaluation

STEPS = 8
# differ between any two runs by design: the spool key of an evaluation, and the version numbers of the registry
VOLATILE_TAGS = {"gemctl.record", "mlflow.modelVersions"}


def loss_parts(step: int) -> dict[str, float]:
    return {"loss": 1.0 / step, "loss_lm": 0.5 / step + 0.125, "loss_depth": step * 0.01}


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def checkpoint(project: Project, name: str) -> Path:
    """A stage's output folder as the trainer leaves it before lineage: model/ and a summary without run ids."""
    out = project.root / "runs" / "ci" / name
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "model" / "gem_config.json").write_text("{}\n")
    (out / "summary.json").write_text(json.dumps({"stage": "stage1", "step": STEPS, "status": "completed"}))
    return out / "model"


def stage(project: Project, name: str, outage=None, down_after: int = STEPS) -> tuple[str, Path]:
    """Stage 1's logging as the trainer and stage runner do it (StageRun; metrics delivered after every step; the
    checkpoint logged, registered and carded; the summary written with the run id), `outage()` after `down_after`
    steps. Returns the run id and the checkpoint."""
    recipe = resolve(project.recipes_dir, "ci")
    ckpt = checkpoint(project, name)
    with StageRun(project, recipe, "stage1", work_dir=project.root / "resume" / name) as run:
        for step in range(1, STEPS + 1):
            run.log_metrics(loss_parts(step), step)
            run.flush()
            if step == down_after and outage:
                outage()
        model_id = run.log_checkpoint(ckpt.resolve(), STEPS)
        summary = json.loads((ckpt.parent / "summary.json").read_text())
        summary.update(mlflow_run_id=run.run_id, model_id=model_id)
        (ckpt.parent / "summary.json").write_text(json.dumps(summary))
    return run.run_id, ckpt


def evaluation(project: Project, ckpt: Path, model_id: str | None, name: str) -> tuple[str | None, str]:
    """An evaluation's record (log_evaluation) of fixed results; returns the run id (None: spooled) and its key."""
    out = project.root / "evals" / name
    out.mkdir(parents=True, exist_ok=True)
    results = {"metric": "accuracy", "overall": 0.625, "categories": {"count": 0.5, "depth": 0.75},
               "counts": {"items": 8, "unparsable": 1, "undecodable": 0}}
    (out / "results.json").write_text(json.dumps(results))
    (out / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "answer": "A"}) + "\n" for i in range(8)))
    (out / "videos").mkdir(exist_ok=True)
    (out / "videos" / "episode_0.mp4").write_bytes(bytes(range(256)) * 64)
    return log_evaluation(project, results=results, out_dir=out, benchmark="cv-bench", recipe="ci",
                          checkpoint=ckpt.resolve(), model_id=model_id, plan={"limit": 8, "shards": 1})


def record(uri: str, run_id: str, *, paths: tuple[Path, ...] = ()) -> dict:
    """Everything the store holds about a run: its fields, params, tags, metric histories, inputs, its logged
    models (tags, metrics) and their registry versions, its artifacts (path, size). Run and model ids and the given
    paths become placeholders."""
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    models = [o.model_id for o in run.outputs.model_outputs] if run.outputs else []
    swaps = [(run_id, "<run>"), (run_id[:12], "<run>")] + [(m, "<model>") for m in models]
    swaps += [(str(p), "<checkpoint>") for p in paths]

    def norm(value):
        value = str(value)
        for old, new in swaps:
            value = value.replace(old, new)
        return value

    def artifacts(path=None):
        out = []
        for f in client.list_artifacts(run_id, path):
            out += artifacts(f.path) if f.is_dir else [(f.path, f.file_size)]
        return out

    out = {
        "name": run.info.run_name, "status": run.info.status, "params": run.data.params,
        "tags": {k: norm(v) for k, v in run.data.tags.items() if k not in VOLATILE_TAGS},
        "metrics": {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
                    for k in sorted(run.data.metrics)},
        "inputs": sorted((d.dataset.name, d.dataset.digest, sorted(t.value for t in d.tags))
                         for d in run.inputs.dataset_inputs),
        "model_inputs": sorted(norm(m.model_id) for m in run.inputs.model_inputs),
        "outputs": sorted(o.step for o in run.outputs.model_outputs) if run.outputs else [],
        "artifacts": sorted(artifacts()),
        "models": [],
    }
    for model_id in models:
        m = client.get_logged_model(model_id)
        versions = [v for v in client.search_model_versions(f"name = '{m.name}'") if v.run_id == run_id]
        out["models"].append({
            "name": m.name, "status": str(m.status),
            "tags": {k: norm(v) for k, v in m.tags.items() if k not in VOLATILE_TAGS},
            "registered": [(v.source == f"models:/{model_id}", v.model_id == model_id, v.tags, norm(v.description))
                           for v in versions],
            "registered_in_tag": bool(m.tags.get("mlflow.modelVersions")),
        })
    return out


def card(ckpt: Path, run_id: str, paths: tuple[Path, ...] = ()) -> str:
    """A checkpoint's model card, its run's and model's ids (whole or prefixes) and the given paths replaced."""
    text = (ckpt.parent / "README.md").read_text()
    for p in paths:
        text = text.replace(str(p), "<checkpoint>")
    text = text.replace(run_id, "<run>").replace(run_id[:12], "<run>")
    return re.sub(r"m-[0-9a-f]{32}", "<model>", text)


if __name__ == "__main__":  # an evaluation in a process of its own: `python -m tests.tracking_spool.records ROOT`
    project = Project(Path(sys.argv[1]))
    summary = json.loads((project.root / "runs/ci/reference/summary.json").read_text())
    run_id, key = evaluation(project, project.root / "runs/ci/reference/model", summary["model_id"], "full")
    print(json.dumps({"run_id": run_id, "key": key}))
