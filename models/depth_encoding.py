"""Depth map -> RGB target image for the depth generator, in the two encodings of the release.

spectral_inverse (GEM-VLM, stages 1-3; qwenvl/data/utils.py and data_processor.py):
    depth (H, W) -> nearest resize to the processed RGB size (the backbone's smart-resized image) -> inverse depth
    on valid pixels -> normalise between the 2nd/98th percentiles of the valid values -> clip [0, 1] -> flip
    (1 - x: near = 0) -> matplotlib "Spectral" -> uint8 (truncated) -> bilinear resize so the long side is
    `long_side` with both sides rounded DOWN to multiples of 32 -> [-1, 1].
inferno_linear (GEM-VLA, stage 4; train/dataset_joint.py):
    depth as its uint16 value (millimetres here) / 65535 -> flip (invalid 0 becomes 1, the brightest) -> uint8
    (truncated) -> OpenCV's INFERNO colour map -> bilinear resize to a `long_side` x `long_side` square -> [-1, 1].

The colour map turns a 1-channel map into the 3-channel image the SANA DC-AE was trained on. Arithmetic is float32
as in the release, so the uint8 colours (and the targets) are the release's to the bit.
"""

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DepthEncoding = Literal["spectral_inverse", "inferno_linear"]
DEPTH_ENCODINGS: tuple[str, ...] = ("spectral_inverse", "inferno_linear")
MAX_DEGENERATE_VALID = 10  # this many valid pixels or fewer: the percentile range is taken as [0, 0]
LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0
EQUAL_RANGE_WIDENING = 1e-6  # a zero range (degenerate or constant map) is widened by this on each side
UINT16_MAX = 65535.0


def _as_2d(depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D (H, W) array, got shape {depth.shape}")
    depth = depth.astype(np.float32)  # a copy: callers' arrays are never modified
    depth[~np.isfinite(depth)] = 0.0  # the release's maps have no NaN/inf; here they count as invalid
    return depth


def normalized_inverse_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth (<= 0 or non-finite = invalid) -> (H, W) float32 in [0, 1], 0 = near, 1 = far.

    The units do not matter (the range comes from the map itself). Invalid pixels keep 0 through the inversion and
    are then normalised like any value: far (1) for a normal map, 0.5 for a degenerate one.
    """
    depth = _as_2d(depth)
    valid = depth > 0
    depth[valid] = 1.0 / depth[valid]
    if valid.sum() <= MAX_DEGENERATE_VALID:
        lo = hi = np.float32(0.0)
    else:
        lo = np.percentile(depth[valid], LOW_PERCENTILE)  # linear interpolation, float32 as the map
        hi = np.percentile(depth[valid], HIGH_PERCENTILE)
    if lo == hi:  # constant or degenerate map: every valid pixel lands exactly in the middle (0.5)
        lo, hi = lo - EQUAL_RANGE_WIDENING, hi + EQUAL_RANGE_WIDENING
    return 1.0 - ((depth - lo) / (hi - lo)).clip(0, 1)


def spectral_colors(unit: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 via matplotlib's "Spectral" LUT, truncated (not rounded) to bytes."""
    import matplotlib  # imported here: ~0.3 s, only needed when targets are built

    return (matplotlib.colormaps["Spectral"](unit)[..., :3] * 255.0).astype(np.uint8)


def inferno_lut() -> np.ndarray:
    """(256, 3) uint8: OpenCV's COLORMAP_INFERNO in RGB order, which is matplotlib's "inferno" list ROUNDED to bytes."""
    import matplotlib

    return np.round(np.asarray(matplotlib.colormaps["inferno"].colors) * 255.0).astype(np.uint8)


def depth_target_size(height: int, width: int, long_side: int, multiple_of: int = 32) -> tuple[int, int]:
    """spectral_inverse training size (h, w) for a processed image of (height, width): the release's
    AdaptiveResize32. Both sides scale by long_side / max(height, width), truncate, then round DOWN to a multiple of
    `multiple_of`, at least one multiple. 480x640 with long side 448 -> 336 -> 320: (320, 448). Upscales too.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = long_side / max(height, width)  # the release's float expression, for identical truncation
    new_h = int(height * scale) // multiple_of * multiple_of
    new_w = int(width * scale) // multiple_of * multiple_of
    return max(new_h, multiple_of), max(new_w, multiple_of)


def target_size(
    encoding: str, height: int, width: int, long_side: int, multiple_of: int = 32
) -> tuple[int, int]:
    """The target (h, w) of an encoding for a processed image of (height, width)."""
    if encoding == "inferno_linear":
        return long_side, long_side
    if encoding == "spectral_inverse":
        return depth_target_size(height, width, long_side, multiple_of)
    raise ValueError(f"unknown depth encoding {encoding!r}; expected one of {DEPTH_ENCODINGS}")


def resize_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> float32 (h, w) with PIL's NEAREST, the release's resize of the raw depth PNG."""
    depth = _as_2d(depth)
    if depth.shape == tuple(size):
        return depth
    return np.asarray(Image.fromarray(depth, mode="F").resize((size[1], size[0]), Image.NEAREST))


def _to_unit_range(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 values CHW -> float32 in [-1, 1] as ToDtype(scale=True) then Normalize(0.5, 0.5)."""
    return (rgb.float() / 255.0 - 0.5) / 0.5


def encode_spectral_inverse(
    depth: np.ndarray, image_size: tuple[int, int], long_side: int, multiple_of: int = 32
) -> torch.Tensor:
    """Depth (H, W), any positive units -> float32 [3, h, w] in [-1, 1]; image_size = the processed RGB (h, w)."""
    colors = spectral_colors(normalized_inverse_depth(resize_nearest(depth, image_size)))
    x = torch.from_numpy(colors).permute(2, 0, 1).float()
    h, w = depth_target_size(image_size[0], image_size[1], long_side, multiple_of)
    if (h, w) != tuple(x.shape[1:]):
        # torchvision's tensor resize of a uint8 image: float bilinear with antialias, rounded back to uint8
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        x = x.round().clamp(0, 255)
    return _to_unit_range(x)


def encode_image(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """The RGB image itself as a generator target (the RGB-supervision ablation): bilinear resize to (h, w) =
    `size`, float32 [3, h, w] in [-1, 1], like the depth targets."""
    rgb = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
    return _to_unit_range(torch.from_numpy(rgb.copy()).permute(2, 0, 1))


def encode_inferno_linear(depth_m: np.ndarray, side: int) -> torch.Tensor:
    """Depth (H, W) in metres -> float32 [3, side, side] in [-1, 1], the release's VLA depth target.

    The release divides the stored uint16 by 65535; gemctl stores millimetres, so that value is metres x 1000 (exact
    for depths that came from uint16 millimetres). Beyond 65.535 m the map saturates to the darkest colour.
    """
    raw = np.rint(_as_2d(depth_m).astype(np.float64) * 1000.0).astype(np.float32)
    flipped = 1.0 - raw / np.float32(UINT16_MAX)
    colors = inferno_lut()[(flipped * 255).clip(0, 255).astype(np.uint8)]
    # torchvision's Resize on a PIL image is PIL's own bilinear resize
    image = Image.fromarray(colors).resize((side, side), Image.BILINEAR)
    return _to_unit_range(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))


def encode_depth(
    encoding: str, depth: np.ndarray, image_size: tuple[int, int], long_side: int, multiple_of: int = 32
) -> torch.Tensor:
    """Depth (H, W) metres -> its target [3, h, w] in [-1, 1] of size target_size(encoding, *image_size, ...)."""
    if encoding == "inferno_linear":
        return encode_inferno_linear(depth, long_side)
    if encoding == "spectral_inverse":
        return encode_spectral_inverse(depth, image_size, long_side, multiple_of)
    raise ValueError(f"unknown depth encoding {encoding!r}; expected one of {DEPTH_ENCODINGS}")


# ----- decoding: generated colours -> scalar (the inverse of the colour maps above) -----
DECODE_CHUNK = 1 << 16  # pixels per distance matrix: 65536 x 256 floats = 64 MiB


def colour_table(encoding: str) -> np.ndarray:
    """(256, 3) uint8: the colours an encoding can emit, entry k for colour-map input bin k (the uint8 bytes that
    `spectral_colors` / `inferno_lut` produce, so a target's unresized pixels are found exactly)."""
    if encoding == "inferno_linear":
        return inferno_lut()
    if encoding == "spectral_inverse":
        import matplotlib

        # an integer index reads the 256-entry LUT directly: bin k is what spectral_colors gives [k/256, (k+1)/256)
        return (matplotlib.colormaps["Spectral"](np.arange(256))[..., :3] * 255.0).astype(np.uint8)
    raise ValueError(f"unknown depth encoding {encoding!r}; expected one of {DEPTH_ENCODINGS}")


def decode_colours(encoding: str, rgb: torch.Tensor) -> torch.Tensor:
    """A generated depth image [3, h, w] in [0, 1] -> the colour-map input (h, w) float32 in [0, 1]: each pixel's
    nearest colour-table entry k (Euclidean in RGB bytes), read as the centre of its bin. Generated and resized
    colours fall between entries; the nearest one is the best single guess of the value that produced them."""
    table = torch.from_numpy(colour_table(encoding)).to(rgb.device, torch.float32)
    pixels = (rgb.detach().float().clamp(0, 1) * 255.0).permute(1, 2, 0).reshape(-1, 3)
    index = torch.cat([torch.cdist(chunk, table).argmin(dim=1) for chunk in pixels.split(DECODE_CHUNK)])
    bins = 256.0 if encoding == "spectral_inverse" else 255.0  # Spectral LUT bins vs uint8 truncation of x * 255
    return ((index.float() + 0.5) / bins).clamp(0, 1).reshape(rgb.shape[1:])


def decoded_inverse_depth(encoding: str, rgb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A generated depth image [3, h, w] in [0, 1] -> (inverse depth (h, w) float64, valid mask (h, w) bool).

    spectral_inverse: 1 - colour-map input, which is inverse depth up to an unknown scale and shift (the encoding
    normalised each map by its own percentiles); valid everywhere.
    inferno_linear: 1 / metres, metres = (1 - input) x 65.535 (the encoding's linear map); pixels decoding to
    depth <= 0 (the colour of invalid depth) are invalid.
    """
    unit = decode_colours(encoding, rgb).cpu().double().numpy()
    if encoding == "spectral_inverse":
        return 1.0 - unit, np.ones(unit.shape, dtype=bool)
    metres = (1.0 - unit) * UINT16_MAX / 1000.0
    valid = metres > 0
    return np.where(valid, 1.0 / np.where(valid, metres, 1.0), 0.0), valid
