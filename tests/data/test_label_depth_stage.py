"""A recipe's set with `depth_model` instead of depth: DVC's label_depth stage labels it (stages/label_depth.py, the
code of `gemctl data label-depth`) before the data stage, which reads the labels as the set's depth root. An unchanged
model and image tree is skipped by DVC; another model labels again; bad input stops before anything runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gem_stages.data.config import AnnotationSet
from gem_stages.errors import InputError
from gem_stages.label_depth import done_marker, label_shard, list_images, shard_files
from tests.data.test_data_mixture import pixels, turns
from tests.data.test_label_depth import _depth_anything
from tests.pipeline.project_copy import env, gemctl, make_project

IMAGES = 4


def _user_set(root: Path) -> Path:
    """images/0..3.png and their annotations, no depth."""
    (root / "images").mkdir(parents=True)
    for k in range(IMAGES):
        Image.fromarray(pixels(k)).save(root / "images" / f"{k}.png")
    ann = root / "set.jsonl"
    ann.write_text("".join(json.dumps({"id": f"s{k}", "image": f"images/{k}.png",
                                       "conversations": turns("<image>\n", k)}) + "\n" for k in range(IMAGES)))
    return ann


def _recipe(project: Path, ann: Path, **aset) -> None:
    data = {"source": "files", "files": [{"name": "u", "annotations": str(ann), "data_path": str(ann.parent),
                                          **aset}]}
    (project / "recipes" / "own.yaml").write_text(yaml.safe_dump({"extends": "ci", "data": data}))


def _labels(project: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((project / "runs" / "own" / "depth" / "0" / "depth").glob("*.png"))}


def test_a_set_labelled_by_the_pipeline_trains_and_relabels_only_for_another_model(tmp_path):
    project = make_project(tmp_path / "p")
    ann = _user_set(tmp_path / "u")
    first = _depth_anything(tmp_path / "model-a")
    _recipe(project, ann, depth_model=str(first))
    r = gemctl(project, "train", "stage1", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran label_depth, data, stage1" in r.stdout, r.stdout
    labels = _labels(project)
    assert sorted(labels) == [f"{k}.png" for k in range(IMAGES)]
    for name in labels:
        with Image.open(project / "runs" / "own" / "depth" / "0" / "depth" / name) as png:
            assert png.mode.startswith("I;16") and png.size == pixels(0).shape[1::-1]
    dataset = json.loads((project / "runs" / "own" / "data" / "dataset.json").read_text())
    (entry,) = dataset["annotation_sets"]
    assert entry["images_with_depth"] == IMAGES and entry["images_without_depth"] == 0
    assert entry["depth_root"] == str((project / "runs" / "own" / "depth" / "0").resolve())
    assert json.loads((project / "runs" / "own" / "stage1" / "summary.json").read_text())["status"] == "completed"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "runs/own/depth" in {d["path"] for d in lock["data@own"]["deps"]}
    recorded = json.loads((project / "runs" / "own" / "depth" / "labels.json").read_text())["sets"]
    assert [(s["index"], s["written"], s["unreadable"]) for s in recorded] == [(0, IMAGES, [])]

    r = gemctl(project, "train", "stage1", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stage1@own is up to date" in r.stdout, r.stdout
    assert _labels(project) == labels  # not even rewritten
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json", "label_depth@own"],
                            cwd=project, capture_output=True, text=True, env=env())
    assert json.loads(status.stdout) == {}, status.stdout + status.stderr

    # an image added to the tree and one changed: those two are labelled (the labels of the same model are kept),
    # the data stage re-reads
    Image.fromarray(pixels(IMAGES)).save(tmp_path / "u" / "images" / f"{IMAGES}.png")
    Image.fromarray(255 - pixels(0)).save(tmp_path / "u" / "images" / "0.png")
    r = gemctl(project, "train", "data", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran label_depth, data" in r.stdout, r.stdout
    grown = _labels(project)
    assert sorted(grown) == sorted([*labels, f"{IMAGES}.png"])
    assert {n: grown[n] for n in labels if n != "0.png"} == {n: labels[n] for n in labels if n != "0.png"}
    assert grown["0.png"][0] != labels["0.png"][0]
    Image.fromarray(pixels(0)).save(tmp_path / "u" / "images" / "0.png")
    (tmp_path / "u" / "images" / f"{IMAGES}.png").unlink()
    r = gemctl(project, "train", "stage1", "--recipe", "own")  # the added image removed again: its label goes
    assert r.returncode == 0, r.stdout + r.stderr
    labels = _labels(project)
    assert sorted(labels) == [f"{k}.png" for k in range(IMAGES)]

    second = _depth_anything(tmp_path / "model-b")  # the same architecture, other weights
    import torch
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(second)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    model.save_pretrained(second)
    _recipe(project, ann, depth_model=str(second))
    r = gemctl(project, "train", "stage1", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran label_depth, data, stage1" in r.stdout, r.stdout
    relabelled = _labels(project)
    assert sorted(relabelled) == sorted(labels)
    assert all(relabelled[n][0] != labels[n][0] for n in labels)
    assert any(relabelled[n][1] != labels[n][1] for n in labels)


def test_a_recipe_that_labels_nothing_starts_no_labelling_job(tmp_path):
    project = make_project(tmp_path / "p")
    r = gemctl(project, "train", "data", "--recipe", "ci", "--force")  # --force on a first run: labels first too
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((project / "runs" / "ci" / "depth" / "labels.json").read_text()) == {"sets": []}
    assert not (project / ".gemctl" / "jobs" / "ci" / "label_depth").exists()


def _not_a_depth_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


@pytest.mark.parametrize("case, expected", [
    ("missing model", "depth model '{m}' (data.files[0].depth_model) is not an existing directory"),
    ("not a depth model", "data.files[0].depth_model {m} is a 'bert' model, not a depth estimator"),
    ("no images", "data.files[0] image root {u} holds no images"),
])
def test_bad_labelling_input_is_one_line_and_records_nothing(tmp_path, case, expected):
    project = make_project(tmp_path / "p")
    ann = _user_set(tmp_path / "u")
    model = tmp_path / "model"
    if case == "not a depth model":
        _not_a_depth_model(model)
    elif case == "no images":
        _depth_anything(model)
        for p in (tmp_path / "u" / "images").iterdir():
            p.unlink()
    _recipe(project, ann, depth_model=str(model))
    r = gemctl(project, "train", "stage1", "--recipe", "own")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected.format(m=model, u=(tmp_path / "u").resolve()) in lines[0], r.stderr
    assert not (project / "dvc.lock").exists() and not (project / "runs" / "own" / "depth").exists()


def test_a_set_has_either_depth_or_a_model_to_label_it():
    with pytest.raises(ValueError, match="has both depth_root and depth_model"):
        AnnotationSet(name="u", annotations="a.jsonl", depth_root="d", depth_model="m")


def test_an_unreadable_image_stops_or_is_skipped_and_counted(tmp_path):
    model = _depth_anything(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        Image.fromarray(pixels(k)).save(images / f"{k}.png")
    (images / "3.png").write_bytes((images / "3.png").read_bytes()[:40])  # truncated: header only

    with pytest.raises(InputError, match=f"^{images / '3.png'}: not a readable image"):
        label_shard(images, tmp_path / "stop", model, 0, 1, "cpu")
    out = tmp_path / "skip"
    r = label_shard(images, out, model, 0, 1, "cpu", on_error="skip", max_skipped=0.25)
    assert (r["written"], r["unreadable"]) == (3, ["3.png"])
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["0.png", "1.png", "2.png"]
    again = label_shard(images, out, model, 0, 1, "cpu", on_error="skip", max_skipped=0.25)
    assert (again["written"], again["skipped"], again["unreadable"]) == (0, 3, ["3.png"])  # counted again, no work
    with pytest.raises(InputError, match=r"^1 of 4 images unreadable \(more than max_skipped 0.2\)"):
        label_shard(images, tmp_path / "strict", model, 0, 1, "cpu", on_error="skip",
                    max_skipped=0.2)
    assert np.asarray(Image.open(out / "depth" / "0.png")).shape == pixels(0).shape[:2]


def _labelled_set_with_a_truncated_image(tmp_path):
    """A project whose recipe `own` labels a set in which image 2.png is cut short; the project and that image."""
    project = make_project(tmp_path / "p")
    ann = _user_set(tmp_path / "u")
    bad = tmp_path / "u" / "images" / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])
    _recipe(project, ann, depth_model=str(_depth_anything(tmp_path / "model")))
    return project, bad


def test_an_unreadable_image_in_a_labelled_set_stops_the_pipeline_with_one_line(tmp_path):
    project, bad = _labelled_set_with_a_truncated_image(tmp_path)
    r = gemctl(project, "train", "data", "--recipe", "own")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"label_depth@own: {bad}: not a readable image" in lines[0], r.stderr
    assert not (project / "dvc.lock").exists()


@pytest.mark.parametrize("shards", [1, 3])
def test_with_on_error_skip_the_stage_labels_the_rest_and_counts_the_unreadable(tmp_path, shards):
    project, bad = _labelled_set_with_a_truncated_image(tmp_path)
    recipe = yaml.safe_load((project / "recipes" / "own.yaml").read_text())
    recipe["data"].update(on_error="skip", max_skipped=0.25, depth_shards=shards)
    (project / "recipes" / "own.yaml").write_text(yaml.safe_dump(recipe))
    if shards > 1:  # max_skipped is the whole set's: the bad image's own shard holds a larger share of bad images
        files = list_images(bad.parents[1])
        mine = next(shard_files(files, k, shards) for k in range(shards) if "images/2.png" in
                    shard_files(files, k, shards))
        assert 1 / len(mine) > 0.25 >= 1 / len(files)
    r = gemctl(project, "train", "data", "--recipe", "own")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(_labels(project)) == ["0.png", "1.png", "3.png"]
    (entry,) = json.loads((project / "runs" / "own" / "depth" / "labels.json").read_text())["sets"]
    assert (entry["written"], entry["unreadable"]) == (3, ["images/2.png"])
    depth = project / "runs" / "own" / "depth" / "0"
    assert all(done_marker(depth, k, shards).is_file() for k in range(shards))
    summary = json.loads((project / "runs" / "own" / "data" / "summary.json").read_text())

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    assert {k: v for k, v in metrics.items() if k.startswith("data/depth_labels/")} == {
        "data/depth_labels/written": 3.0, "data/depth_labels/skipped": 0.0, "data/depth_labels/unreadable": 1.0}


def test_the_data_stage_run_by_hand_before_labelling_names_the_command_that_labels(tmp_path):
    project = make_project(tmp_path / "p")
    _recipe(project, _user_set(tmp_path / "u"), depth_model=str(_depth_anything(tmp_path / "model")))
    r = gemctl(project, "stage", "run", "data", "--recipe", "own")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("data.files[0] (u) is labelled by the label_depth stage, which has not run: run "
                                "`gemctl train data --recipe own`") in lines[0], r.stderr
    assert not (project / "runs" / "own" / "data").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_the_stage_labels_a_set_as_one_slurm_array_of_depth_shards_jobs(slurm_cluster, tmp_path):
    project = make_project(tmp_path / "p")
    ann = _user_set(tmp_path / "u")
    data = {"source": "files", "depth_shards": 3,
            "files": [{"name": "u", "annotations": str(ann), "depth_model": str(_depth_anything(tmp_path / "m"))}]}
    (project / "recipes" / "own.yaml").write_text(yaml.safe_dump({"extends": "ci", "data": data}))
    r = gemctl(project, "train", "data", "--recipe", "own", "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran label_depth, data" in r.stdout, r.stdout
    assert sorted(_labels(project)) == [f"{k}.png" for k in range(IMAGES)]
    (entry,) = json.loads((project / "runs" / "own" / "depth" / "labels.json").read_text())["sets"]
    assert (entry["written"], entry["skipped"], entry["unreadable"]) == (IMAGES, 0, [])
    status = gemctl(project, "status", "--json")
    jobs = [j for j in json.loads(status.stdout) if j["stage"] == "label_depth"]
    assert sorted(j["point"] for j in jobs) == [f"own/0/shard-{k}-of-3" for k in range(3)], jobs
    assert {j["kind"] for j in jobs} == {"slurm"} and {j["state"] for j in jobs} == {"COMPLETED"}
    assert len({j["job_id"].split("_")[0] for j in jobs}) == 1  # one array

    Image.fromarray(pixels(IMAGES)).save(tmp_path / "u" / "images" / f"{IMAGES}.png")  # in one shard only
    files = list_images(tmp_path / "u")
    grown = next(k for k in range(3) if "images/4.png" in shard_files(files, k, 3))
    r = gemctl(project, "train", "data", "--recipe", "own", "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = [j for j in json.loads(gemctl(project, "status", "--json").stdout) if j["stage"] == "label_depth"]
    assert len(jobs) == 4 and jobs[-1]["point"] == f"own/0/shard-{grown}-of-3", jobs  # the other shards: done
    assert sorted(_labels(project)) == [f"{k}.png" for k in range(IMAGES + 1)]


@pytest.mark.slurm
def test_the_labelling_jobs_resources_are_checked_against_the_cluster_before_anything_runs(slurm_cluster, tmp_path):
    project = make_project(tmp_path / "p")
    _recipe(project, _user_set(tmp_path / "u"), depth_model=str(_depth_anything(tmp_path / "m")))
    r = gemctl(project, "train", "data", "--recipe", "own", "--executor", "slurm",
               "-o", "stage_resources.label_depth.gpus_per_node=1")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage_resources.label_depth: ") and \
        "gpus_per_node=1 but the nodes of partition 'debug' have at most 0" in lines[0], r.stderr
    assert not (project / "dvc.lock").exists() and not (project / ".gemctl" / "jobs" / "own").exists()


@pytest.mark.slurm
def test_a_dry_run_shows_the_labelling_array_before_the_stage(slurm_cluster, tmp_path):
    project = make_project(tmp_path / "p")
    ann = _user_set(tmp_path / "u")
    _recipe(project, ann, depth_model=str(_depth_anything(tmp_path / "m")))
    r = gemctl(project, "train", "data", "--recipe", "own", "--executor", "slurm", "--dry-run",
               "-o", "data.depth_shards=4", "-o", "stage_resources.label_depth.cpus_per_task=2")
    assert r.returncode == 0, r.stdout + r.stderr
    labelling, data = r.stdout.split("data@own (hash")
    summary = " ".join(labelling.split())  # the console folds long lines
    assert "label_depth@own (hash" in summary and "1 set(s) x 4 job(s) (data.depth_shards), each 1 node(s) x 1 " \
        "task(s), 0 GPU(s)/node, 2 CPU(s)/task" in summary, r.stdout
    assert "#SBATCH --array=0-3%4" in labelling and "#SBATCH --cpus-per-task=2" in labelling, labelling
    assert "#SBATCH --array" not in data and "#SBATCH --cpus-per-task=1" in data, data
    assert not (project / "dvc.lock").exists() and not (project / ".gemctl" / "jobs").exists()
