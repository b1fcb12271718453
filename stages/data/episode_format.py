"""Action episodes as HDF5, in the reference (GEM-VLA / RDT) layout:

    action                              (N, action_dim) float32    the action taken at step t
    observations/images/<camera>        (N, H, W, 3)    uint8      RGB seen before the action at step t
    observations/depth_images/<camera>  (N, H, W)       uint16     depth in millimetres, 0 = invalid (optional)
    observations/state                  (N, state_dim)  float32    proprioception at step t
    attrs: instruction (str), success (bool, optional)

The reference keeps instructions in a per-folder instructions.json (a list, first entry used); episodes without
the `instruction` attribute fall back to it.
"""

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError


def write_episode(
    path: Path,
    images: dict[str, np.ndarray],
    depths: dict[str, np.ndarray],
    state: np.ndarray,
    action: np.ndarray,
    instruction: str,
    success: bool,
) -> None:
    # One chunk per frame (a training window reads single frames) and gzip: synthetic frames compress ~5x.
    with h5py.File(path, "w", libver="earliest") as f:  # earliest: readable by old HDF5 builds
        f.create_dataset("action", data=np.asarray(action, dtype=np.float32))
        obs = f.create_group("observations")
        for group, arrays, dtype in (("images", images, np.uint8), ("depth_images", depths, np.uint16)):
            g = obs.create_group(group)
            for camera in sorted(arrays):
                data = np.asarray(arrays[camera], dtype=dtype)
                g.create_dataset(
                    camera, data=data, chunks=(1, *data.shape[1:]), compression="gzip", compression_opts=4
                )
        obs.create_dataset("state", data=np.asarray(state, dtype=np.float32))
        f.attrs["instruction"] = instruction
        f.attrs["success"] = bool(success)


@dataclass(frozen=True)
class EpisodeInfo:
    length: int  # number of steps N
    cameras: list[str]  # names under observations/images
    depth_cameras: list[str]  # names under observations/depth_images
    state_dim: int
    action_dim: int
    image_size: tuple[int, int]  # (H, W) of the first camera
    instruction: str
    success: bool | None  # None when the file does not say


def _fallback_instruction(path: Path) -> str | None:
    sidecar = path.parent / "instructions.json"
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"'{sidecar}' is not valid JSON: write a JSON list of instruction strings") from None
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    raise InputError(
        f"'{sidecar}' is not a list of instruction strings: write e.g. [\"put the cube on the plate\"]"
    )


def inspect_episode(path: Path) -> EpisodeInfo:
    """Check an episode file against the layout; InputError names the file, the problem and the fix."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(
            f"episode '{path}' cannot be opened as HDF5 ({str(e).split(';')[0]}): re-export it"
        ) from None
    with f:
        for key in ("action", "observations/images", "observations/state"):
            if key not in f:
                raise InputError(
                    f"episode '{path}' has no '{key}': write the reference layout (see gem-method.md)"
                )
        action, state = f["action"], f["observations/state"]
        cameras = sorted(f["observations/images"].keys())
        depth_cameras = (
            sorted(f["observations/depth_images"].keys()) if "observations/depth_images" in f else []
        )
        if action.ndim != 2 or state.ndim != 2 or not cameras:
            raise InputError(
                f"episode '{path}' needs 2-D 'action' and 'observations/state' and at least one camera: "
                "write (N, dim) arrays and observations/images/<camera>"
            )
        n = action.shape[0]
        arrays = {"observations/state": state}
        arrays.update({f"observations/images/{c}": f[f"observations/images/{c}"] for c in cameras})
        arrays.update(
            {f"observations/depth_images/{c}": f[f"observations/depth_images/{c}"] for c in depth_cameras}
        )
        for key, data in arrays.items():
            if data.shape[0] != n:
                raise InputError(
                    f"episode '{path}': '{key}' has {data.shape[0]} steps but 'action' has {n}: cut them to one length"
                )
        for c in cameras:
            data = f[f"observations/images/{c}"]
            if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
                raise InputError(
                    f"episode '{path}': camera '{c}' is {data.dtype} {data.shape}, not (N, H, W, 3) uint8: re-export it"
                )
        for c in depth_cameras:
            data = f[f"observations/depth_images/{c}"]
            if data.ndim != 3 or data.dtype != np.uint16:
                raise InputError(
                    f"episode '{path}': depth camera '{c}' is {data.dtype} {data.shape}, not (N, H, W) uint16 "
                    "millimetres: store metric depth as uint16 mm (colourised depth is not supported)"
                )
            if c in cameras and data.shape[1:] != f[f"observations/images/{c}"].shape[1:3]:
                raise InputError(
                    f"episode '{path}': depth of camera '{c}' is not the size of its images: resize it"
                )
        if n == 0:
            raise InputError(f"episode '{path}' has 0 steps: drop the file")
        instruction = f.attrs.get("instruction")
        if isinstance(instruction, bytes):
            instruction = instruction.decode()
        if not isinstance(instruction, str):
            instruction = _fallback_instruction(path)
        if not instruction:
            raise InputError(
                f"episode '{path}' has no instruction: set the HDF5 attribute 'instruction' or put an "
                "instructions.json list beside it"
            )
        success = f.attrs.get("success")
        return EpisodeInfo(
            length=int(n),
            cameras=cameras,
            depth_cameras=depth_cameras,
            state_dim=int(state.shape[1]),
            action_dim=int(action.shape[1]),
            image_size=tuple(int(s) for s in f[f"observations/images/{cameras[0]}"].shape[1:3]),
            instruction=instruction,
            success=None if success is None else bool(success),
        )


# --- the format's side of episode_sources: settings, scan, reader ---------------------------------------------


def resolve_keys(cfg) -> dict:
    """rdt files name their arrays themselves; only the image turn applies."""
    if cfg.episode_cameras or cfg.episode_state_keys or cfg.episode_action_key or cfg.episode_filter:
        raise InputError("data.episode_cameras / episode_state_keys / episode_action_key / episode_filter do not "
                         "apply to rdt episodes (their layout is fixed): leave them unset")
    return {"image_flip": cfg.episode_image_flip}


def scan(folder: Path, keys: dict, bad):
    """(the episodes, the files read); an unreadable episode goes to `bad` (episode_sources.BadEpisodes)."""
    from .episode_sources import Scanned, hdf5_files

    files = [p for p in hdf5_files(folder) if p.suffix == ".hdf5"]
    found = []
    for path in files:
        try:
            info = inspect_episode(path)
        except InputError as e:
            bad(e)
            continue
        found.append(Scanned(path, None, info.length, info.instruction, info.cameras, info.depth_cameras,
                             info.state_dim, info.action_dim, info.image_size))
    return found, [ep.file for ep in found]


class Hdf5Episode:
    """One episode in an HDF5 file, under `group` of it (the file's root, or a robomimic demo): a file or key that
    cannot be read (truncated, rewritten since prepare) is one line naming the episode, not h5py's traceback."""

    def __init__(self, path: Path, name: str, group: str = "/"):
        self.name = name
        try:
            self.file = h5py.File(path, "r")
            self.root = self.file[group]
        except (OSError, KeyError) as e:
            raise InputError(f"episode {name} cannot be opened ({str(e).split(';')[0]}): restore the file or "
                             "prepare again") from None

    def _read(self, key: str, index=()):
        try:
            return self.root[key][index]
        except (OSError, KeyError) as e:
            raise InputError(f"episode {self.name}: '{key}' cannot be read ({str(e).split(';')[0]}): restore "
                             "the file or prepare again") from None

    def close(self) -> None:
        self.file.close()


class RdtEpisode(Hdf5Episode):
    def __init__(self, path: Path, keys: dict, name: str):
        super().__init__(path, name)
        self.image_flip = keys.get("image_flip", "none")

    @functools.cached_property
    def _actions(self) -> np.ndarray:
        return np.asarray(self._read("action"), dtype=np.float32)

    @functools.cached_property
    def _states(self) -> np.ndarray:
        return np.asarray(self._read("observations/state"), dtype=np.float32)

    def actions(self) -> np.ndarray:
        return self._actions

    def states(self) -> np.ndarray:
        return self._states

    def frames(self, camera: str, steps: list[int]) -> list[np.ndarray]:
        from .episode_sources import flip

        return [flip(self._read(f"observations/images/{camera}", t), self.image_flip) for t in steps]

    def depth(self, camera: str, step: int) -> np.ndarray | None:
        from .episode_sources import flip

        key = f"observations/depth_images/{camera}"
        if key not in self.file:
            return None
        return flip(self._read(key, step).astype(np.float32) / 1000.0, self.image_flip)


def open_reader(path: Path, locator, keys: dict, name: str) -> RdtEpisode:
    return RdtEpisode(path, keys, name)
