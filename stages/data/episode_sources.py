"""Action episodes in the formats users have, behind one reader: rdt (episode_format.py), robomimic / LIBERO
(episodes_robomimic.py) and LeRobot (episodes_lerobot.py).

Ingest (`scan_episodes`) checks a folder and returns the manifest's `episodes` entry: per episode its file, its
locator inside that file (a demo name, a LeRobot row range and video spans), length and instruction; the keys read
(`keys`) and the action/state statistics, computed here once over every step. Training opens an episode with
`open_episode` and reads windows through the EpisodeReader methods, whatever the format.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputError
from .config import DataConfig


@dataclass(frozen=True)
class Scanned:
    """One episode found at ingest."""

    file: Path  # the file the episode's steps are in (HDF5 or parquet)
    locator: dict | None  # where in that file, format-specific (None: the whole file)
    length: int
    instruction: str
    cameras: list[str]
    depth_cameras: list[str]
    state_dim: int
    action_dim: int
    image_size: tuple[int, int]  # (H, W) of the first camera


class EpisodeReader(Protocol):
    """One open episode. Steps are 0..length-1; out-of-range steps are the caller's bug."""

    def actions(self) -> np.ndarray: ...  # float32 (N, action_dim), every step (small: no images)

    def states(self) -> np.ndarray: ...  # float32 (N, state_dim)

    def frames(self, camera: str, steps: list[int]) -> list[np.ndarray]: ...  # uint8 (H, W, 3) per step

    def depth(self, camera: str, step: int) -> np.ndarray | None: ...  # float32 (H, W) metres, None: no depth

    def close(self) -> None: ...


def flip(image: np.ndarray, how: str) -> np.ndarray:
    if how == "vertical":
        return np.ascontiguousarray(image[::-1])
    if how == "rotate180":
        return np.ascontiguousarray(image[::-1, ::-1])
    return image


def detect_format(folder: Path) -> str:
    """lerobot when meta/info.json exists, else robomimic when the first HDF5 file has a 'data' group, else rdt."""
    import h5py

    if (folder / "meta" / "info.json").is_file():
        return "lerobot"
    files = hdf5_files(folder)
    if not files:
        return "rdt"  # the rdt scan says what is missing
    try:
        with h5py.File(files[0], "r") as f:
            return "robomimic" if isinstance(f.get("data"), h5py.Group) else "rdt"
    except OSError as e:
        raise InputError(f"episode file '{files[0]}' cannot be opened as HDF5 ({str(e).split(';')[0]}): "
                         "re-export it") from None


def hdf5_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in ("*.hdf5", "*.h5") for p in folder.rglob(pattern))


def _module(fmt: str):
    if fmt == "rdt":
        from . import episode_format as module
    elif fmt == "robomimic":
        from . import episodes_robomimic as module
    elif fmt == "lerobot":
        from . import episodes_lerobot as module
    else:
        raise InputError(f"unknown episode format '{fmt}': use rdt, robomimic or lerobot")
    return module


class BadEpisodes:
    """What ingest does with an episode it cannot read (data.on_error): "stop" raises its InputError; "skip"
    leaves it out and counts it. Formats call it with each episode's error (or a whole file's, counted once)."""

    def __init__(self, on_error: str = "stop"):
        self.on_error, self.count, self.first = on_error, 0, None

    def __call__(self, error: InputError) -> None:
        if self.on_error == "stop":
            raise error
        self.count += 1
        self.first = self.first or str(error)


def scan_episodes(cfg: DataConfig, folder: Path, on_error: str = "stop",
                  max_skipped: float = 0.0) -> tuple[dict, list[Path]]:
    """(the manifest's `episodes` entry, every file it reads: for files.md5). InputError names file and fix.

    Each episode's actions and states are read here (the statistics need them; images are not decoded), so a
    truncated file is met at ingest: it stops, or under on_error "skip" is left out and counted, failing when
    more than max_skipped of the episodes are."""
    fmt = detect_format(folder) if cfg.episode_format == "auto" else cfg.episode_format
    module = _module(fmt)
    keys = module.resolve_keys(cfg)
    bad = BadEpisodes(on_error)
    candidates, files = module.scan(folder, keys, bad)
    found, actions, states, dropped = [], [], [], []
    for ep in candidates:
        try:
            a, s = _low_dim(module, ep, keys)
        except InputError as e:
            bad(e)
            dropped.append(ep)
            continue
        found.append(ep)
        actions.append(a)
        states.append(s)
    unused = set().union(*map(_files_of, dropped)) - set().union(*map(_files_of, found))
    files = [f for f in files if f not in unused]
    if bad.count:
        total = bad.count + len(found)
        print(f"[data] episodes: {bad.count} of {total} skipped (data.on_error: skip); the first: {bad.first}",
              file=sys.stderr, flush=True)
        if bad.count > max_skipped * total:
            raise InputError(f"{bad.count} of {total} episodes cannot be read (more than data.max_skipped "
                             f"{max_skipped:.1%}); the first: {bad.first} -- fix them or raise data.max_skipped")
    if not found:
        what = "*.hdf5 files" if fmt == "rdt" else f"{fmt} episodes"
        raise InputError(f"episodes directory '{cfg.episodes_dir}' (data.episodes_dir) has no {what}: export "
                         "episodes there, set data.episode_format, or leave it empty")
    first = found[0]
    for ep in found:
        if (ep.state_dim, ep.action_dim) != (first.state_dim, first.action_dim):
            raise InputError(
                f"episode {_where(ep)} has state/action dims {ep.state_dim}/{ep.action_dim} but "
                f"{_where(first)} has {first.state_dim}/{first.action_dim}: keep one robot's episodes per dataset")
    cameras = sorted(set.intersection(*(set(ep.cameras) for ep in found)))
    if not cameras:
        raise InputError(f"the episodes in '{cfg.episodes_dir}' share no camera name: export the same cameras for "
                         "every episode")
    meta = {
        "format": fmt,
        "keys": keys,
        "files": [str(ep.file) for ep in found],
        "locators": [ep.locator for ep in found],
        "lengths": [ep.length for ep in found],
        "instructions": [ep.instruction for ep in found],
        "cameras": cameras,
        "depth_cameras": sorted(set.intersection(*(set(ep.depth_cameras) for ep in found))),
        "state_dim": first.state_dim,
        "action_dim": first.action_dim,
        "state_names": None,
        "action_names": None,
        "units": None,
        "image_size": list(first.image_size),
        "skipped": bad.count,
        "first_skipped": bad.first,
        "statistics": _statistics(actions, states),
    }
    return meta, files


def _files_of(ep: Scanned) -> set[Path]:
    videos = (ep.locator or {}).get("videos", {})
    return {Path(ep.file), *(Path(path) for path, _ in videos.values())}


def _low_dim(module, ep: Scanned, keys: dict) -> tuple[np.ndarray, np.ndarray]:
    """The episode's actions and states, read in full and checked against its length."""
    name = _where(ep)
    reader = module.open_reader(ep.file, ep.locator, keys, name)
    try:
        actions, states = reader.actions(), reader.states()
    finally:
        reader.close()
    if len(actions) != ep.length or len(states) != ep.length:
        raise InputError(f"episode {name} has {len(actions)} actions and {len(states)} states for {ep.length} "
                         "steps: re-export it")
    return actions, states


def _name(file, locator: dict | None) -> str:
    """How messages name an episode: its file, and the demo or episode index inside it."""
    return f"'{file}'" + (f" {locator['name']}" if locator and "name" in locator else "")


def _where(ep: Scanned) -> str:
    return _name(ep.file, ep.locator)


def open_episode(dataset_dir: Path, meta: dict, episode: int) -> EpisodeReader:
    """The reader of episode `episode` of a manifest's `episodes` entry (manifests before formats: rdt)."""
    module = _module(meta.get("format", "rdt"))
    locator = (meta.get("locators") or [None] * len(meta["files"]))[episode]
    return module.open_reader(Path(dataset_dir) / meta["files"][episode], locator, meta.get("keys") or {},
                              _name(meta["files"][episode], locator))


def statistics(dataset_dir: Path, meta: dict) -> dict:
    """{"action": {"mean", "std", "min", "max"}, "state": {...}, "count": steps}: per-dimension float lists over all
    steps of all episodes (std is the population std, as the reference's action_stats.json)."""
    actions, states = [], []
    for i in range(len(meta["files"])):
        reader = open_episode(dataset_dir, meta, i)
        try:
            actions.append(reader.actions())
            states.append(reader.states())
        finally:
            reader.close()
    return _statistics(actions, states)


def _statistics(actions: list[np.ndarray], states: list[np.ndarray]) -> dict:
    stats: dict = {"count": int(sum(len(a) for a in actions))}
    for key, arrays in (("action", actions), ("state", states)):
        x = np.concatenate(arrays).astype(np.float64)
        stats[key] = {"mean": x.mean(axis=0).tolist(), "std": x.std(axis=0).tolist(),
                      "min": x.min(axis=0).tolist(), "max": x.max(axis=0).tolist()}
    return stats


class ReadPolicy:
    """data.on_error when training reads a window (a frame that does not decode, a file cut since ingest): "stop"
    raises the InputError naming file and episode; "skip" counts it, says so in one line and reads the next
    window instead, until more than max_skipped of the windows failed in this process."""

    def __init__(self, config: dict):
        self.on_error = config.get("on_error", "stop")
        self.max_skipped = float(config.get("max_skipped", 0.0))
        self.skipped = 0

    def read(self, read, index: int, total: int):
        if self.on_error == "stop":
            return read(index)
        for attempt in range(total):
            try:
                return read((index + attempt) % total)
            except InputError as e:
                self.skipped += 1
                print(f"[data] skipped an episode window (data.on_error: skip): {e}", file=sys.stderr, flush=True)
                if self.skipped > self.max_skipped * total:
                    raise InputError(f"{self.skipped} of the {total} episode windows could not be read (more than "
                                     f"data.max_skipped {self.max_skipped:.1%}); the last: {e} -- fix the episodes "
                                     "or raise data.max_skipped") from None
        raise InputError("no episode window can be read: fix the episodes and prepare the dataset again")
