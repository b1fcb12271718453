"""Ingest the user's annotation sets and episodes (source: files): index and check, copy nothing.

The manifest references the files by absolute path. Each set's kept records are listed in index-NNN.npy (byte offset
and line number per sample, see annotation_index.py for what is checked here and what at read time), which the
reader memory-maps: memory does not grow with the dataset. files.md5 records the md5 of every annotation file and
episode (`md5sum -c files.md5`), taken through the digest cache (digest_cache.py), so an unchanged file is not read
again for its digest; images are referenced, not read: each set's media digest covers their paths, sizes and mtimes.
The dataset digest is the md5 of files.md5 followed by the sets' media digests.

Set-level problems (missing/empty files and folders, a %rate keeping nothing, a depth_root with no depth for any
used image) always stop with one InputError line. A missing depth map is not an error (the reference skips it too);
the depth of image x.jpg is depth/x.jpg (the reference's exact basename) or else depth/x.png; each set's counts
(lines, kept, skipped by reason, samples, images with depth) are printed and kept in the manifest.
"""

import hashlib
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .annotation_index import index_set
from .config import AnnotationSet, DataConfig
from .digest_cache import DigestCache
from .episode_sources import scan_episodes
from .manifest import FILE_LIST, FORMAT, write_file_list
from .sampling import parse_set_name


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _ingest_set(cfg: DataConfig, index: int, aset: AnnotationSet, root: Path, cache: DigestCache,
                md5s: dict[str, str]) -> dict:
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
    md5s[str(ann)] = cache.md5(ann)
    found = index_set(ann, aset.annotations, base, rate, aset.weight, cfg.seed, data_path, depth_root,
                      cfg.check_images, cfg.on_error, cfg.max_skipped)
    if found.lines == 0:
        raise InputError(
            f"annotation file '{aset.annotations}' ({key}.annotations) is empty: add samples, one JSON object per line, or remove the set"
        )
    if found.selected == 0:
        raise InputError(
            f"annotation set '{aset.name}' keeps 0 of its {found.lines} samples: raise its %rate or remove the set"
        )
    if depth_root is not None and found.with_depth + found.without_depth and found.with_depth == 0:
        raise InputError(
            f"depth root '{aset.depth_root}' ({key}.depth_root) holds a depth map for none of the set's images: "
            "check the path (depth of image p is <depth_root>/depth/<basename of p>, or the same name with .png) "
            "or leave depth_root empty"
        )
    index_file = f"index-{index:03d}.npy"
    np.save(root / index_file, found.rows)
    skipped = sum(found.skipped.values())
    images = found.with_depth + found.without_depth
    note = "" if depth_root is not None else " (no depth_root)"
    print(f"[data] set {base}: {found.with_depth}/{images} images with depth{note}", file=sys.stderr)
    print(f"[data] set {base}: {found.lines} lines, {found.selected} kept (%{rate}), {skipped} skipped, "
          f"{len(found.rows)} samples (weight {aset.weight:g})", file=sys.stderr, flush=True)
    return {
        "name": base,
        "rate": rate,
        "weight": aset.weight,
        "annotations": str(ann),
        "data_path": str(data_path),
        "depth_root": str(depth_root) if depth_root else None,
        "index": index_file,
        "lines": found.lines,
        "selected": found.selected,
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(found.skipped.items())),
        "samples": len(found.rows),
        "images": found.images,
        "images_with_depth": found.with_depth,
        "images_without_depth": found.without_depth,
        "md5": md5s[str(ann)],
        "media_digest": found.media_digest,
        "tasks": dict(sorted(found.tasks.items())),
    }


def _ingest_episodes(cfg: DataConfig, cache: DigestCache, md5s: dict[str, str]) -> dict:
    folder = _resolve(cfg.episodes_dir)
    if not folder.is_dir():
        raise InputError(
            f"episodes directory '{cfg.episodes_dir}' (data.episodes_dir) does not exist: fix the path or leave it empty"
        )
    episodes, files = scan_episodes(cfg, folder, cfg.on_error, cfg.max_skipped)
    for path in files:
        md5s[str(path)] = cache.md5(path)
    return episodes


def ingest_files(cfg: DataConfig, root: Path) -> dict:
    """Index and check the configured sets and episodes into `root` (index files, files.md5); return the manifest."""
    md5s: dict[str, str] = {}
    names = [parse_set_name(s.name)[0] for s in cfg.files]
    for name in names:
        if names.count(name) > 1:
            raise InputError(
                f"annotation set name '{name}' appears twice in data.files: give each set its own name"
            )
    with DigestCache() as cache:
        sets = [_ingest_set(cfg, i, s, root, cache, md5s) for i, s in enumerate(cfg.files)]
        episodes = _ingest_episodes(cfg, cache, md5s) if cfg.episodes_dir else None
    write_file_list(root, md5s)
    listed = (root / FILE_LIST).read_text()
    digest = hashlib.md5("".join([listed, *(s["media_digest"] for s in sets)]).encode()).hexdigest()
    tasks, skipped = Counter(), Counter()
    for s in sets:
        tasks.update(s["tasks"])
        skipped.update(s["skipped_by_reason"])
    return {
        "format": FORMAT,
        "name": "+".join(names) or "episodes",
        "source": "files",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {
            "records": sum(s["selected"] for s in sets),
            "skipped": sum(skipped.values()),
            "skipped_by_reason": dict(sorted(skipped.items())),
            "samples": sum(s["samples"] for s in sets),
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
