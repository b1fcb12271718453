"""The tiny recipe through all four stages via DVC on the CPU, with lineage in the project's MLflow store."""

import hashlib
import json

import pytest
import yaml

from .project_copy import gemctl

pytestmark = pytest.mark.slow


def mlflow_runs(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["gemctl"], output_format="list")


def test_all_stages_run_and_record_lineage(built_project):
    project, first = built_project
    for stage in ("data", "stage1", "stage2", "stage3", "stage4"):
        summary = json.loads((project / "runs" / "ci" / stage / "summary.json").read_text())
        assert summary["mlflow_run_id"]
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        summary = json.loads((project / "runs" / "ci" / stage / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["step"] == 3
        assert (project / "runs" / "ci" / stage / "model").is_dir()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {f"{s}@ci" for s in ("data", "stage1", "stage2", "stage3", "stage4")} <= set(lock["stages"])

    runs = {r.data.tags["gemctl.stage"]: r for r in mlflow_runs(project)}
    assert set(runs) == {"data", "stage1", "stage2", "stage3", "stage4"}
    s3 = runs["stage3"]
    assert s3.info.status == "FINISHED"
    assert s3.data.params["stages.stage3.loss.depth"] == "0.1"
    assert s3.data.tags["gemctl.recipe"] == "ci" and len(s3.data.tags["gemctl.recipe_hash"]) == 12
    assert s3.data.tags["gemctl.parent_run_id"] == runs["stage2"].info.run_id
    assert s3.data.tags["gemctl.git_dirty"] in ("true", "false") and len(s3.data.tags["gemctl.git_commit"]) == 40
    data_md5 = lock["stages"]["data@ci"]["outs"][0]["md5"]
    assert [d.dataset.digest for d in s3.inputs.dataset_inputs] == [data_md5]
    assert {"loss", "depth", "lm"} <= set(s3.data.metrics)
    assert runs["stage4"].data.metrics.get("action") is not None


def test_second_train_is_a_noop(built_project):
    project, _ = built_project
    before = len(mlflow_runs(project))
    r = gemctl(project, "train", "stage3", "--recipe", "ci")
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
    assert len(mlflow_runs(project)) == before


def outputs(project, stages=("stage3", "stage4")):
    """DVC's digest of each stage's output and the sha256 of every file in it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    digests = {s: lock[f"{s}@ci"]["outs"][0]["md5"] for s in stages}
    files = {str(f.relative_to(project)): hashlib.sha256(f.read_bytes()).hexdigest()
             for s in stages for f in sorted((project / "runs" / "ci" / s).rglob("*")) if f.is_file()}
    return digests, files


def test_changed_stage3_param_reruns_stage3_and_4_only(built_project):
    project, _ = built_project
    first_digests, first_files = outputs(project)
    assert len(first_files) > 2
    r = gemctl(project, "run", "--recipe", "ci", "-o", "stages.stage3.lr=1e-4")
    assert r.returncode == 0, r.stdout + r.stderr
    new = [run for run in mlflow_runs(project) if run.data.params.get("stages.stage3.lr") == "0.0001"]
    assert sorted(run.data.tags["gemctl.stage"] for run in new) == ["stage3", "stage4"]
    # back to the original settings: DVC restores both from its run-cache, nothing trains
    before = len(mlflow_runs(project))
    assert outputs(project)[0] != first_digests
    r = gemctl(project, "run", "--recipe", "ci")
    assert r.returncode == 0, r.stderr
    assert len(mlflow_runs(project)) == before
    digests, files = outputs(project)
    assert digests == first_digests and files == first_files  # the first build's outputs, byte for byte


def test_recipes_coexist_and_another_store_is_honoured(built_project, tmp_path):
    project, _ = built_project
    ci_stage1 = (project / "runs" / "ci" / "stage1" / "summary.json").read_text()
    (project / "recipes" / "ci2.yaml").write_text("extends: ci\nseed: 5\n")
    other = tmp_path / "other-store" / "mlflow.db"
    r = gemctl(project, "train", "stage1", "--recipe", "ci2", "--tracking-uri", f"sqlite:///{other}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "runs" / "ci2" / "stage1" / "model").is_dir()
    assert (project / "runs" / "ci" / "stage1" / "summary.json").read_text() == ci_stage1  # untouched
    assert yaml.safe_load((project / "params.yaml").read_text())["recipes"] == ["ci", "ci2"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{other}")
    stages = sorted(x.data.tags["gemctl.stage"] for x in
                    mlflow.search_runs(experiment_names=["gemctl"], output_format="list"))
    assert stages == ["data", "stage1"]
    assert all(x.data.tags["gemctl.recipe"] != "ci2" for x in mlflow_runs(project))  # nothing in the default
    r = gemctl(project, "train", "stage3", "--recipe", "ci")
    assert r.returncode == 0 and "up to date" in r.stdout
