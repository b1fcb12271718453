"""Small episode datasets written in the real layouts users bring: LIBERO / robomimic HDF5 (h5py) and LeRobot v2.1
and v3.0 folders (pyarrow parquet, PyAV mp4). Every value says where it came from, so a test can check that a window
holds exactly the right step:

    action[t]  = 10 * episode + t + k / 10 in dimension k
    state[t]   = 100 + 10 * episode + t + k / 10 (over the concatenated state keys)
    frames: a vertical ramp plus `shade(episode, t, camera)` (robomimic, exact), or a flat grey of that shade (mp4)
"""

import json
from pathlib import Path

import h5py
import numpy as np

LIBERO_STATE = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2}  # the 8-dim state, in this order
FPS = 10


def shade(episode: int, t: int, camera: int) -> int:
    return (40 * episode + 16 * t + 100 * camera) % 200 + 20


def actions_of(episode: int, n: int, dim: int) -> np.ndarray:
    return (10 * episode + np.arange(n)[:, None] + np.arange(dim)[None] / 10).astype(np.float32)


def states_of(episode: int, n: int, dim: int) -> np.ndarray:
    return (100 + 10 * episode + np.arange(n)[:, None] + np.arange(dim)[None] / 10).astype(np.float32)


def ramp_frame(episode: int, t: int, camera: int, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    rows = np.arange(h, dtype=np.int32)[:, None, None] * 2
    return ((rows + shade(episode, t, camera)) % 256 * np.ones((1, w, 3), np.int32)).astype(np.uint8)


def write_libero(path: Path, lengths: list[int], instruction: str = "put the bowl on the plate", first_episode: int = 0,
                 size: tuple[int, int] = (32, 32), masks: dict[str, list[int]] | None = None) -> None:
    """A LIBERO demo file: data/demo_i with actions (N, 7), obs/agentview_rgb + eye_in_hand_rgb, the low-dim obs
    (ee_pos, ee_ori, gripper_states, ee_states, joint_states), robomimic's rewards/dones/states, the task in
    data's problem_info, and robomimic's mask/<split> lists."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps({"env_name": "Libero_Tabletop_Manipulation", "type": 1, "env_kwargs": {}})
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "robosuite", "language_instruction": instruction})
        data.attrs["bddl_file_name"] = "put_the_bowl_on_the_plate.bddl"
        for i, n in enumerate(lengths):
            ep = first_episode + i
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo.attrs["model_file"] = "<mujoco/>"
            demo.create_dataset("actions", data=actions_of(ep, n, 7).astype(np.float64))
            demo.create_dataset("rewards", data=np.zeros(n))
            demo.create_dataset("dones", data=np.eye(1, n, n - 1)[0].astype(np.uint8))
            demo.create_dataset("states", data=np.zeros((n, 47)))
            obs = demo.create_group("obs")
            for c, key in enumerate(("agentview_rgb", "eye_in_hand_rgb")):
                obs.create_dataset(key, data=np.stack([ramp_frame(ep, t, c, size) for t in range(n)]))
            state = states_of(ep, n, sum(LIBERO_STATE.values())).astype(np.float64)
            at = 0
            for key, dim in LIBERO_STATE.items():
                obs.create_dataset(key, data=state[:, at : at + dim])
                at += dim
            obs.create_dataset("ee_states", data=state[:, :6])
            obs.create_dataset("joint_states", data=np.zeros((n, 7)))
        for split, demos in (masks or {}).items():
            f.create_dataset(f"mask/{split}", data=np.array([f"demo_{d}".encode() for d in demos]))


# PyAV encoder -> options: H.264, and SVT-AV1 (LeRobot's default vcodec; it needs frames of 64 pixels or more)
CODECS = {"h264": ("libx264", {"crf": "10", "g": "4"}), "av1": ("libsvtav1", {"crf": "20", "g": "4", "preset": "12"})}


def _encode(path: Path, shades: list[int], size: tuple[int, int], codec: str = "h264") -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    encoder, options = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for value in shades:
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


LEROBOT_CAMERAS = ("observation.images.top", "observation.images.wrist")


def _features(size: tuple[int, int], action_dim: int, state_dim: int) -> dict:
    video = {"dtype": "video", "shape": [size[0], size[1], 3], "names": ["height", "width", "channels"],
             "info": {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p"}}
    scalar = {"dtype": "int64", "shape": [1], "names": None}
    return {
        "action": {"dtype": "float32", "shape": [action_dim], "names": [f"a{k}" for k in range(action_dim)]},
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": [f"s{k}" for k in range(state_dim)]},
        **{key: video for key in LEROBOT_CAMERAS},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": scalar, "episode_index": scalar, "index": scalar, "task_index": scalar,
    }


def _rows(episode: int, n: int, start_index: int, task_index: int, action_dim: int, state_dim: int) -> dict:
    return {"action": actions_of(episode, n, action_dim).tolist(),
            "observation.state": states_of(episode, n, state_dim).tolist(),
            "timestamp": (np.arange(n) / FPS).astype(np.float32).tolist(),
            "frame_index": list(range(n)), "episode_index": [episode] * n,
            "index": list(range(start_index, start_index + n)), "task_index": [task_index] * n}


def _table(columns: dict):
    import pyarrow as pa

    types = {"action": pa.list_(pa.float32()), "observation.state": pa.list_(pa.float32()), "timestamp": pa.float32()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.int64())) for k, v in columns.items()})


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def write_lerobot_v2(root: Path, lengths: list[int], tasks: list[str], size=(32, 32), action_dim=4,
                     state_dim=4, images: bool = False) -> None:
    """LeRobot v2.1: one parquet and one mp4 per camera per episode; episodes/tasks as JSON lines. images=True:
    the cameras are "image" features instead, PNG bytes in the parquet ({"bytes", "path"} structs) with the
    ramp frames."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "robot_type": "test", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(set(tasks)), "total_videos": 2 * len(lengths),
            "total_chunks": 1, "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features(size, action_dim, state_dim)}
    if images:
        for key in LEROBOT_CAMERAS:
            info["features"][key] = {**info["features"][key], "dtype": "image"}
            del info["features"][key]["info"]
        info["total_videos"] = 0
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for t, i in task_ids.items()))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [tasks[e]], "length": n}) + "\n" for e, n in enumerate(lengths)))
    start = 0
    for e, n in enumerate(lengths):
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _table(_rows(e, n, start, task_ids[tasks[e]], action_dim, state_dim))
        for c, key in enumerate(LEROBOT_CAMERAS):
            if images:
                cells = [{"bytes": _png(ramp_frame(e, t, c, size)), "path": f"frame_{t:06d}.png"} for t in range(n)]
                table = table.append_column(key, pa.array(cells, pa.struct([("bytes", pa.binary()),
                                                                            ("path", pa.string())])))
            else:
                _encode(root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4", [shade(e, t, c) for t in range(n)],
                        size)
        pq.write_table(table, path)
        start += n


def write_lerobot_v3(root: Path, lengths: list[int], tasks: list[str], size=(32, 32), action_dim=4,
                     state_dim=4, codec: str = "h264") -> None:
    """LeRobot v3.0: every episode in one data parquet and one mp4 per camera (episodes back to back, found by
    from/to timestamps); episodes and tasks as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": "v3.0", "robot_type": "test", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(set(tasks)), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features(size, action_dim, state_dim)}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    pq.write_table(pa.table({"task_index": list(task_ids.values()), "__index_level_0__": list(task_ids)}),
                   root / "meta" / "tasks.parquet")
    columns: dict[str, list] = {}
    episodes: dict[str, list] = {k: [] for k in ("episode_index", "tasks", "length", "data/chunk_index",
                                                 "data/file_index", "dataset_from_index", "dataset_to_index")}
    start = 0
    for e, n in enumerate(lengths):
        for k, v in _rows(e, n, start, task_ids[tasks[e]], action_dim, state_dim).items():
            columns.setdefault(k, []).extend(v)
        for k, v in (("episode_index", e), ("tasks", [tasks[e]]), ("length", n), ("data/chunk_index", 0),
                     ("data/file_index", 0), ("dataset_from_index", start), ("dataset_to_index", start + n)):
            episodes[k].append(v)
        for key in LEROBOT_CAMERAS:
            for k, v in (("chunk_index", 0), ("file_index", 0), ("from_timestamp", start / FPS),
                         ("to_timestamp", (start + n) / FPS)):
                episodes.setdefault(f"videos/{key}/{k}", []).append(v)
        start += n
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(_table(columns), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.table(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    for c, key in enumerate(LEROBOT_CAMERAS):
        _encode(root / f"videos/{key}/chunk-000/file-000.mp4",
                [shade(e, t, c) for e, n in enumerate(lengths) for t in range(n)], size, codec)
