"""Depth map -> RGB target image for the depth generator (the reference's encoding, step by step).

metric depth (H, W) -> inverse depth on valid pixels -> normalise between the 2nd/98th percentile of the
valid values -> clip [0, 1] -> flip (1 - x: near = 0, far/invalid = 1) -> matplotlib "Spectral" -> RGB in
[-1, 1] -> resize to the training size. The colour map turns a 1-channel map into the 3-channel image the
SANA DC-AE was trained on.
"""

import numpy as np
import torch
import torch.nn.functional as F

MIN_VALID_PIXELS = 10  # fewer valid pixels than this: percentile range taken as 0 (all zeros before the flip)
LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0


def normalized_inverse_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres (<= 0 or non-finite = invalid) -> (H, W) float64 in [0, 1], 0 = near, 1 = far."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D (H, W) array, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros_like(depth)
    inv[valid] = 1.0 / depth[valid]
    if valid.sum() < MIN_VALID_PIXELS:
        lo, hi = 0.0, 0.0
    else:
        lo, hi = np.percentile(inv[valid], [LOW_PERCENTILE, HIGH_PERCENTILE])  # linear interpolation
    span = hi - lo
    # A zero range (degenerate or constant map) gives all zeros, not a division by zero.
    x = (inv - lo) / span if span > 0 else np.zeros_like(inv)
    return 1.0 - np.clip(x, 0.0, 1.0)


def colorize(unit: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) float RGB in [0, 1] via matplotlib's "Spectral" (256-entry LUT)."""
    import matplotlib  # imported here: ~0.3 s, only needed when targets are built

    return np.asarray(matplotlib.colormaps["Spectral"](unit)[..., :3], dtype=np.float32)


def round_half_up_multiple(numerator: int, denominator: int, multiple: int) -> int:
    """round(numerator / denominator / multiple) * multiple, halves up, in exact integer arithmetic."""
    return (2 * numerator + denominator * multiple) // (2 * denominator * multiple) * multiple


def depth_target_size(height: int, width: int, long_side: int, multiple_of: int = 32) -> tuple[int, int]:
    """Training size (h, w) for an image of (height, width).

    Rule: the long side becomes `long_side` rounded half-up to a multiple of `multiple_of`; the short side
    keeps the aspect ratio and is rounded half-up to a multiple of `multiple_of`, at least `multiple_of`.
    Example: 480x640 with long side 448 -> short = 480 * 448 / 640 = 336 = 10.5 * 32 -> 11 * 32 -> (352, 448).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    long_target = max(multiple_of, round_half_up_multiple(long_side, 1, multiple_of))
    long_src, short_src = max(height, width), min(height, width)
    short_target = max(multiple_of, round_half_up_multiple(short_src * long_target, long_src, multiple_of))
    return (long_target, short_target) if height >= width else (short_target, long_target)


def encode_depth(depth: np.ndarray, long_side: int, multiple_of: int = 32) -> torch.Tensor:
    """Depth (H, W) in metres -> float32 [3, h, w] in [-1, 1] at the training size (bilinear, antialiased).

    The colour map is applied at the native resolution and the RGB image is resized afterwards, like any
    other target image.
    """
    rgb = colorize(normalized_inverse_depth(depth)) * 2.0 - 1.0
    x = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    h, w = depth_target_size(depth.shape[0], depth.shape[1], long_side, multiple_of)
    if (h, w) != tuple(x.shape[1:]):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp(-1.0, 1.0)
