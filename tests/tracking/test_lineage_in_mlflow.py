"""The lineage MLflow's UI shows, read through the REST API of a real tracking server the pipeline logged to: the
stage-3 run has its stage-2 parent's model as an input model, MLflow's source fields name gemctl and the commit,
run names tell two stage-3 runs apart, registry versions carry the stage/recipe/hash/commit and their logged model,
and the data run's dataset has the digest the stages consume, which is dvc.lock's. Beside it, on disk: each stage
checkpoint's model card, the evaluation's scores as DVC metrics and each stage's loss curve as a DVC plot, read
through the real dvc CLI, with `dvc status` clean after the evaluation rewrote the card."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline.project_copy import gemctl, make_project

pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).parent / "dvc")
EVAL = "eval=[{benchmark: gem-synth-qa, limit: 4}]"


def dvc(project: Path, *args: str) -> str:
    r = subprocess.run([DVC, *args], cwd=project, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def built(mlflow_server, tmp_path_factory):
    """The ci recipe through all stages and one evaluation, logging to the server; the DVC views taken then; and
    stage 3 trained again with another learning rate (a second stage-3 run and registry version)."""
    project = make_project(tmp_path_factory.mktemp("ui"))
    r = gemctl(project, "run", "--recipe", "ci", "--tracking-uri", mlflow_server.url, "-o", EVAL)
    assert r.returncode == 0, r.stdout + r.stderr
    first = {"status": dvc(project, "status", "--json"),
             "metrics": json.loads(dvc(project, "metrics", "show", "--json")),
             "diff": json.loads(dvc(project, "metrics", "diff", "--json")),
             "plots": json.loads(dvc(project, "plots", "show", "--json", "--split")),
             "card": (project / "runs/ci/stage3/README.md").read_text(),
             "lock": yaml.safe_load((project / "dvc.lock").read_text())["stages"],
             "summaries": {s: json.loads((project / f"runs/ci/{s}/summary.json").read_text())
                           for s in ("data", "stage1", "stage2", "stage3", "stage4")}}
    r = gemctl(project, "train", "stage3", "--recipe", "ci", "--tracking-uri", mlflow_server.url,
               "-o", "stages.stage3.lr=1e-4")
    assert r.returncode == 0, r.stdout + r.stderr
    return project, first


def runs_by_stage(server) -> dict[str, list[dict]]:
    exp = server.get("experiments/get-by-name", experiment_name="gemctl")["experiment"]["experiment_id"]
    found = server.post("runs/search", {"experiment_ids": [exp], "max_results": 100,
                                        "order_by": ["attributes.start_time ASC"]})["runs"]
    out: dict[str, list[dict]] = {}
    for found_run in found:
        # runs/get, as the UI's run page: a search leaves out the runs' model inputs and outputs
        run = server.get("runs/get", run_id=found_run["info"]["run_id"])["run"]
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        run["tags"] = tags
        out.setdefault(tags.get("gemctl.stage") or "eval", []).append(run)
    return out


def head(project: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()


def test_stage3_run_has_its_parent_model_as_input(mlflow_server, built):
    project, first = built
    runs = runs_by_stage(mlflow_server)
    s2_model = first["summaries"]["stage2"]["model_id"]
    s3 = runs["stage3"][0]
    assert s3["info"]["run_id"] == first["summaries"]["stage3"]["mlflow_run_id"]
    assert [m["model_id"] for m in s3["inputs"]["model_inputs"]] == [s2_model]
    # the other way: the parent model is stage 2's run's output, and its description links both stage-3 runs
    model = mlflow_server.get(f"logged-models/{s2_model}")["model"]
    assert model["info"]["source_run_id"] == runs["stage2"][0]["info"]["run_id"]
    note = {t["key"]: t["value"] for t in model["info"]["tags"]}["mlflow.note.content"]
    exp = s3["info"]["experiment_id"]
    links = ", ".join(f"[{r['info']['run_name']}](#/experiments/{exp}/runs/{r['info']['run_id']})"
                      for r in runs["stage3"])
    assert note.endswith(f"\n\nStarting point of: {links}") and note.startswith("The checkpoint of stage2 of recipe ci")
    assert [m["model_id"] for m in runs["stage2"][0]["outputs"]["model_outputs"]] == [s2_model]
    # stage 1 starts from the base weights: no input model
    assert not runs["stage1"][0].get("inputs", {}).get("model_inputs")


def test_source_fields_name_gemctl_and_the_commit(mlflow_server, built):
    project, _ = built
    runs = runs_by_stage(mlflow_server)
    for stage in ("data", "stage1", "stage2", "stage3", "stage4"):
        tags = runs[stage][0]["tags"]
        assert tags["mlflow.source.name"] == f"gemctl stage run {stage} --recipe ci"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == head(project) == tags["gemctl.git_commit"]
        assert "mlflow.source.git.repoURL" not in tags  # the throwaway project has no remote
        assert tags["mlflow.note.content"].startswith(f"{stage} of recipe ci (resolved recipe ")  # its description
    ev = runs["eval"][0]["tags"]
    assert ev["mlflow.source.name"] == "gemctl stage eval gem-synth-qa --recipe ci"
    assert ev["mlflow.source.git.commit"] == head(project)


def test_run_names_tell_the_two_stage3_runs_apart(mlflow_server, built):
    runs = runs_by_stage(mlflow_server)
    s3 = runs["stage3"]
    assert len(s3) == 2
    names = [r["info"]["run_name"] for r in s3]
    hashes = [r["tags"]["gemctl.recipe_hash"] for r in s3]
    assert hashes[0] != hashes[1]
    assert names == [f"stage3@ci\u00b7{h[:8]}" for h in hashes]


def test_registry_versions_carry_the_recipe_and_their_model(mlflow_server, built):
    project, _ = built
    runs = runs_by_stage(mlflow_server)
    versions = sorted(mlflow_server.get("model-versions/search", filter="name='ci-stage3'")["model_versions"],
                      key=lambda v: int(v["version"]))
    assert [v["version"] for v in versions] == ["1", "2"]
    for version, run in zip(versions, runs["stage3"], strict=True):
        tags = {t["key"]: t["value"] for t in version["tags"]}
        model_id = run["outputs"]["model_outputs"][0]["model_id"]
        assert tags == {"gemctl.stage": "stage3", "gemctl.recipe": "ci",
                        "gemctl.recipe_hash": run["tags"]["gemctl.recipe_hash"], "gemctl.git_commit": head(project),
                        "gemctl.run_name": run["info"]["run_name"]}
        # the version's source is its logged model (the sqlite registry keeps no separate model_id column)
        assert version["source"] == f"models:/{model_id}" and version["run_id"] == run["info"]["run_id"]
        assert run["tags"]["gemctl.recipe_hash"] in version["description"]
        # the logged model knows its version: its page shows it registered
        model = mlflow_server.get(f"logged-models/{model_id}")["model"]
        mtags = {t["key"]: t["value"] for t in model["info"]["tags"]}
        assert json.loads(mtags["mlflow.modelVersions"]) == [{"name": "ci-stage3", "version": version["version"]}]
        # its page's "Logged from" and description
        assert mtags["mlflow.source.name"] == "gemctl stage run stage3 --recipe ci"
        assert str(project / "runs/ci/stage3/model") in mtags["mlflow.note.content"]


def test_data_run_logs_the_digest_the_stages_consume(mlflow_server, built):
    project, first = built
    runs = runs_by_stage(mlflow_server)
    lock_md5 = next(o["md5"] for o in first["lock"]["data@ci"]["outs"] if o["path"] == "runs/ci/data")
    data = runs["data"][0]
    [out] = data["inputs"]["dataset_inputs"]
    assert {t["key"]: t["value"] for t in out["tags"]}["mlflow.data.context"] == "output"
    assert out["dataset"]["digest"] == lock_md5 == data["tags"]["gemctl.data_digest"]
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        [used] = runs[stage][0]["inputs"]["dataset_inputs"]
        assert (used["dataset"]["name"], used["dataset"]["digest"]) == (out["dataset"]["name"], lock_md5)


def test_model_card_describes_the_checkpoint_and_its_scores(built):
    project, first = built
    card = first["card"]
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "gemctl" and "stage3" in front["tags"] and front["datasets"] == ["gem-synth:ci"]
    assert "base_model" not in front  # the tiny backbone is random-init
    s3, s2 = first["summaries"]["stage3"], first["summaries"]["stage2"]
    lock = first["lock"]
    assert f"| steps | {s3['step']} |" in card
    assert f"| trainable groups | {', '.join(s3['trainable'])} |" in card
    assert str((project / "runs/ci/stage2/model").resolve()) in card and s2["model_id"] in card
    assert next(o["md5"] for o in lock["data@ci"]["outs"] if o["path"] == "runs/ci/data") in card
    assert f"git commit `{head(project)}`" in card and s3["recipe_hash"] in card
    # the evaluation that ran after the stage rewrote the card with its score
    results = json.loads((project / "runs/ci/eval/gem-synth-qa/results.json").read_text())
    row = next(line for line in card.splitlines() if line.startswith("| gem-synth-qa |"))
    assert row.split(" | ")[1:4] == [results["metric"], f"{results['overall']:.4f}", "4"]
    # every stage checkpoint has one; the data folder has none
    assert all((project / f"runs/ci/{s}/README.md").is_file() for s in ("stage1", "stage2", "stage4"))


def test_dvc_status_stays_clean_after_the_evaluation_rewrote_the_card(built):
    _, first = built
    assert json.loads(first["status"]) == {}


def test_evaluation_scores_are_dvc_metrics(built):
    project, first = built
    results = json.loads((project / "runs/ci/eval/gem-synth-qa/results.json").read_text())
    shown = first["metrics"][""]["data"]["runs/ci/eval/gem-synth-qa.metrics.json"]["data"]
    assert shown[results["metric"]] == pytest.approx(results["overall"])
    assert shown["items"] == 4
    assert set(results["categories"]) <= set(shown)
    # against HEAD (the metrics file is not committed yet): every metric is new
    diff = first["diff"]["runs/ci/eval/gem-synth-qa.metrics.json"]
    assert diff[results["metric"]] == {"old": None, "new": pytest.approx(results["overall"])}


def test_loss_curves_are_dvc_plots(mlflow_server, built):
    project, first = built
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        path = f"runs/ci/{stage}.loss.csv"
        [plot] = first["plots"]["data"][path]
        rows = plot["anchor_definitions"]["<DVC_METRIC_DATA>"]
        assert plot["anchor_definitions"]["<DVC_METRIC_Y_LABEL>"] == "loss"
        assert [int(r["step"]) for r in rows] == [1, 2, 3]
        assert all(float(r["loss"]) > 0 for r in rows)
    # the curve is the run's loss history, point for point (the second stage-3 run's, which wrote it last)
    run_id = json.loads((project / "runs/ci/stage3/summary.json").read_text())["mlflow_run_id"]
    assert run_id != first["summaries"]["stage3"]["mlflow_run_id"]
    history = mlflow_server.get("metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    rows = list(csv.DictReader(io.StringIO((project / "runs/ci/stage3.loss.csv").read_text())))
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == \
        [(m["step"], pytest.approx(m["value"])) for m in sorted(history, key=lambda m: m["step"])]
