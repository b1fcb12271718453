"""LIBERO / robomimic HDF5 demonstrations, many episodes per file (robomimic's dataset layout):

    data                         attrs: total (steps), env_args (JSON); LIBERO adds problem_info (JSON with
                                 "language_instruction"), bddl_file_name, ...
    data/demo_N                  attrs: num_samples
    data/demo_N/actions          (N, action_dim) float
    data/demo_N/obs/<key>        (N, ...): images (N, H, W, 3) uint8 under <camera>_rgb (LIBERO: agentview_rgb,
                                 eye_in_hand_rgb) or <camera>_image (robomimic: agentview_image, ...); low-dim keys
                                 (LIBERO: ee_pos, ee_ori, ee_states, gripper_states, joint_states; robomimic:
                                 robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, object)
    mask/<filter>                demo names (bytes) of a split, e.g. mask/train, mask/valid

The instruction is LIBERO's problem_info language_instruction, else an `instruction` attribute of the demo or of
`data`, else the first entry of an instructions.json beside the file (as for rdt episodes). robosuite renders
bottom row first: data.episode_image_flip turns the frames upright. Depth is not read (robosuite's depth is not
metric).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from .episode_format import Hdf5Episode, _fallback_instruction
from .episode_sources import Scanned, flip, hdf5_files

# LIBERO's 8-dim state (the LIBERO evaluator's: eef position, axis-angle, gripper joints), then robomimic's
DEFAULT_STATE_KEYS = (["ee_pos", "ee_ori", "gripper_states"],
                      ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"])
IMAGE_SUFFIXES = ("_rgb", "_image")


def resolve_keys(cfg) -> dict:
    return {"cameras": {c.name: c.key for c in cfg.episode_cameras}, "state": list(cfg.episode_state_keys),
            "action": cfg.episode_action_key or "actions", "filter": cfg.episode_filter,
            "image_flip": cfg.episode_image_flip}


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"demonstration file '{path}' cannot be opened as HDF5 ({str(e).split(';')[0]}): "
                         "re-export it") from None


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) and value else None


def _instruction(path: Path, f: h5py.File, demo: h5py.Group) -> str | None:
    problem = _text(f["data"].attrs.get("problem_info"))
    if problem:
        try:
            value = json.loads(problem).get("language_instruction")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)  # some LIBERO exports store it split up (readers join it, as here)
        text = _text(value)
        if text and text.strip().strip('"'):
            return text.strip().strip('"')
    return _text(demo.attrs.get("instruction")) or _text(f["data"].attrs.get("instruction")) \
        or _fallback_instruction(path)


def _demo_names(path: Path, f: h5py.File, keys: dict) -> list[str]:
    if keys["filter"]:
        mask = f.get(f"mask/{keys['filter']}")
        if mask is None:
            have = ", ".join(sorted(f["mask"])) if "mask" in f else "none"
            raise InputError(f"demonstration file '{path}' has no mask/{keys['filter']} (data.episode_filter): use "
                             f"one of its masks ({have}) or leave episode_filter empty")
        names = [_text(n) or "" for n in mask[()]]
    else:
        names = [n for n in f["data"] if isinstance(f["data"][n], h5py.Group)]
    missing = [n for n in names if n not in f["data"]]
    if missing:
        raise InputError(f"demonstration file '{path}': mask/{keys['filter']} lists {missing[0]}, which is not "
                         "under data/: re-export the file")
    return sorted(names, key=lambda n: (int(m.group()) if (m := re.search(r"\d+$", n)) else -1, n))


def _cameras(obs: h5py.Group, keys: dict) -> dict[str, str]:
    if keys["cameras"]:
        return dict(keys["cameras"])
    cameras = {}
    for key in obs:
        for suffix in IMAGE_SUFFIXES:
            if key.endswith(suffix) and obs[key].ndim == 4:
                cameras[key[: -len(suffix)]] = key
    return cameras


def _state_keys(where: str, obs: h5py.Group, keys: dict) -> list[str]:
    if keys["state"]:
        return list(keys["state"])
    for candidate in DEFAULT_STATE_KEYS:
        if all(k in obs for k in candidate):
            return candidate
    raise InputError(f"{where} has none of the default state keys ({DEFAULT_STATE_KEYS[0]} or "
                     f"{DEFAULT_STATE_KEYS[1]}): list the obs keys that make the state in data.episode_state_keys "
                     f"(it has {', '.join(sorted(obs))})")


def _check_demo(path: Path, name: str, f: h5py.File, keys: dict) -> Scanned:
    where = f"demonstration file '{path}' {name}"
    demo = f["data"][name]
    obs = demo.get("obs")
    action_key = keys["action"]
    if action_key not in demo or not isinstance(obs, h5py.Group):
        raise InputError(f"{where} has no '{action_key}' or no 'obs' group: write the robomimic layout "
                         "(data/demo_N/actions, data/demo_N/obs/<key>) or set data.episode_action_key")
    actions = demo[action_key]
    n = actions.shape[0] if actions.ndim == 2 else -1
    if n < 1:
        raise InputError(f"{where}: '{action_key}' is {actions.shape}, not (N >= 1, action_dim): re-export it")
    cameras = _cameras(obs, keys)
    if not cameras:
        raise InputError(f"{where} has no image obs (<camera>_rgb or <camera>_image): name the camera keys in "
                         "data.episode_cameras")
    state_keys = _state_keys(where, obs, keys)
    for key in [*cameras.values(), *state_keys]:
        if key not in obs:
            raise InputError(f"{where} has no obs/{key}: use one of {', '.join(sorted(obs))} in "
                             "data.episode_cameras / data.episode_state_keys")
        if obs[key].shape[0] != n:
            raise InputError(f"{where}: obs/{key} has {obs[key].shape[0]} steps but '{action_key}' has {n}: cut them "
                             "to one length")
    for camera, key in cameras.items():
        data = obs[key]
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
            raise InputError(f"{where}: camera '{camera}' (obs/{key}) is {data.dtype} {data.shape}, not (N, H, W, 3) "
                             "uint8: re-export it")
    state_dim = sum(int(np.prod(obs[k].shape[1:])) for k in state_keys)
    instruction = _instruction(path, f, demo)
    if not instruction:
        raise InputError(f"{where} has no instruction: LIBERO files carry it in data's problem_info; otherwise set "
                         "an 'instruction' attribute on data or put an instructions.json list beside the file")
    first = obs[next(iter(cameras.values()))]
    return Scanned(path, {"name": name, "cameras": cameras, "state": state_keys}, int(n), instruction,
                   sorted(cameras), [], state_dim, int(actions.shape[1]), tuple(int(s) for s in first.shape[1:3]))


def scan(folder: Path, keys: dict, bad) -> tuple[list[Scanned], list[Path]]:
    """(the demos, the files read); an unreadable demo, or file, goes to `bad` (episode_sources.BadEpisodes)."""
    files = hdf5_files(folder)
    found = []
    for path in files:
        try:
            f = _open(path)
        except InputError as e:
            bad(e)
            continue
        with f:
            if not isinstance(f.get("data"), h5py.Group):
                raise InputError(f"'{path}' has no 'data' group, so it is not a robomimic/LIBERO file: keep one format "
                                 "per episodes_dir or set data.episode_format")
            for name in _demo_names(path, f, keys):
                try:
                    found.append(_check_demo(path, name, f, keys))
                except InputError as e:
                    bad(e)
                except OSError as e:  # a truncated file opens, then fails on the dataset that is cut
                    bad(InputError(f"demonstration file '{path}' {name} cannot be read ({str(e).split(';')[0]}): "
                                   "re-export it"))
    return found, sorted({ep.file for ep in found})


class RobomimicEpisode(Hdf5Episode):
    def __init__(self, path: Path, locator: dict, keys: dict, name: str):
        super().__init__(path, name, group=f"data/{locator['name']}")
        self.locator, self.image_flip = locator, keys.get("image_flip", "none")
        self.action_key = keys.get("action", "actions")

    @functools.cached_property
    def _actions(self) -> np.ndarray:
        return np.asarray(self._read(self.action_key), dtype=np.float32)

    @functools.cached_property
    def _states(self) -> np.ndarray:
        parts = [np.asarray(self._read(f"obs/{k}"), dtype=np.float32) for k in self.locator["state"]]
        return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)

    def actions(self) -> np.ndarray:
        return self._actions

    def states(self) -> np.ndarray:
        return self._states

    def frames(self, camera: str, steps: list[int]) -> list[np.ndarray]:
        key = f"obs/{self.locator['cameras'][camera]}"
        return [flip(self._read(key, t), self.image_flip) for t in steps]

    def depth(self, camera: str, step: int) -> None:
        return None


def open_reader(path: Path, locator: dict, keys: dict, name: str) -> RobomimicEpisode:
    return RobomimicEpisode(path, locator, keys, name)
