"""Depth labels for an image tree, from a transformers depth estimator loaded from a local folder
(AutoModelForDepthEstimation + AutoImageProcessor: Depth Anything, DPT, ZoeDepth, ...).

Layout (what the data loader reads, stages/data/sample_format.depth_candidates): the depth of image <any/dir>/x.jpg
is <out>/depth/x.png, a single-channel 16-bit PNG in millimetres, 0 = invalid (stages/data/depth_png.py), the size
of its image. Depth is found by basename, so two images with one stem in a tree are refused.

Scaling written:
- metric models (a Depth Anything config with depth_estimation_type "metric", ZoeDepth, GLPN, Depth Pro): the
  prediction is metres; written as millimetres.
- relative models (Depth Anything's relative checkpoints, DPT/MiDaS): the prediction is relative INVERSE depth d
  (disparity, per-image scale and shift unknown). Written: depth = NEAR_MM * d_max / d millimetres, d_max the image's
  largest d: its nearest pixel is at NEAR_MM, the others in proportion to 1/d, saturating at 65535 (65.5x farther:
  sky); d <= 0 is invalid (0). The units are per image, not metres.
What the targets make of it (models/depth_encoding.py): spectral_inverse (stages 1-3) inverts depth again and
normalises between the map's own 2nd/98th percentiles, so its target is the estimator's disparity, normalised,
whatever NEAR_MM; inferno_linear (stage 4) reads millimetres / 65535 as absolute depth: label for it with a metric
model.

Work is split into N shards (a file's shard: a hash of its path, mod N). A label is written beside and
renamed into place, so a file that exists is complete: a re-run (or a requeued or killed shard run again) skips
it; a finished shard leaves a marker (with a digest of its file list) and is not even started again while its
files are the same. <out>/.label-depth/plan.json records the model
the labels came from: labels of another model are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NEAR_MM = 1000.0  # relative models: the nearest pixel of each image, in (relative) millimetres
MAX_MM = 65535
STATE_DIR = ".label-depth"
METRIC_MODEL_TYPES = ("zoedepth", "glpn", "depth_pro")


def list_images(images: Path) -> list[str]:
    """Image paths under `images`, relative, sorted; refused when two share a stem (one depth file each)."""
    if not images.is_dir():
        raise InputError(f"--images {images} is not a folder: give the root of the image tree")
    found = sorted(_image_files(images))
    if not found:
        raise InputError(f"--images {images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, str] = {}
    for rel in found:
        name = depth_name(rel)
        if name in seen:
            raise InputError(f"{seen[name]} and {rel} would both be labelled depth/{name} (the loader finds depth "
                             "by basename): label them into separate --out folders")
        seen[name] = rel
    return found


def _image_files(images: Path) -> Iterator[str]:
    """Relative paths of the image files under `images` (symlinked files too; symlinked folders and the state
    folder are not entered), in no order. os.scandir's entries know their type without a stat: a million-image
    tree is walked in seconds, where Path.rglob and is_file() stat each file."""
    folders = [""]
    while folders:
        folder = folders.pop()
        try:
            entries = os.scandir(os.path.join(images, folder))
        except PermissionError:
            raise InputError(f"{os.path.join(images, folder)}: permission denied: make the image tree readable, or "
                             "move that folder out of it") from None
        with entries:
            for entry in entries:
                rel = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != STATE_DIR:
                        folders.append(rel)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    yield rel


def depth_name(image: str) -> str:
    return os.path.splitext(os.path.basename(image))[0] + ".png"


def shard_files(files: list[str], shard: int, shards: int) -> list[str]:
    """The files of one shard: by a hash of the path, so a file added to the tree leaves the others' shards as
    they were (only its own shard runs again)."""
    return [f for f in files if zlib.crc32(f.encode()) % shards == shard]


def read_model_config(model: Path) -> dict:
    """The model folder's config.json, checked to be a depth estimator transformers knows."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

    config = model / "config.json"
    if not config.is_file():
        raise InputError(f"--model {model} has no config.json: give a folder saved with save_pretrained (a "
                         "downloaded Depth Anything or DPT checkpoint)")
    data = json.loads(config.read_text())
    if data.get("model_type") not in MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES:
        raise InputError(f"--model {model} is a {data.get('model_type')!r} model, not a depth estimator (known: "
                         f"{', '.join(sorted(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES))})")
    return data


def output_kind(config: dict) -> str:
    """"metric" (metres) or "relative" (inverse depth) for a depth model's config."""
    if config.get("model_type") in METRIC_MODEL_TYPES:
        return "metric"
    return "metric" if config.get("depth_estimation_type") == "metric" else "relative"


def plan(images: Path, out: Path, model: Path, files: list[str]) -> dict:
    """Write (or check) <out>/.label-depth/plan.json: which model labels this folder, and how it scales."""
    config = read_model_config(model)
    entry = {"model": str(model.resolve()),
             "model_config_sha256": hashlib.sha256((model / "config.json").read_bytes()).hexdigest(),
             "kind": output_kind(config), "near_mm": NEAR_MM, "images": str(images.resolve()), "files": len(files)}
    path = out / STATE_DIR / "plan.json"
    if path.is_file():
        old = json.loads(path.read_text())
        same = {k: old.get(k) for k in ("model", "model_config_sha256", "kind", "near_mm")}
        if same != {k: entry[k] for k in same}:
            raise InputError(f"{out} holds labels of another model ({old.get('model')}): give another --out, or "
                             "remove that folder to relabel")
    path.parent.mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entry, indent=2) + "\n")
    return entry


def done_marker(out: Path, shard: int, shards: int) -> Path:
    return out / STATE_DIR / f"shard-{shard:05d}-of-{shards:05d}.done"


def _list_digest(files: list[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def shard_done(out: Path, files: list[str], shard: int, shards: int) -> bool:
    """The shard finished with exactly today's files (an image added to the tree makes its shard run again)."""
    marker = done_marker(out, shard, shards)
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("list_sha256") == _list_digest(shard_files(files, shard, shards))


def finished(out: Path, files: list[str], shard: int, shards: int) -> dict | None:
    """label_shard's result for a shard already done with today's files (nothing labelled now), else None."""
    if not shard_done(out, files, shard, shards):
        return None
    mine = len(shard_files(files, shard, shards))
    unreadable = json.loads(done_marker(out, shard, shards).read_text()).get("unreadable", [])
    return {"status": "completed", "shard": shard, "written": 0, "skipped": mine - len(unreadable),
            "unreadable": unreadable}


def check_unreadable(images: Path, unreadable: list[str], total: int, max_skipped: float) -> None:
    """Refuse (one line) more unreadable images than max_skipped of `total` allows."""
    if len(unreadable) > max_skipped * total:
        raise InputError(f"{len(unreadable)} of {total} images unreadable (more than max_skipped {max_skipped:g}), "
                         f"e.g. {images / unreadable[0]}: fix or remove them, then run again")


def to_millimetres(prediction: np.ndarray, kind: str) -> np.ndarray:
    """The estimator's (H, W) output -> uint16 millimetres, 0 = invalid (see the module's scaling)."""
    pred = np.asarray(prediction, dtype=np.float64)
    valid = np.isfinite(pred) & (pred > 0)
    if kind == "metric":
        mm = pred * 1000.0
    else:
        d_max = pred[valid].max() if valid.any() else 1.0
        mm = np.divide(NEAR_MM * d_max, pred, out=np.zeros_like(pred), where=valid)
    return np.where(valid, np.clip(np.round(mm), 1, MAX_MM), 0).astype(np.uint16)


def _save_png(path: Path, mm: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(mm).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_estimator(model: Path, device: str):
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # e.g. "no torchvision: the PIL image processor" is no news here
    hf_logging.disable_progress_bar()
    try:
        processor = AutoImageProcessor.from_pretrained(str(model))
        estimator = AutoModelForDepthEstimation.from_pretrained(str(model), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {model} does not load as a depth estimator: {str(e).splitlines()[0]}") from None
    return processor, estimator.to(device).eval()


def label_shard(images: Path, out: Path, model: Path, shard: int, shards: int, device: str = "auto",
                should_stop: Callable[[], bool] | None = None, on_file: Callable[[str], None] | None = None,
                progress=None, on_error: str = "stop", max_skipped: float = 0.0) -> dict:
    """Label shard `shard` of `shards`: every image of it without a label yet. Returns {"status", "shard",
    "written", "skipped", "unreadable"}; status "preempted" when should_stop() asked it to stop between two files.
    An unreadable image stops it with one line naming the file (on_error "stop"), or is left unlabelled and listed
    in "unreadable" (on_error "skip"), failing the shard when more than max_skipped of its images are."""
    import torch
    from PIL import Image, UnidentifiedImageError

    files = list_images(images)
    if (done := finished(out, files, shard, shards)) is not None:
        return done
    mine = shard_files(files, shard, shards)
    kind = plan(images, out, model, files)["kind"]
    depth_dir = out / "depth"
    names = {depth_name(f) for f in mine}
    with os.scandir(depth_dir) as entries:  # one listing, not a stat per file
        labelled = {e.name for e in entries}
    for name in labelled:  # a killed run's half-written label (never renamed into place)
        if name.startswith(".") and ".tmp-" in name and name[1:].rsplit(".tmp-", 1)[0] in names:
            (depth_dir / name).unlink(missing_ok=True)
    todo = [f for f in mine if depth_name(f) not in labelled]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    written, unreadable, start = 0, [], time.monotonic()
    if todo:
        processor, estimator = load_estimator(model, device)
    if progress is None:
        from .progress import RichProgress

        progress = RichProgress(f"label-depth {shard + 1}/{shards}")
    with progress:
        for i, rel in enumerate(todo, 1):
            if should_stop is not None and should_stop():
                return {"status": "preempted", "shard": shard, "written": written, "skipped": len(mine) - len(todo),
                        "unreadable": unreadable}
            try:
                with Image.open(images / rel) as opened:
                    image = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as e:
                if on_error == "skip":
                    unreadable.append(rel)
                    continue
                raise InputError(f"{images / rel}: not a readable image ({str(e).splitlines()[0]}): fix or remove "
                                 "it, then run again (finished labels are kept)") from None
            inputs = processor(images=image, return_tensors="pt").to(device)
            with torch.no_grad():
                outputs = estimator(**inputs)
            # back to the image's own size (the processor resized it), as the loader expects
            depth = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
            _save_png(depth_dir / depth_name(rel), to_millimetres(depth[0]["predicted_depth"].cpu().numpy(), kind))
            written += 1
            if on_file is not None:
                on_file(rel)
            progress.update(i, len(todo), {}, time.monotonic() - start)
    check_unreadable(images, unreadable, len(mine), max_skipped)
    atomic_write_text(done_marker(out, shard, shards),
                      json.dumps({"files": len(mine), "written": written, "unreadable": unreadable,
                                  "list_sha256": _list_digest(mine)}) + "\n")
    return {"status": "completed", "shard": shard, "written": written, "skipped": len(mine) - len(todo),
            "unreadable": unreadable}


def drop_stale(images: Path, files: list[str], out: Path, shards: int = 1) -> int:
    """Remove the labels of images changed since they were labelled (the image is newer than its label), and the
    done markers of their shards, so that a re-run labels them again; returns how many. files: list_images(images)."""
    stale, depth_dir = [], os.path.join(out, "depth")
    for rel in files:
        try:
            if os.stat(os.path.join(images, rel)).st_mtime_ns > os.stat(
                    os.path.join(depth_dir, depth_name(rel))).st_mtime_ns:
                stale.append(rel)
        except FileNotFoundError:  # not labelled yet
            continue
    for rel in stale:
        (out / "depth" / depth_name(rel)).unlink()
        done_marker(out, zlib.crc32(rel.encode()) % shards, shards).unlink(missing_ok=True)
    return len(stale)


def prune(files: list[str], out: Path) -> int:
    """Remove labels whose image is not among `files` (list_images of the tree, which changed since); returns how
    many."""
    keep = {depth_name(f) for f in files}
    with os.scandir(out / "depth") as labels:
        stale = [e.path for e in labels if e.name.endswith(".png") and e.name not in keep]
    for path in stale:
        os.unlink(path)
    return len(stale)
