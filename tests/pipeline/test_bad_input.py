"""Bad input through the real pipeline: one line naming the problem, exit 2, nothing recorded or half-written."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from .project_copy import gemctl, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("bad"))


def files_dataset(root, name, *, corrupt=False, depth_shape=(32, 32)):
    d = root / "userdata" / name
    (d / "images").mkdir(parents=True)
    (d / "depth").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "images" / "a.png")
    if corrupt:
        (d / "images" / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.full(depth_shape, 1500, np.uint16)).save(d / "depth" / "a.png")
    sample = {"id": "0", "image": "a.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A box."}]}
    (d / "train.jsonl").write_text(json.dumps(sample) + "\n")
    return d


def recipe_with_files(project, name, d):
    # check_images: header reads each image's and depth map's header at ingest (the default, stat, meets a bad one
    # only when training reads it): these cases are refused before anything is recorded
    text = {"extends": "ci", "data": {"source": "files", "check_images": "header", "files": [
        {"name": "user", "annotations": str(d / "train.jsonl"), "data_path": str(d / "images"),
         "depth_root": str(d)}]}}
    (project / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(text))


def assert_refused(project, r, recipe, message):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr
    lock = project / "dvc.lock"
    recorded = yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}
    # label_depth (it labels nothing here) ran and is done; what failed after it is not recorded
    assert not [s for s in recorded if s.endswith(f"@{recipe}") and not s.startswith("label_depth@")], \
        "a failed stage was recorded as done"
    leftovers = [p.name for p in (project / "runs" / recipe).iterdir()] if (project / "runs" / recipe).is_dir() else []
    assert set(leftovers) <= {"params.json", "init", "data.error.json", "stage1.error.json", "stage2.error.json",
                              ".gitignore", "depth"}, leftovers
    if "depth" in leftovers:
        assert json.loads((project / "runs" / recipe / "depth" / "labels.json").read_text()) == {"sets": []}


def test_missing_data_directory(project, tmp_path):
    (project / "recipes" / "missing.yaml").write_text(yaml.safe_dump({"extends": "ci", "data": {
        "source": "files", "files": [{"name": "x", "annotations": str(tmp_path / "nope.jsonl"),
                                      "data_path": str(tmp_path / "nope")}]}}))
    r = gemctl(project, "train", "stage1", "--recipe", "missing")
    assert_refused(project, r, "missing", "nope")


def test_empty_data_directory(project):
    d = project / "userdata" / "empty"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("")
    (project / "recipes" / "empty.yaml").write_text(yaml.safe_dump({"extends": "ci", "data": {
        "source": "files", "files": [{"name": "x", "annotations": str(d / "train.jsonl"), "data_path": str(d)}]}}))
    r = gemctl(project, "train", "stage1", "--recipe", "empty")
    assert_refused(project, r, "empty", "empty")


def test_unreadable_image(project):
    recipe_with_files(project, "corrupt", files_dataset(project, "corrupt", corrupt=True))
    r = gemctl(project, "train", "stage1", "--recipe", "corrupt")
    assert_refused(project, r, "corrupt", "a.png")


def test_depth_size_mismatch(project):
    recipe_with_files(project, "mismatch", files_dataset(project, "mismatch", depth_shape=(16, 32)))
    r = gemctl(project, "train", "stage1", "--recipe", "mismatch")
    assert_refused(project, r, "mismatch", "regenerate the depth at the image's size")


def test_stage_before_its_upstream_exists(project):
    r = gemctl(project, "recipe", "show", "ci")  # renders nothing: use train on data only, then skip a stage
    assert r.returncode == 0
    r = gemctl(project, "train", "data", "--recipe", "ci")
    assert r.returncode == 0, r.stderr
    r = gemctl(project, "stage", "run", "stage2", "--recipe", "ci")
    assert r.returncode == 2
    assert "starts from stage1's checkpoint, which does not exist" in r.stderr
    assert not (project / "runs" / "ci" / "stage2").exists()


def test_unknown_recipe_and_override_leave_nothing(project):
    r = gemctl(project, "train", "stage3", "--recipe", "tinyy")
    assert r.returncode == 2 and "unknown recipe 'tinyy'" in r.stderr
    r = gemctl(project, "train", "stage3", "--recipe", "ci", "-o", "stages.stage3.lr")
    assert r.returncode == 2 and "bad override" in r.stderr
    assert not (project / "runs" / "tinyy").exists()
