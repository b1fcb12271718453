"""Ingest the user's annotation sets and episodes (source: files): validate everything, copy nothing.

The manifest references the files by absolute path and files.md5 records each used file's md5, so a later change
to any of them is detectable (`md5sum -c files.md5`). Checks, each an InputError naming the file, line and fix:
missing/empty files and folders, malformed JSON lines, samples without conversations, <image> placeholders that
do not match the images, unreadable images, depth maps that are unreadable or not the size of their image.
A missing depth map is not an error (the reference skips it too); a depth_root with no depth for any used image is.
The depth of image x.jpg is depth/x.jpg (the reference's exact basename) or else depth/x.png; each set's share of
images with depth is printed and kept in the manifest.
"""

import hashlib
import io
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .config import AnnotationSet, DataConfig
from .depth_png import DEPTH_MODES
from .episode_sources import scan_episodes
from .manifest import FORMAT, md5_file, write_file_list
from .sample_format import check_sample, depth_candidates, parse_sample, scan_jsonl
from .sampling import parse_set_name, select_indices
from .video import VideoError, is_video_file, video_size


@dataclass(frozen=True)
class FileCheck:
    exists: bool  # the file is there
    md5: str | None  # content md5 (None when missing)
    size: tuple[int, int] | None  # (width, height) when readable
    mode: str | None  # PIL mode when readable
    error: str | None  # why it cannot be read


def _check_file(path: Path, decode: bool) -> FileCheck:
    if not path.is_file():
        return FileCheck(False, None, None, None, None)
    data = path.read_bytes()  # one read serves the md5 and the header
    md5 = hashlib.md5(data).hexdigest()
    if is_video_file(path.name):
        try:
            return FileCheck(True, md5, video_size(io.BytesIO(data), decode), None, None)
        except VideoError as e:
            return FileCheck(True, md5, None, None, str(e))
    try:
        with Image.open(io.BytesIO(data)) as image:
            if decode:
                image.load()
            return FileCheck(True, md5, image.size, image.mode, None)
    except UnidentifiedImageError:
        return FileCheck(True, md5, None, None, "cannot identify image file")
    except (OSError, SyntaxError, ValueError) as e:
        return FileCheck(True, md5, None, None, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _ingest_set(cfg: DataConfig, index: int, aset: AnnotationSet, md5s: dict[str, str], pool) -> dict:
    key = f"data.files[{index}]"
    base, rate = parse_set_name(aset.name)
    if not aset.annotations:
        raise InputError(f"{key}.annotations is empty: give the path of the set's JSONL annotation file")
    ann = _resolve(aset.annotations)
    if not ann.is_file():
        what = "is a directory" if ann.is_dir() else "does not exist"
        raise InputError(f"annotation file '{aset.annotations}' ({key}.annotations) {what}: fix the path")
    data_path = _resolve(aset.data_path) if aset.data_path else ann.parent
    if not data_path.is_dir():
        raise InputError(
            f"image root '{aset.data_path}' ({key}.data_path) is not an existing directory: fix the path"
        )
    depth_root = _resolve(aset.depth_root) if aset.depth_root else None
    if depth_root is not None and not (depth_root / "depth").is_dir():
        raise InputError(
            f"depth root '{aset.depth_root}' ({key}.depth_root) has no 'depth' folder: depth maps must be at "
            "<depth_root>/depth/<image basename>; fix the path or leave depth_root empty"
        )

    records = []  # (where, media paths as written, task)
    for line_no, _, raw in scan_jsonl(ann):
        where = f"{aset.annotations} line {line_no}"
        sample = parse_sample(raw, where)
        images, frames = check_sample(sample, where)
        records.append((where, images + frames, str(sample.get("task") or base)))
    if not records:
        raise InputError(
            f"annotation file '{aset.annotations}' ({key}.annotations) is empty: add samples, one JSON object per line, or remove the set"
        )
    selected = select_indices(len(records), rate, cfg.seed, base)
    if len(selected) == 0:
        raise InputError(
            f"annotation set '{aset.name}' keeps 0 of its {len(records)} samples: raise its %rate or remove the set"
        )

    # Check every used image (and its depth) once, in parallel: reading and hashing dominates for large sets.
    media = list(dict.fromkeys(m for i in selected for m in records[i][1]))
    image_files = [data_path / m for m in media]
    # a video file's frames have no depth (the release looks depth up by image path)
    candidates = {m: depth_candidates(depth_root, m) for m in media if not is_video_file(m)} if depth_root else {}
    depth_files = list(dict.fromkeys(p for paths in candidates.values() for p in paths))
    decode = cfg.check_images == "decode"
    checks = dict(
        zip(image_files + depth_files, pool.map(lambda p: _check_file(p, decode), image_files + depth_files))
    )
    found = {m: next((p for p in paths if checks[p].exists), None) for m, paths in candidates.items()}

    for i in selected:
        where, paths, _ = records[i]
        for m in paths:
            image = checks[data_path / m]
            kind, fix = ("video", "re-encode it (e.g. H.264 .mp4)") if is_video_file(m) else ("image", "re-export it as PNG/JPEG")
            if not image.exists:
                raise InputError(
                    f"{kind} '{m}' in {where} does not exist under '{data_path}': fix data_path or drop the sample"
                )
            if image.error:
                raise InputError(
                    f"{kind} '{m}' in {where} cannot be read ({image.error}): {fix} or drop the sample"
                )
            dpath = found.get(m)
            if dpath is None:
                continue
            depth = checks[dpath]
            if depth.error or depth.mode not in DEPTH_MODES:
                reason = depth.error or f"mode {depth.mode}, not 16-bit single-channel"
                raise InputError(
                    f"depth map '{dpath}' of image '{m}' in {where} cannot be read ({reason}): "
                    "save depth as a 16-bit PNG in millimetres"
                )
            if depth.size != image.size:
                raise InputError(
                    f"depth map '{dpath}' is {depth.size[0]}x{depth.size[1]} but image '{m}' in {where} is "
                    f"{image.size[0]}x{image.size[1]}: regenerate the depth at the image's size"
                )
    for path in [*image_files, *(p for p in found.values() if p is not None)]:
        if checks[path].exists:
            md5s[str(path)] = checks[path].md5
    with_depth = sum(p is not None for p in found.values())
    if depth_root is not None and candidates and with_depth == 0:
        raise InputError(
            f"depth root '{aset.depth_root}' ({key}.depth_root) holds a depth map for none of the set's images: "
            "check the path (depth of image p is <depth_root>/depth/<basename of p>, or the same name with .png) "
            "or leave depth_root empty"
        )
    note = "" if depth_root is not None else " (no depth_root)"
    print(f"[data] set {base}: {with_depth}/{len(media)} images with depth{note}", file=sys.stderr, flush=True)
    md5s[str(ann)] = md5_file(ann)
    return {
        "name": base,
        "rate": rate,
        "annotations": str(ann),
        "data_path": str(data_path),
        "depth_root": str(depth_root) if depth_root else None,
        "lines": len(records),
        "selected": len(selected),
        "images": len(media),
        "images_with_depth": with_depth,
        "images_without_depth": len(media) - with_depth,
        "md5": md5s[str(ann)],
        "tasks": dict(sorted(Counter(records[i][2] for i in selected).items())),
    }


def _ingest_episodes(cfg: DataConfig, md5s: dict[str, str]) -> dict:
    folder = _resolve(cfg.episodes_dir)
    if not folder.is_dir():
        raise InputError(
            f"episodes directory '{cfg.episodes_dir}' (data.episodes_dir) does not exist: fix the path or leave it empty"
        )
    episodes, files = scan_episodes(cfg, folder)
    for path in files:
        md5s[str(path)] = md5_file(path)
    return episodes


def ingest_files(cfg: DataConfig, root: Path) -> dict:
    """Validate the configured sets and episodes; write files.md5 into `root`; return the manifest."""
    md5s: dict[str, str] = {}
    names = [parse_set_name(s.name)[0] for s in cfg.files]
    for name in names:
        if names.count(name) > 1:
            raise InputError(
                f"annotation set name '{name}' appears twice in data.files: give each set its own name"
            )
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        sets = [_ingest_set(cfg, i, s, md5s, pool) for i, s in enumerate(cfg.files)]
    episodes = _ingest_episodes(cfg, md5s) if cfg.episodes_dir else None
    digest = write_file_list(root, md5s)
    tasks = Counter()
    for s in sets:
        tasks.update(s["tasks"])
    return {
        "format": FORMAT,
        "name": "+".join(names) or "episodes",
        "source": "files",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {
            "samples": sum(s["selected"] for s in sets),
            "images": sum(s["images"] for s in sets),
            "tasks": dict(sorted(tasks.items())),
            "episodes": len(episodes["files"]) if episodes else 0,
            "episode_steps": sum(episodes["lengths"]) if episodes else 0,
            "episodes_skipped": episodes["skipped"] if episodes else 0,
        },
        "annotation_sets": sets,
        "episodes": episodes,
        "files": "files.md5",
        "digest": digest,
    }
