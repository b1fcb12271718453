"""Index one annotation set: its kept, valid records as (byte offset, line number) rows, and per-file counts.

What is checked here, once per record at prepare time, and what only when a sample is read:

    prepare (every kept record)                   read time (GemSamples, each sample it returns)
    - the line is a JSON object                   - the image/video decodes (truncated files)
    - field types: conversations, image, video    - the depth map is 16-bit and the image's size
    - <image>/<video> placeholders match media    - (the annotation file is unchanged: its digest)
    - each image/video: inside data_path (no ../, absolute paths elsewhere, symlinks out), an existing non-empty
      regular file (one lstat per distinct path; folders resolved once)
    - depth present or not (one listing of <depth_root>/depth)
    check_images "header" also reads image and depth headers here (sizes, modes); "decode" decodes every pixel.

A bad record stops prepare with one line naming file and line (on_error: stop), or is left out of the index and
counted by reason (skip); a set whose skipped share exceeds max_skipped fails. Nothing reads an image in full unless
check_images asks, so a million records index in seconds; the index is a numpy file the reader memory-maps.
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .confine import Confined
from .depth_png import DEPTH_MODES
from .sample_format import check_sample, parse_sample
from .sampling import select_indices, weighted_indices
from .video import VideoError, is_video_file, video_size

OK = None  # a media path's check result when it passed


@dataclass
class SetIndex:
    rows: np.ndarray  # int64 (samples, 2): byte offset and 1-based line number of each listed record
    lines: int  # non-blank lines in the file
    selected: int  # lines kept by the %NN share
    skipped: Counter = field(default_factory=Counter)  # reason -> records left out (on_error: skip)
    first_skipped: str = ""  # the first skipped record's error line
    images: int = 0  # distinct media paths that passed their checks
    with_depth: int = 0  # of those (videos excluded), the ones with a depth map
    without_depth: int = 0
    tasks: Counter = field(default_factory=Counter)
    media_digest: str = ""  # md5 of every indexed media file's (path, size, mtime): changes when one changes


class _Media:
    """Checks each distinct media path once; `problem(rel)` -> None or (reason, text before "where", after)."""

    def __init__(self, data_path: Path, depth_root: Path | None, check: str):
        self.data_path, self.depth_root, self.check = data_path, depth_root, check
        self.confined = Confined(data_path)
        self.depth_dir = str(depth_root / "depth") if depth_root else ""
        self.depth_names = set(os.listdir(self.depth_dir)) if depth_root else set()
        self.seen: dict[str, tuple | None] = {}
        self.with_depth = self.without_depth = 0
        self.fingerprint = hashlib.md5()

    def problem(self, rel: str) -> tuple | None:
        if rel in self.seen:
            return self.seen[rel]
        result = self.seen[rel] = self._check(rel)
        return result

    def _depth_name(self, rel: str) -> str | None:
        name = os.path.basename(rel)
        png = os.path.splitext(name)[0] + ".png"
        return name if name in self.depth_names else png if png in self.depth_names else None

    def _check(self, rel: str) -> tuple | None:
        video = is_video_file(rel)
        kind, fix = ("video", "re-encode it (e.g. H.264 .mp4)") if video else ("image", "re-export it as PNG/JPEG")
        found = self.confined.stat(rel)
        if found == "outside":
            return ("outside data root", f"{kind} '{rel}' in ",
                    f" is outside its data root '{self.data_path}': keep the data under data_path (no '..', "
                    "absolute paths elsewhere or symlinks out) or drop the sample")
        if isinstance(found, str):
            return ("missing media", f"{kind} '{rel}' in ",
                    f" does not exist under '{self.data_path}': fix data_path or drop the sample")
        st, path = found
        if st.st_size == 0:
            return ("unreadable media", f"{kind} '{rel}' in ", f" is empty: {fix} or drop the sample")
        self.fingerprint.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        size = None
        if self.check != "stat":
            try:
                size = _media_size(path, video, self.check == "decode")
            except ValueError as e:
                return ("unreadable media", f"{kind} '{rel}' in ", f" cannot be read ({e}): {fix} or drop the sample")
        if video:  # a video file's frames have no depth (the release looks depth up by image path)
            return OK
        depth = self._depth_name(rel)
        dpath = os.path.join(self.depth_dir, depth) if depth else ""  # not pathlib: once per distinct image
        try:
            dst = os.stat(dpath) if depth else None
        except OSError:  # listed but not there (a dangling link): no depth, as for a missing one
            dst = None
        if dst is None:
            self.without_depth += 1
            return OK
        self.with_depth += 1
        self.fingerprint.update(f"{dpath}\0{dst.st_size}\0{dst.st_mtime_ns}\n".encode())
        if size is not None:
            return _depth_problem(dpath, rel, size)
        return OK


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _media_size(path: str, video: bool, decode: bool) -> tuple[int, int]:
    """(width, height) from the header (decode: after decoding every pixel). ValueError with the reason."""
    if video:
        try:
            return video_size(path, decode)
        except VideoError as e:
            raise ValueError(str(e)) from None
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.size
    except UnidentifiedImageError:
        raise ValueError("cannot identify image file") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(_reason(e)) from None


def _depth_problem(dpath: str, rel: str, size: tuple[int, int]) -> tuple | None:
    try:
        with Image.open(dpath) as depth:
            mode, dsize = depth.mode, depth.size
    except UnidentifiedImageError:
        mode, dsize = "unknown", None
    except (OSError, SyntaxError, ValueError) as e:
        return ("bad depth", f"depth map '{dpath}' of image '{rel}' in ",
                f" cannot be read ({_reason(e)}): save depth as a 16-bit PNG in millimetres")
    if mode not in DEPTH_MODES:
        return ("bad depth", f"depth map '{dpath}' of image '{rel}' in ",
                f" cannot be read (mode {mode}, not 16-bit single-channel): save depth as a 16-bit PNG in millimetres")
    if dsize != size:
        return ("bad depth", f"depth map '{dpath}' is {dsize[0]}x{dsize[1]} but image '{rel}' in ",
                f" is {size[0]}x{size[1]}: regenerate the depth at the image's size")
    return OK


def index_set(ann: Path, label: str, base: str, rate: int, weight: float, seed: int, data_path: Path,
              depth_root: Path | None, check: str, on_error: str, max_skipped: float) -> SetIndex:
    """Scan `ann` (named `label` in messages), keep its %rate share, check each kept record, apply the weight."""
    keep = None  # all lines; else a mask over the non-blank lines, which must be counted first
    if rate < 100:
        with open(ann, "rb") as f:
            lines = sum(1 for raw in f if raw.strip())
        keep = np.zeros(lines, dtype=bool)
        keep[select_indices(lines, rate, seed, base)] = True
    media = _Media(data_path, depth_root, check)
    seen, problem = media.seen, media.problem
    offsets, line_nos = array("q"), array("q")  # of the records that passed; compact even for millions
    out = SetIndex(rows=np.empty((0, 2), np.int64), lines=0, selected=0)

    k = offset = 0  # k: non-blank lines so far
    with open(ann, "rb") as f:
        for line_no, raw in enumerate(f, start=1):  # one pass, no generator: this loop runs per record
            start, offset = offset, offset + len(raw)
            if raw[:1] != b"{" and not raw.strip():
                continue
            k += 1
            if keep is not None and not keep[k - 1]:
                continue
            where = f"{label} line {line_no}"
            try:
                sample = parse_sample(raw, where)
                images, frames = check_sample(sample, where)
            except InputError as e:
                if on_error == "stop":
                    raise
                _skip(out, "invalid JSON" if "JSON" in str(e) else "invalid sample", str(e))
                continue
            bad = OK
            for rel in images + frames if frames else images:
                bad = seen[rel] if rel in seen else problem(rel)
                if bad is not OK:
                    break
            if bad is not OK:
                reason, before, after = bad
                message = f"{before}{where}{after}"
                if on_error == "stop":
                    raise InputError(message)
                _skip(out, reason, message)
                continue
            offsets.append(start)
            line_nos.append(line_no)
            out.tasks[str(sample.get("task") or base)] += 1
    out.lines = k
    out.selected = k if keep is None else int(keep.sum())

    skipped = sum(out.skipped.values())
    if skipped and skipped > max_skipped * out.selected:
        raise InputError(
            f"{skipped} of the {out.selected} records of '{label}' were skipped ({skipped / out.selected:.1%}, more "
            f"than data.max_skipped {max_skipped:.1%}); the first: {out.first_skipped} -- fix the records or raise "
            "data.max_skipped")
    positions = weighted_indices(len(offsets), weight, seed, base)
    out.rows = np.stack([np.asarray(offsets, np.int64)[positions], np.asarray(line_nos, np.int64)[positions]], axis=1)
    out.images = sum(1 for p in media.seen.values() if p is OK)
    out.with_depth, out.without_depth = media.with_depth, media.without_depth
    out.media_digest = media.fingerprint.hexdigest()
    return out


def _skip(out: SetIndex, reason: str, message: str) -> None:
    if not out.first_skipped:
        out.first_skipped = message
        print(f"[data] skipping bad records (data.on_error: skip); the first: {message}", file=sys.stderr, flush=True)
    out.skipped[reason] += 1
