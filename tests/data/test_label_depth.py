"""`gemctl data label-depth`: a tiny random-init Depth Anything (built from a config, saved with save_pretrained)
labels an image tree in the layout the loader reads; a re-run does no work; a killed shard resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_stages.data.depth_png import load_depth_m
from gem_stages.data.sample_format import find_depth
from gem_stages.errors import InputError
from gem_stages.label_depth import (
    NEAR_MM,
    done_marker,
    label_shard,
    list_images,
    plan,
    shard_files,
    to_millimetres,
)
from tests.pipeline.project_copy import GEMCTL
from tests.pipeline.project_copy import env as project_env

# (relative path, width, height): two folders, JPEG and PNG, different sizes and aspect ratios
IMAGES = [("a/kitchen_000.jpg", 40, 30), ("a/kitchen_001.jpg", 40, 30), ("a/desk.png", 64, 48),
          ("b/c/shelf_0.jpg", 30, 52), ("b/c/shelf_1.jpeg", 56, 56), ("b/table.png", 33, 47)]


def _depth_anything(folder: Path) -> Path:
    """A random-init Depth Anything with a 4-layer, 32-wide DINOv2 backbone (~50k parameters)."""
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessorPil,
    )

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16] * 4,
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # as Depth Anything's own processor: keep the aspect ratio, sides multiples of 14
    DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False, resample=Image.BICUBIC).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory) -> Path:
    return _depth_anything(tmp_path_factory.mktemp("depth-anything"))


@pytest.fixture
def image_tree(tmp_path) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for rel, w, h in IMAGES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / rel)
    return root


def _env() -> dict[str, str]:
    # the project's environment with its bin/ first on PATH, as an activated venv has it: a user's dvc.yaml
    # stage calls `gemctl` by name
    env = project_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _label(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GEMCTL, "data", "label-depth", *args], cwd=tmp_path, capture_output=True, text=True,
                          env=_env())


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "depth").iterdir()}


def test_labels_land_where_the_loader_reads_them_and_a_rerun_does_no_work(tmp_path, depth_model, image_tree):
    out = tmp_path / "labels"
    args = ["--images", str(image_tree), "--out", str(out), "--model", str(depth_model), "--shards", "2"]
    r = _label(tmp_path, *args, "--executor", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    files = list_images(image_tree)
    for k in range(2):
        assert f"shard {k}: {len(shard_files(files, k, 2))} labelled, 0 already done" in r.stdout, r.stdout
    assert sorted(shard_files(files, 0, 2) + shard_files(files, 1, 2)) == files
    assert sorted(p.name for p in (out / "depth").iterdir()) == sorted(Path(rel).stem + ".png" for rel, _, _ in IMAGES)
    for rel, w, h in IMAGES:
        path = find_depth(out, rel)  # the loader's rule: <depth_root>/depth/<basename>, else its .png
        assert path == out / "depth" / (Path(rel).stem + ".png")
        with Image.open(path) as png:
            assert png.mode in ("I;16", "I;16B", "I;16L") and png.size == (w, h)
        metres = load_depth_m(path)
        assert metres.shape == (h, w)
        valid = metres[metres > 0]
        # relative model: the nearest pixel at NEAR_MM, the others farther in proportion to 1/disparity
        assert valid.size and valid.min() == pytest.approx(NEAR_MM / 1000) and valid.max() <= 65.535
    assert done_marker(out, 0, 2).is_file() and done_marker(out, 1, 2).is_file()
    assert json.loads((out / ".label-depth" / "plan.json").read_text())["kind"] == "relative"

    # the written values are the estimator's prediction at the image's size, scaled as documented
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(depth_model)
    model = AutoModelForDepthEstimation.from_pretrained(depth_model).eval()
    with Image.open(image_tree / "a/desk.png") as image:
        image = image.convert("RGB")
        with torch.no_grad():
            prediction = model(**processor(images=image, return_tensors="pt"))
        pred = processor.post_process_depth_estimation(prediction, target_sizes=[(48, 64)])[0]["predicted_depth"]
    with Image.open(out / "depth" / "desk.png") as png:
        np.testing.assert_array_equal(np.asarray(png), to_millimetres(pred.numpy(), "relative"))

    before = _mtimes(out)
    r = _label(tmp_path, *args, "--executor", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 2 shard(s) done (6 images" in r.stdout and "nothing to do" in r.stdout
    assert _mtimes(out) == before
    assert not (out / ".label-depth" / "jobs").exists() or len(list((out / ".label-depth" / "jobs").rglob(
        "*_submitted.pkl"))) == 2  # the second run submitted no job


KILLABLE = """
import sys, threading
from pathlib import Path
from gem_stages.label_depth import label_shard

images, out, model, stop_after = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
written = []

def on_file(rel):
    written.append(rel)
    if len(written) == stop_after:
        (out / "reached").write_text(" ".join(written))
        threading.Event().wait()  # hold here, mid-shard, until the test kills this process

label_shard(images, out, model, 0, 1, "cpu", on_file=on_file)
"""


def test_a_killed_shard_resumes_without_redoing_finished_files(tmp_path, depth_model, image_tree):
    out = tmp_path / "labels"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(image_tree), str(out), str(depth_model), "2"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "reached").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the shard never reached its second file"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = (out / "reached").read_text().split()
    assert len(first) == 2 and not done_marker(out, 0, 1).exists()
    assert sorted(p.name for p in (out / "depth").iterdir()) == sorted(Path(r).stem + ".png" for r in first)
    before = _mtimes(out)

    result = label_shard(image_tree, out, depth_model, 0, 1, "cpu")
    assert result == {"status": "completed", "shard": 0, "written": 4, "skipped": 2, "unreadable": []}
    assert len(list((out / "depth").iterdir())) == len(IMAGES) and done_marker(out, 0, 1).is_file()
    assert {k: v for k, v in _mtimes(out).items() if k in before} == before  # the killed run's labels kept
    assert label_shard(image_tree, out, depth_model, 0, 1, "cpu")["written"] == 0


def test_bad_input_is_refused_in_one_line(tmp_path, depth_model, image_tree):
    (image_tree / "b" / "kitchen_000.png").write_bytes((image_tree / "a" / "desk.png").read_bytes())
    with pytest.raises(InputError, match=r"a/kitchen_000.jpg and b/kitchen_000.png would both be labelled "
                                         r"depth/kitchen_000.png"):
        list_images(image_tree)
    (image_tree / "b" / "kitchen_000.png").unlink()

    not_depth = tmp_path / "qwen"
    not_depth.mkdir()
    (not_depth / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    with pytest.raises(InputError, match="is a 'qwen3_vl' model, not a depth estimator"):
        plan(image_tree, tmp_path / "out", not_depth, list_images(image_tree))
    with pytest.raises(InputError, match="has no config.json"):
        plan(image_tree, tmp_path / "out", tmp_path, list_images(image_tree))

    out = tmp_path / "labels"
    plan(image_tree, out, depth_model, list_images(image_tree))
    other = _depth_anything(tmp_path / "other-model")
    with pytest.raises(InputError, match="holds labels of another model"):
        plan(image_tree, out, other, list_images(image_tree))

    (image_tree / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    r = _label(tmp_path, "--images", str(image_tree), "--out", str(tmp_path / "l2"), "--model", str(depth_model),
               "--executor", "debug")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.jpg: not a readable image" in lines[0], r.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_shards_run_as_one_slurm_array(slurm_cluster, tmp_path, depth_model, image_tree):
    from tests.conftest import TEST_PREFIX

    out = tmp_path / "labels"
    r = _label(tmp_path, "--images", str(image_tree), "--out", str(out), "--model", str(depth_model),
               "--shards", "3", "--executor", "slurm", "--job-name", TEST_PREFIX + "label-depth")
    assert r.returncode == 0, r.stdout + r.stderr
    files = list_images(image_tree)
    for k in range(3):
        assert f"shard {k}: {len(shard_files(files, k, 3))} labelled, 0 already done" in r.stdout, r.stdout
    assert len(list((out / "depth").iterdir())) == len(IMAGES)
    assert all(done_marker(out, k, 3).is_file() for k in range(3))
    # submitit names an array element's files <array id>_<index>_...: one array of three
    submitted = [p.name.split("_") for p in (out / ".label-depth" / "jobs").rglob("*_submitted.pkl")]
    assert len(submitted) == 3 and len({s[0] for s in submitted}) == 1 and {s[1] for s in submitted} == {"0", "1", "2"}


DVC_STAGE = """\
stages:
  depth-labels:
    cmd: gemctl data label-depth --images images --out labels --model depth-model --shards 2
    deps: [images, depth-model]
    outs:
      - labels/depth:
          persist: true  # DVC keeps finished labels when the stage re-runs: label-depth resumes from them
"""


@pytest.mark.slow
def test_usable_as_a_dvc_stage(tmp_path, depth_model, image_tree):
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(image_tree, repo / "images")
    shutil.copytree(depth_model, repo / "depth-model")
    (repo / "dvc.yaml").write_text(DVC_STAGE)
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, check=True, env=_env())
    r = subprocess.run([dvc, "repro"], cwd=repo, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((repo / "labels" / "depth").iterdir())) == len(IMAGES)
    before = _mtimes(repo / "labels")
    r = subprocess.run([dvc, "repro"], cwd=repo, capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and "didn't change, skipping" in r.stdout, r.stdout + r.stderr
    assert _mtimes(repo / "labels") == before

    # a new image: DVC re-runs the stage, which labels that image alone (its shard's file list changed)
    shutil.copy(repo / "images" / "a" / "desk.png", repo / "images" / "b" / "new.png")
    r = subprocess.run([dvc, "repro"], cwd=repo, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    files = list_images(repo / "images")
    mine = next(k for k in range(2) if "b/new.png" in shard_files(files, k, 2))
    assert f"shard {mine}: 1 labelled, {len(shard_files(files, mine, 2)) - 1} already done" in r.stdout, r.stdout
    assert f"shard {1 - mine}:" not in r.stdout and "1 of 2 shard(s) to run" in r.stdout
    after = _mtimes(repo / "labels")
    assert set(after) == set(before) | {"new.png"} and {k: after[k] for k in before} == before


def test_scaling_of_metric_and_relative_predictions():
    from gem_stages.label_depth import output_kind

    metric = np.array([[1.2346, 0.0004, 70.0], [0.0, -1.0, np.nan]])
    np.testing.assert_array_equal(to_millimetres(metric, "metric"), [[1235, 1, 65535], [0, 0, 0]])
    # relative inverse depth: the nearest pixel (largest d) at NEAR_MM, depth proportional to 1/d
    disparity = np.array([[2.0, 1.0, 0.5], [0.0, 2.0 / 100, 2.0 / 1000]])
    np.testing.assert_array_equal(to_millimetres(disparity, "relative"), [[1000, 2000, 4000], [0, 65535, 65535]])
    np.testing.assert_array_equal(to_millimetres(disparity * 7.0, "relative"), to_millimetres(disparity, "relative"))
    assert output_kind({"model_type": "depth_anything", "depth_estimation_type": "relative"}) == "relative"
    assert output_kind({"model_type": "depth_anything", "depth_estimation_type": "metric"}) == "metric"
    assert output_kind({"model_type": "dpt"}) == "relative" and output_kind({"model_type": "zoedepth"}) == "metric"


def test_a_bad_shard_count_is_one_line(tmp_path, image_tree):
    r = _label(tmp_path, "--images", str(image_tree), "--out", str(tmp_path / "l"), "--model", str(tmp_path),
               "--shards", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --shards 0: give 1 or more", r.stderr
    assert not (tmp_path / "l").exists()


def test_the_walk_lists_image_files_the_way_a_recursive_glob_does(tmp_path):
    """list_images walks with os.scandir (no stat per file): the same files as Path.rglob with is_file()."""
    tree = tmp_path / "t"
    for rel in ("a/x.jpg", "a/deep/er/y.PNG", "b/z.webp", "b/notes.txt", "top.jpeg", ".label-depth/skip.png",
                "c/.label-depth/skip2.png", "c/keep.bmp", "c/.hidden.png", "c/.png"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x")
    (tree / "linked.jpg").symlink_to(tree / "a" / "x.jpg")  # a symlinked file counts
    (tree / "broken.jpg").symlink_to(tree / "missing.jpg")  # a broken one does not
    (tree / "dirlink").symlink_to(tree / "b", target_is_directory=True)  # a symlinked folder is not entered
    (tree / "folder.png").mkdir()  # a folder named like an image is not one
    expected = ["a/deep/er/y.PNG", "a/x.jpg", "b/z.webp", "c/.hidden.png", "c/keep.bmp", "linked.jpg", "top.jpeg"]
    assert list_images(tree) == expected
    rglob = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.suffix.lower() in
                   (".jpg", ".jpeg", ".png", ".bmp", ".webp") and p.is_file() and ".label-depth" not in p.parts)
    assert rglob == expected


def test_an_unreadable_folder_in_the_tree_is_one_line(tmp_path, monkeypatch):
    tree = tmp_path / "t"
    (tree / "ok").mkdir(parents=True)
    (tree / "ok" / "x.jpg").write_bytes(b"x")
    (tree / "locked").mkdir()
    real = os.scandir

    def scandir(path):  # the tests run as root, whom chmod does not stop
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=f"^{tree / 'locked'}: permission denied: make the image tree readable"):
        list_images(tree)
