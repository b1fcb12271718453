"""The data stage's counts (records, skipped by reason, samples) reach its MLflow run."""

import json

import yaml

from tests.data.test_data_mixture import make_root, turns, write_set
from tests.pipeline.project_copy import gemctl, make_project


def test_skipped_records_are_counted_in_mlflow(tmp_path):
    project = make_project(tmp_path / "p")
    root = make_root(tmp_path / "u")
    samples = [{"id": f"s{i}", "image": f"images/{i}.png", "conversations": turns("<image>\n", i)} for i in range(8)]
    samples[3]["image"] = "images/missing.png"
    aset = write_set(root, "u", samples)
    recipe = {"extends": "ci", "data": {"source": "files", "on_error": "skip", "max_skipped": 0.2, "files": [
        {"name": aset.name, "annotations": aset.annotations, "data_path": aset.data_path,
         "depth_root": aset.depth_root}]}}
    (project / "recipes" / "own.yaml").write_text(yaml.safe_dump(recipe))
    r = gemctl(project, "train", "data", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((project / "runs" / "own" / "data" / "summary.json").read_text())

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    assert metrics["data/records"] == 8 and metrics["data/skipped"] == 1 and metrics["data/samples"] == 7
    reasons = {k: v for k, v in metrics.items() if k.startswith("data/skipped/")}
    assert list(reasons.values()) == [1.0] and summary["counts"]["skipped_by_reason"] == {
        k.removeprefix("data/skipped/"): 1 for k in reasons}
