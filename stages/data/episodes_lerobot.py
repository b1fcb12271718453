"""LeRobot datasets read from a local folder (no hub), in the v2.x and v3.0 layouts:

    meta/info.json        codebase_version, fps, chunks_size, data_path, video_path (templates), features
                          ({key: {dtype: video | image | float32 ..., shape}})
    v2.x: meta/episodes.jsonl ({episode_index, tasks: [str], length}), meta/tasks.jsonl,
          data/chunk-000/episode_000000.parquet (one episode per file),
          videos/chunk-000/<video_key>/episode_000000.mp4
    v3.0: meta/episodes/chunk-000/file-000.parquet (episode_index, tasks, length, data/chunk_index,
          data/file_index, videos/<key>/chunk_index, videos/<key>/file_index, videos/<key>/from_timestamp, ...),
          meta/tasks.parquet, data/chunk-000/file-000.parquet and videos/<key>/chunk-000/file-000.mp4 holding
          many episodes each (an episode's rows by episode_index, its frames from from_timestamp on)

A step's frame is the one at the step's `timestamp` (plus the episode's from_timestamp in v3.0), decoded with PyAV
after a seek to the nearest keyframe, as LeRobot's own decoder does; "image" features are PNG/JPEG bytes in the
parquet. The instruction is the episode's first task.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .episode_sources import Scanned, flip
from .video import VideoError, video_size

IMAGE_PREFIXES = ("observation.images.", "observation.")


def resolve_keys(cfg) -> dict:
    if cfg.episode_filter:
        raise InputError("data.episode_filter is robomimic's mask: leave it empty for a LeRobot dataset")
    return {"cameras": {c.name: c.key for c in cfg.episode_cameras},
            "state": list(cfg.episode_state_keys) or ["observation.state"],
            "action": cfg.episode_action_key or "action", "image_flip": cfg.episode_image_flip}


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading a LeRobot dataset needs pyarrow: pip install pyarrow") from None
    return pq


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"'{path}' cannot be read as JSON ({e}): restore the dataset's metadata") from None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"LeRobot v2 dataset has no '{path}': restore the dataset's metadata")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"'{path}' line {n} is not JSON ({e.msg}): restore the dataset's metadata") from None
    return rows


def _read_table(path: Path, what: str, **kwargs):
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist: restore the dataset")
    try:
        return _pq().read_table(path, **kwargs)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(e).splitlines()[0].split(". ")[0]
        raise InputError(f"{what} '{path}' cannot be read as parquet ({reason}): restore it") from None


def _episodes_meta(root: Path, info: dict) -> list[dict]:
    """Per episode: episode_index, instruction, length, data file, video files and start times (relative paths)."""
    version = str(info.get("codebase_version", ""))
    videos = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    out = []
    if version.startswith("v2"):
        chunks = int(info.get("chunks_size", 1000))
        path = root / "meta" / "episodes.jsonl"
        for row in _read_jsonl(path):
            _require(row, ["episode_index", "length"], path)
            ep = int(row["episode_index"])
            fields = {"episode_chunk": ep // chunks, "episode_index": ep}
            out.append({"episode_index": ep, "tasks": row.get("tasks") or [], "length": int(row["length"]),
                        "data": info["data_path"].format(**fields),
                        "videos": {k: [info["video_path"].format(video_key=k, **fields), 0.0] for k in videos}})
    elif version.startswith("v3"):
        files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
        if not files:
            raise InputError(f"LeRobot v3 dataset '{root}' has no meta/episodes/*/*.parquet: restore its metadata")
        needed = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                  *(f"videos/{k}/{c}" for k in videos for c in ("chunk_index", "file_index", "from_timestamp"))]
        for path in files:
            try:
                names = _pq().read_schema(path).names
            except (OSError, ValueError) as e:
                raise InputError(f"episode metadata '{path}' cannot be read as parquet "
                                 f"({str(e).splitlines()[0].split('. ')[0]}): restore it") from None
            _require(names, needed, path)
            for row in _read_table(path, "episode metadata", columns=needed).to_pylist():
                data = info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                file_index=row["data/file_index"])
                out.append({"episode_index": int(row["episode_index"]), "tasks": row.get("tasks") or [],
                            "length": int(row["length"]), "data": data,
                            "videos": {k: [info["video_path"].format(video_key=k,
                                                                     chunk_index=row[f"videos/{k}/chunk_index"],
                                                                     file_index=row[f"videos/{k}/file_index"]),
                                           float(row[f"videos/{k}/from_timestamp"])] for k in videos}})
    else:
        raise InputError(f"'{root / 'meta' / 'info.json'}' has codebase_version {version!r}: this reads LeRobot v2.x "
                         "and v3.0 datasets; convert it with LeRobot's converter")
    return sorted(out, key=lambda e: e["episode_index"])


def _require(have, fields: list[str], path: Path) -> None:
    missing = [f for f in fields if f not in have]
    if missing:
        raise InputError(f"LeRobot metadata '{path}' has no {', '.join(missing)}: restore the dataset's metadata")


def _cameras(info: dict, keys: dict) -> dict[str, str]:
    features = info["features"]
    if keys["cameras"]:
        for name, key in keys["cameras"].items():
            if features.get(key, {}).get("dtype") not in ("video", "image"):
                raise InputError(f"data.episode_cameras maps '{name}' to '{key}', which is not a video or image "
                                 f"feature of the dataset: use one of {', '.join(_image_keys(features)) or 'none'}")
        return dict(keys["cameras"])
    cameras = {}
    for key in _image_keys(features):
        prefix = next((p for p in IMAGE_PREFIXES if key.startswith(p)), "")
        cameras[key[len(prefix):]] = key
    return cameras


def _image_keys(features: dict) -> list[str]:
    return [k for k, f in features.items() if f.get("dtype") in ("video", "image")]


def _dim(info: dict, key: str, setting: str) -> int:
    feature = info["features"].get(key)
    if feature is None or feature.get("dtype") in ("video", "image", "string"):
        numeric = [k for k, f in info["features"].items() if f.get("dtype") not in ("video", "image", "string")]
        raise InputError(f"the LeRobot dataset has no numeric feature '{key}' ({setting}): use one of "
                         f"{', '.join(numeric)}")
    return int(np.prod(feature.get("shape") or [1]))


def scan(folder: Path, keys: dict, bad) -> tuple[list[Scanned], list[Path]]:
    """(the episodes, the files read); an episode whose files are missing or unreadable goes to `bad`
    (episode_sources.BadEpisodes); problems with the dataset's metadata always stop."""
    info_path = folder / "meta" / "info.json"
    if not info_path.is_file():
        raise InputError(f"'{folder}' has no meta/info.json, so it is not a LeRobot dataset: give the dataset's "
                         "top folder or set data.episode_format")
    info = _read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict) or "fps" not in info:
        raise InputError(f"'{info_path}' has no features or fps: restore the dataset's metadata")
    cameras = _cameras(info, keys)
    # dataset-wide, kept once in the manifest's keys (episode locators stay small for many episodes)
    keys.update(cameras=cameras, columns=list(_low_dim_columns(info, keys)), fps=float(info["fps"]))
    if not cameras:
        raise InputError(f"the LeRobot dataset '{folder}' has no video or image feature: stage 4 needs camera frames")
    action_dim = _dim(info, keys["action"], "data.episode_action_key")
    state_dim = sum(_dim(info, k, "data.episode_state_keys") for k in keys["state"])
    files = {info_path}
    found = []
    probed: dict[str, tuple[int, int]] = {}
    for ep in _episodes_meta(folder, info):
        try:
            found.append(_check_episode(folder, info, keys, ep, cameras, state_dim, action_dim, files, probed))
        except InputError as e:
            bad(e)
    return found, sorted(files)


def _check_episode(folder: Path, info: dict, keys: dict, ep: dict, cameras: dict[str, str], state_dim: int,
                   action_dim: int, files: set, probed: dict) -> Scanned:
    name = f"episode {ep['episode_index']}"
    data = folder / ep["data"]
    rows = _episode_rows(data, ep["episode_index"], _low_dim_columns(info, keys), f"LeRobot {name}").num_rows
    if rows != ep["length"] or rows == 0:
        raise InputError(f"LeRobot {name}: its data file '{data}' has {rows} rows but the metadata says "
                         f"{ep['length']} steps: restore the dataset")
    used = [data]  # listed in files.md5 only when the episode is kept
    for camera, key in cameras.items():
        if key in ep["videos"]:
            video = folder / ep["videos"][key][0]
            if not video.is_file():
                raise InputError(f"LeRobot {name}: video '{video}' of camera '{camera}' does not exist: restore "
                                 "the dataset")
            if str(video) not in probed:
                try:
                    width, height = video_size(video, decode=False)
                except VideoError as e:
                    raise InputError(f"LeRobot {name}: video '{video}' cannot be read ({e}): re-encode it or "
                                     "restore the dataset") from None
                probed[str(video)] = (height, width)
            used.append(video)
    instruction = next((t for t in ep["tasks"] if isinstance(t, str) and t), None)
    if instruction is None:
        raise InputError(f"LeRobot {name} has no task: give each episode a task (its instruction)")
    first = cameras[sorted(cameras)[0]]
    shape = info["features"][first].get("shape") or [0, 0, 3]
    size = probed.get(str(folder / ep["videos"][first][0])) if first in ep["videos"] else tuple(shape[:2])
    locator = {"name": name, "episode_index": ep["episode_index"],
               "videos": {k: [str(folder / p), t] for k, (p, t) in ep["videos"].items() if k in cameras.values()}}
    files.update(used)
    return Scanned(data, locator, ep["length"], instruction, sorted(cameras), [], state_dim, action_dim,
                   tuple(int(s) for s in size))


def _low_dim_columns(info: dict, keys: dict) -> tuple[str, ...]:
    wanted = ["episode_index", "frame_index", "timestamp", keys["action"], *keys["state"]]
    return tuple(k for k in dict.fromkeys(wanted) if k in info["features"])


@functools.lru_cache(maxsize=1)
def _data_file(path: str, stamp: tuple[int, int], columns: tuple[str, ...]):
    """A data file's low-dimensional columns. One file is kept: ingest walks episodes file by file (v3.0 files
    hold many episodes), and an episode reader keeps its own rows."""
    return _read_table(Path(path), "data file", columns=list(columns))


def _episode_rows(path: Path, episode_index: int, columns: tuple[str, ...], who: str):
    """The episode's rows of its data file, in frame order; `who` names the episode in errors."""
    import pyarrow.compute as pc

    try:
        stat = path.stat()
        table = _data_file(str(path), (stat.st_mtime_ns, stat.st_size), tuple(columns))
    except OSError:
        raise InputError(f"{who}: data file '{path}' does not exist: restore the dataset") from None
    except InputError as e:
        raise InputError(f"{who}: {e}") from None
    rows = table.filter(pc.equal(table.column("episode_index"), episode_index))
    return rows.sort_by("frame_index") if "frame_index" in rows.column_names else rows


class LeRobotEpisode:
    def __init__(self, path: Path, locator: dict, keys: dict, name: str):
        self.path, self.locator, self.keys, self.name = path, locator, keys, name
        self.image_flip = keys.get("image_flip", "none")

    @functools.cached_property
    def _table(self):
        """The episode's low-dimensional rows (actions, states, timestamps), in frame order."""
        return _episode_rows(self.path, self.locator["episode_index"], tuple(self.keys["columns"]),
                             f"episode {self.name}")

    def _column(self, key: str) -> np.ndarray:
        if key not in self._table.column_names:
            raise InputError(f"episode {self.name}: the data file has no column '{key}': prepare the dataset again")
        return np.asarray(self._table.column(key).to_pylist(), dtype=np.float32).reshape(self._table.num_rows, -1)

    @functools.cached_property
    def _actions(self) -> np.ndarray:
        return self._column(self.keys["action"])

    @functools.cached_property
    def _states(self) -> np.ndarray:
        return np.concatenate([self._column(k) for k in self.keys["state"]], axis=1)

    def actions(self) -> np.ndarray:
        return self._actions

    def states(self) -> np.ndarray:
        return self._states

    def frames(self, camera: str, steps: list[int]) -> list[np.ndarray]:
        key = self.keys["cameras"][camera]
        if key not in self.locator["videos"]:  # an "image" feature: encoded bytes in the parquet
            from PIL import Image

            column = _read_table(self.path, f"episode {self.name}'s data file", columns=[key, "frame_index"],
                                 filters=[("episode_index", "=", self.locator["episode_index"])]
                                 ).sort_by("frame_index").column(key)
            images = []
            for t in steps:
                cell = column[t].as_py()
                try:
                    with Image.open(io.BytesIO(cell["bytes"])) as image:
                        images.append(np.asarray(image.convert("RGB")))
                except (OSError, TypeError, KeyError) as e:
                    raise InputError(f"episode {self.name}: image '{key}' of step {t} cannot be decoded ({e}): "
                                     "restore the dataset") from None
            return [flip(im, self.image_flip) for im in images]
        video, start = self.locator["videos"][key]
        stamps = self._table.column("timestamp").to_numpy()
        wanted = [start + float(stamps[t]) for t in steps]
        return [flip(im, self.image_flip) for im in self._decode(video, wanted)]

    def _decode(self, video: str, wanted: list[float]) -> list[np.ndarray]:
        """The frames nearest to each time in `wanted` (seconds), within half a frame period."""
        import av

        tolerance = 0.5 / self.keys["fps"]
        first, last = min(wanted), max(wanted)
        got: list[tuple[float, np.ndarray]] = []
        try:
            with av.open(video) as container:
                stream = container.streams.video[0]
                container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.time is None or frame.time < first - tolerance:
                        continue
                    got.append((frame.time, frame.to_ndarray(format="rgb24")))
                    if frame.time >= last - tolerance:
                        break
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
            raise InputError(f"episode {self.name}: video '{video}' cannot be decoded ({str(e).splitlines()[0]}): "
                             "re-encode it or restore the dataset") from None
        out = []
        for t in wanted:
            near = min(got, key=lambda g: abs(g[0] - t), default=None)
            if near is None or abs(near[0] - t) > tolerance:
                raise InputError(f"episode {self.name}: video '{video}' has no frame at {t:.3f} s (truncated?): "
                                 "re-encode it or restore the dataset")
            out.append(near[1])
        return out

    def depth(self, camera: str, step: int) -> None:
        return None

    def close(self) -> None:
        pass


def open_reader(path: Path, locator: dict, keys: dict, name: str) -> LeRobotEpisode:
    return LeRobotEpisode(path, locator, keys, name)
