"""Read a prepared dataset (synth or files) through its dataset.json: QA samples, action windows, statistics, text.

Readers hold no open files across pickling and reopen HDF5 files after a fork, so they work inside DataLoader
workers. Problems found only at read time (an image deleted or corrupted since prepare) raise InputError too.
"""

import bisect
import os
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .depth_png import load_depth_m
from .digest_cache import DigestCache
from .episode_sources import EpisodeReader, ReadPolicy, open_episode
from .episode_sources import statistics as episode_statistics
from .manifest import load_manifest, resolve
from .sample_format import check_sample, expand_video_tag, find_depth, parse_sample, scan_jsonl
from .sampling import select_indices
from .video import VideoError, decode_video, is_video_file

MAX_OPEN_EPISODES = 64  # HDF5 handles kept open per process (file-descriptor limits are ~1024)


def _annotation_file(dataset_dir: Path, entry: dict, cache: DigestCache) -> Path:
    """The set's JSONL, checked against its md5 (through the digest cache: an unchanged file is not read again):
    the index holds byte offsets into it, so it must not change."""
    ann = resolve(dataset_dir, entry["annotations"])
    if not ann.is_file() or cache.md5(ann) != entry["md5"]:
        raise InputError(
            f"annotation file '{ann}' is missing or changed since the dataset was prepared: "
            "prepare the dataset again"
        )
    return ann


def _scan_rows(ann: Path, entry: dict, seed: int) -> np.ndarray:
    """(offset, line number) of the kept lines of a set prepared without an index file (the built-in set)."""
    line_nos, offsets = array("q"), array("q")
    for line_no, offset, _ in scan_jsonl(ann):
        line_nos.append(line_no)
        offsets.append(offset)
    keep = select_indices(len(offsets), entry["rate"], seed, entry["name"])
    return np.stack([np.asarray(offsets, np.int64)[keep], np.asarray(line_nos, np.int64)[keep]], axis=1)


class GemSamples(Sequence):
    """QA samples: {"id", "images": [PIL RGB], "depths": [float32 (H, W) metres or None], "conversations", "task"}.

    A sample is read from its annotation line by byte offset (the set's index file, memory-mapped), so memory does
    not grow with the dataset. A sample that cannot be read (an image that does not decode, a depth map of the wrong
    size) raises InputError naming file and line under data.on_error "stop"; under "skip" it is counted in
    `skipped`, reported in one line, and the next sample is returned instead, until more than data.max_skipped of
    the dataset's samples failed (then InputError)."""

    def __init__(self, dataset_dir: Path):
        self.dataset_dir = Path(dataset_dir)
        manifest = load_manifest(self.dataset_dir)
        config = manifest.get("config") or {}
        self.on_error = config.get("on_error", "stop")
        self.max_skipped = float(config.get("max_skipped", 0.0))
        self.skipped = 0  # samples found unreadable in this process (on_error: skip)
        self._sets = []  # (set entry, annotation path, index file or None)
        self._rows: dict[int, np.ndarray] = {}  # set -> its (offset, line number) rows, mapped on first use
        lengths = []
        with DigestCache() as cache:
            for k, entry in enumerate(manifest["annotation_sets"]):
                ann = _annotation_file(self.dataset_dir, entry, cache)
                if entry.get("index"):
                    self._sets.append((entry, ann, self.dataset_dir / entry["index"]))
                    lengths.append(int(entry["samples"]))
                else:
                    self._rows[k] = _scan_rows(ann, entry, manifest["seed"])
                    self._sets.append((entry, ann, None))
                    lengths.append(len(self._rows[k]))
        self._starts = np.cumsum([0] + lengths).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self):  # worker processes map the index files themselves
        state = self.__dict__.copy()
        state["_rows"] = {k: v for k, v in self._rows.items() if self._sets[k][2] is None}
        return state

    def _set_rows(self, k: int) -> np.ndarray:
        if k not in self._rows:
            self._rows[k] = np.load(self._sets[k][2], mmap_mode="r")
        return self._rows[k]

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range ({len(self)} samples)")
        k = bisect.bisect_right(self._starts, index) - 1
        return k, index - self._starts[k]

    def record(self, index: int) -> tuple[dict, str, dict]:
        """(the raw annotation dict, "file line N", its set entry) without loading any image."""
        k, j = self._locate(index)
        entry, ann, _ = self._sets[k]
        offset, line_no = (int(x) for x in self._set_rows(k)[j])
        with open(ann, "rb") as f:
            f.seek(offset)
            raw = f.readline()
        where = f"{ann.name} line {line_no}"
        return parse_sample(raw, where), where, entry

    def __getitem__(self, index: int) -> dict:
        if self.on_error == "stop":
            return self._read(index)
        for attempt in range(len(self)):
            try:
                return self._read((index + attempt) % len(self) if attempt else index)
            except InputError as e:
                self.skipped += 1
                print(f"[data] skipped a sample (data.on_error: skip): {e}", file=sys.stderr, flush=True)
                if self.skipped > self.max_skipped * len(self):
                    raise InputError(
                        f"{self.skipped} of the dataset's {len(self)} samples could not be read (more than "
                        f"data.max_skipped {self.max_skipped:.1%}); the last: {e} -- fix the data or raise "
                        "data.max_skipped") from None
        raise InputError(f"no sample of '{self.dataset_dir}' can be read: fix the data and prepare it again")

    def _read(self, index: int) -> dict:
        sample, where, entry = self.record(index)
        images, frames = check_sample(sample, where)
        data_path = resolve(self.dataset_dir, entry["data_path"])
        depth_root = resolve(self.dataset_dir, entry["depth_root"]) if entry["depth_root"] else None
        pil_images, depths = [], []
        for rel in images + frames:
            if is_video_file(rel):  # a video file's frames have no depth (the release looks depth up by image)
                decoded = _load_video(data_path / rel, rel, where)
                pil_images += decoded
                depths += [None] * len(decoded)
                continue
            image = _load_image(data_path / rel, rel, where)
            # as in the reference: an image without depth simply gets no depth target
            dpath = find_depth(depth_root, rel) if depth_root else None
            depth = _load_depth(dpath, rel, where, image.size) if dpath else None
            pil_images.append(image)
            depths.append(depth)
        conversations = (
            expand_video_tag(sample["conversations"], len(pil_images) - len(images))
            if frames
            else sample["conversations"]
        )
        return {
            "id": str(sample.get("id") or f"{entry['name']}:{where.rsplit(' ', 1)[-1]}"),
            "images": pil_images,
            "depths": depths,
            "conversations": conversations,
            "task": str(sample.get("task") or entry["name"]),
        }


def _load_video(path: Path, rel: str, where: str) -> list[Image.Image]:
    if not path.is_file():
        raise InputError(f"video '{rel}' in {where} does not exist: restore it or prepare the dataset again")
    try:
        return decode_video(path)
    except VideoError as e:
        raise InputError(f"video '{rel}' in {where} cannot be decoded ({e}): re-encode it (e.g. H.264 .mp4) or "
                         "drop the sample") from None


def _load_image(path: Path, rel: str, where: str) -> Image.Image:
    if not path.is_file():
        raise InputError(f"image '{rel}' in {where} does not exist: restore it or prepare the dataset again")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        reason = "cannot identify image file"
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(
        f"image '{rel}' in {where} cannot be read ({reason}): re-export it as PNG/JPEG or drop the sample"
    )


def _load_depth(path: Path, rel: str, where: str, size: tuple[int, int]) -> np.ndarray:
    try:
        depth = load_depth_m(path)
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(
            f"depth map '{path}' of image '{rel}' in {where} cannot be read ({str(e).splitlines()[0]}): "
            "save depth as a 16-bit PNG in millimetres"
        ) from None
    if depth.shape != (size[1], size[0]):
        raise InputError(
            f"depth map '{path}' is {depth.shape[1]}x{depth.shape[0]} but image '{rel}' in {where} is "
            f"{size[0]}x{size[1]}: regenerate the depth at the image's size"
        )
    return depth


def _episodes(dataset_dir: Path) -> dict:
    episodes = load_manifest(dataset_dir)["episodes"]
    if not episodes:
        raise InputError(
            f"dataset '{dataset_dir}' has no episodes: set data.num_episodes > 0 (synth) or data.episodes_dir (files)"
        )
    return episodes


class EpisodeWindows(Sequence):
    """One training window per episode step: {"images": [PIL RGB] (see below), "image": the first camera's frame
    at this step, "depth": float32 (H, W) metres of the first camera at this step or None, "state": float32
    (state_dim,), "actions": float32 (chunk_size, action_dim), "action_mask": bool (chunk_size,), "instruction": str,
    "episode": int, "step": int}.

    `images` are `history` frames of every camera, oldest first and camera by camera within a frame (GEM-VLA's
    order, train/dataset.py); before the episode's start its first frame repeats. `actions` are the actions from
    this step on; past the episode's end the last action is repeated and `action_mask` is False there (so a loss
    may ignore the padding).
    """

    def __init__(self, dataset_dir: Path, chunk_size: int, camera: str | None = None,
                 cameras: Sequence[str] | None = None, history: int = 1):
        if chunk_size < 1:
            raise InputError(f"action chunk size is {chunk_size}: use 1 or more")
        if history < 1:
            raise InputError(f"image history is {history}: use 1 or more frames")
        self.dataset_dir = Path(dataset_dir)
        meta = _episodes(self.dataset_dir)
        self.cameras = list(cameras) if cameras else [camera or meta["cameras"][0]]
        if len(set(self.cameras)) != len(self.cameras):
            raise InputError(f"cameras {self.cameras} name a camera twice: list each camera once")
        for name in self.cameras:
            if name not in meta["cameras"]:
                raise InputError(
                    f"camera '{name}' is not in the episodes: use one of {', '.join(meta['cameras'])}"
                )
        self.camera = self.cameras[0]
        self.history = history
        self.chunk_size = chunk_size
        self.meta = meta
        self.policy = ReadPolicy(load_manifest(self.dataset_dir).get("config") or {})
        self.instructions = meta["instructions"]
        self.with_depth = self.camera in meta["depth_cameras"]
        self._starts = np.cumsum([0] + list(meta["lengths"])).tolist()
        self._handles: OrderedDict[int, EpisodeReader] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _open(self, episode: int) -> EpisodeReader:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._handles, self._pid = OrderedDict(), os.getpid()
        if episode in self._handles:
            self._handles.move_to_end(episode)
            return self._handles[episode]
        handle = open_episode(self.dataset_dir, self.meta, episode)
        self._handles[episode] = handle
        if len(self._handles) > MAX_OPEN_EPISODES:
            self._handles.popitem(last=False)[1].close()
        return handle

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range ({len(self)} windows)")
        return self.policy.read(self._read, index, len(self))

    def _read(self, index: int) -> dict:
        episode = bisect.bisect_right(self._starts, index) - 1
        step = index - self._starts[episode]
        length = self._starts[episode + 1] - self._starts[episode]
        f = self._open(episode)
        all_actions = f.actions()
        actions = all_actions[step : step + self.chunk_size]
        valid = len(actions)
        if valid < self.chunk_size:
            actions = np.concatenate([actions, np.repeat(all_actions[length - 1][None], self.chunk_size - valid, 0)])
        depth = f.depth(self.camera, step) if self.with_depth else None
        frames = [max(step - k, 0) for k in reversed(range(self.history))]
        per_camera = {c: f.frames(c, frames) for c in self.cameras}
        images = [Image.fromarray(per_camera[c][k]) for k in range(len(frames)) for c in self.cameras]
        return {
            "images": images,
            "image": images[-len(self.cameras)],
            "depth": depth,
            "state": np.asarray(f.states()[step], dtype=np.float32),
            "actions": np.asarray(actions, dtype=np.float32),
            "action_mask": np.arange(self.chunk_size) < valid,
            "instruction": self.instructions[episode],
            "episode": episode,
            "step": step,
        }


def action_statistics(dataset_dir: Path) -> dict:
    """{"action": {"mean", "std", "min", "max"}, "state": {...}, "count": steps}: per-dimension float lists over all
    steps of all episodes (std is the population std, as the reference's action_stats.json). Computed once at
    ingest for the user's episodes (kept in the manifest), else here."""
    meta = _episodes(Path(dataset_dir))
    return meta.get("statistics") or episode_statistics(Path(dataset_dir), meta)


def text_corpus(dataset_dir: Path) -> Iterator[str]:
    """Every listed sample's conversation texts (once, however often its set's weight lists it), in file order, then
    every episode instruction (for training a small tokenizer). Streams each annotation file once, no images."""
    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    with DigestCache() as cache:
        files = [(entry, _annotation_file(dataset_dir, entry, cache)) for entry in manifest["annotation_sets"]]
    for entry, ann in files:
        rows = (np.load(dataset_dir / entry["index"], mmap_mode="r") if entry.get("index")
                else _scan_rows(ann, entry, manifest["seed"]))
        kept = np.unique(rows[:, 0])
        j = 0
        for line_no, offset, raw in scan_jsonl(ann):
            if j < len(kept) and offset == kept[j]:
                j += 1
                sample = parse_sample(raw, f"{ann.name} line {line_no}")
                for turn in sample.get("conversations") or []:
                    yield turn["value"]
    if manifest["episodes"]:
        yield from manifest["episodes"]["instructions"]
