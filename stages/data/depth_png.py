"""Depth maps on disk: single-channel 16-bit PNG in millimetres, 0 = invalid (no measurement / no hit)."""

from pathlib import Path

import numpy as np
from PIL import Image

# PIL modes that hold 16-bit (or wider integer) single-channel data; 8-bit or RGB "depth" has no known units.
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")


def save_depth_mm(path: Path, depth_m: np.ndarray) -> None:
    """Write metres as uint16 millimetres. Valid depths never round to 0 (that would turn them invalid)."""
    mm = np.round(np.asarray(depth_m, dtype=np.float64) * 1000.0)
    mm = np.where(depth_m > 0, np.clip(mm, 1, 65535), 0).astype(np.uint16)
    Image.fromarray(mm).save(path, format="PNG")


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """The same quantisation as save_depth_mm, for arrays stored inside HDF5 episodes."""
    mm = np.round(np.asarray(depth_m, dtype=np.float64) * 1000.0)
    return np.where(depth_m > 0, np.clip(mm, 1, 65535), 0).astype(np.uint16)


def load_depth_m(path: Path) -> np.ndarray:
    """Read a depth PNG as float32 metres. Raises ValueError (with the reason) for a non-16-bit file."""
    with Image.open(path) as image:
        if image.mode not in DEPTH_MODES:
            raise ValueError(f"mode {image.mode}, not a 16-bit single-channel PNG")
        mm = np.asarray(image)
    return (mm.astype(np.float32) / 1000.0).astype(np.float32)
