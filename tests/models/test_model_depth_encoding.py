"""The release's two depth-target encodings, pinned by hand-computed values.

spectral_inverse: GEM-VLM qwenvl/data/utils.py (visualize_depth, load_depth_color_image) and data_processor.py
(AdaptiveResize32 + target_transform). inferno_linear: GEM-VLA train/dataset_joint.py (H5VLADepthDataset).
"""

import numpy as np
import pytest
import torch

from gem_models.depth_encoding import (
    depth_target_size,
    encode_depth,
    encode_inferno_linear,
    encode_spectral_inverse,
    inferno_lut,
    normalized_inverse_depth,
    resize_nearest,
    spectral_colors,
    target_size,
)

# matplotlib "Spectral" LUT entries truncated to bytes: x=0 -> #9e0142, x=1 -> #5e4fa2; x=0.5 is entry 128, floats
# (254.51, 254.80, 190.24), which ROUNDING would make (255, 255, 190).
SPECTRAL_0, SPECTRAL_HALF, SPECTRAL_1 = (158, 1, 66), (254, 254, 190), (94, 79, 162)
# OpenCV COLORMAP_INFERNO (RGB) entries 0, 128, 251, 254, 255 and 127.
INFERNO = {0: (0, 0, 4), 127: (186, 54, 85), 128: (188, 55, 84), 251: (246, 250, 150), 254: (250, 253, 161),
           255: (252, 255, 164)}


def unit(rgb) -> torch.Tensor:
    """uint8 colour -> the target's [-1, 1] value: u/255 then (x - 0.5) / 0.5."""
    return torch.tensor(rgb, dtype=torch.float32) / 255 * 2 - 1


def test_normalized_inverse_depth_hand_values():
    # depths 1..16 -> inverse depths 1/16 .. 1/1 (n = 16); numpy linear percentile at position p/100 * (n - 1).
    d = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    lo = 1 / 16 + 0.3 * (1 / 15 - 1 / 16)  # p2 at position 0.3: 0.06375
    hi = 1 / 2 + 0.7 * (1 - 1 / 2)  # p98 at position 14.7: 0.85
    out = normalized_inverse_depth(d)
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0  # d=1: inverse 1 > hi -> 1 -> flipped to 0 (nearest)
    assert out[0, 1] == pytest.approx(1 - (0.5 - lo) / (hi - lo), abs=1e-6)  # 0.445151
    assert out[0, 3] == pytest.approx(0.763116, abs=1e-6)
    assert out[3, 3] == 1.0  # d=16: below lo -> 0 -> flipped to 1 (farthest)


def test_invalid_pixels_are_far_and_excluded_from_percentiles():
    d = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    d[3, 3] = 0.0
    out = normalized_inverse_depth(d)
    assert out[3, 3] == 1.0
    lo = 1 / 15 + 0.28 * (1 / 14 - 1 / 15)  # 15 valid values: p2 at position 0.28
    hi = 1 / 2 + 0.72 * (1 - 1 / 2)
    assert out[0, 1] == pytest.approx(1 - (0.5 - lo) / (hi - lo), abs=1e-6)


@pytest.mark.parametrize("n_valid", [9, 10])
def test_ten_or_fewer_valid_pixels_split_valid_and_invalid(n_valid):
    """<= 10 valid: range [0, 0] widened to [-1e-6, 1e-6]. A valid 1/2000 >> 1e-6 clips to 1 -> flipped 0; an
    invalid 0 sits at (0 + 1e-6) / 2e-6 = 0.5 -> 0.5."""
    d = np.zeros((4, 4))
    d.flat[:n_valid] = 2000.0
    out = normalized_inverse_depth(d)
    assert np.all(out.flat[:n_valid] == 0.0) and np.all(out.flat[n_valid:] == 0.5)
    colors = spectral_colors(out)
    assert tuple(colors[0, 0]) == SPECTRAL_0 and tuple(colors[3, 3]) == SPECTRAL_HALF


@pytest.mark.parametrize("value", [1000.0, 2000.0, 1234.0, 3.0, 0.5])
def test_constant_map_lands_in_the_middle(value):
    """All valid pixels equal: p2 == p98 -> widened by 1e-6 -> every valid pixel exactly 0.5; an invalid pixel (0) is
    far below -> clipped 0 -> flipped 1."""
    d = np.full((4, 4), value)
    d[0, 0] = 0.0
    out = normalized_inverse_depth(d)
    assert out[0, 0] == 1.0 and np.all(out.flat[1:] == 0.5)
    colors = spectral_colors(out)
    assert tuple(colors[0, 0]) == SPECTRAL_1 and tuple(colors[1, 1]) == SPECTRAL_HALF


def test_spectral_colours_are_truncated_to_bytes():
    colors = spectral_colors(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert colors.dtype == np.uint8
    assert [tuple(c) for c in colors[0]] == [SPECTRAL_0, SPECTRAL_HALF, SPECTRAL_1]


@pytest.mark.parametrize(
    "hw, long_side, expected",
    [
        ((480, 640), 448, (320, 448)),  # 480 * 0.7 = 336 -> floor to 32: 320 (half-up would give 352)
        ((640, 480), 448, (448, 320)),
        ((720, 1280), 448, (224, 448)),  # 252 -> 224
        ((500, 375), 448, (448, 320)),  # 336 -> 320
        ((224, 224), 448, (448, 448)),  # upscales
        ((32, 1000), 448, (32, 448)),  # int(14.3) // 32 = 0 -> at least one multiple
        ((300, 200), 448, (448, 288)),  # 298.67 -> 298 -> 288
        ((448, 640), 448, (288, 448)),  # 313.6 -> 313 -> 288
        ((64, 64), 64, (64, 64)),
    ],
)
def test_target_size_rounds_down_to_multiples_of_32(hw, long_side, expected):
    assert depth_target_size(*hw, long_side=long_side, multiple_of=32) == expected
    assert target_size("spectral_inverse", *hw, long_side, 32) == expected


def test_nearest_resize_is_pils():
    """PIL NEAREST samples the source at floor((i + 0.5) * scale): 7x9 -> 4x3 takes rows 0, 2, 4, 6 (scale 1.75:
    0.875, 2.625, 4.375, 6.125) and columns 1, 4, 7 (scale 3: 1.5, 4.5, 7.5). (floor(i * scale) would take rows
    0, 1, 3, 5 and columns 0, 3, 6.)"""
    d = np.arange(63, dtype=np.float32).reshape(7, 9) + 1
    out = resize_nearest(d, (4, 3))
    assert out.tolist() == d[[0, 2, 4, 6]][:, [1, 4, 7]].tolist()
    up = resize_nearest(np.array([[1.0, 2.0], [3.0, 4.0]]), (4, 4))  # each pixel becomes a 2x2 block
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_spectral_target_of_a_constant_map():
    """A constant 480x640 map (all valid) is Spectral(0.5) = (254, 254, 190) everywhere, and a constant colour survives
    the bilinear resize: a 3x320x448 target of (0.99216, 0.99216, 0.49020)."""
    x = encode_spectral_inverse(np.full((480, 640), 1500.0), (480, 640), long_side=448)
    assert x.shape == (3, 320, 448) and x.dtype == torch.float32
    assert torch.allclose(x, unit(SPECTRAL_HALF)[:, None, None].expand_as(x), atol=1e-6)
    assert unit(SPECTRAL_HALF).tolist() == pytest.approx([0.99216, 0.99216, 0.49020], abs=1e-5)


def test_spectral_depth_is_resized_to_the_processed_image_first():
    """Depth at another size than the processed image is nearest-resized to it BEFORE colouring: a 2x2 map of
    near (1 m) / far (16 m) quadrants for a 64x64 image becomes 4096 valid pixels (coloured at 2x2 it would have 4
    valid pixels, a degenerate map, Spectral(0) everywhere). p2 = 1/16 and p98 = 1 exactly, so the near quadrants
    are Spectral(0) and the far ones Spectral(1), as 32x32 blocks."""
    d = np.array([[1.0, 16.0], [16.0, 1.0]])
    x = encode_spectral_inverse(d, (64, 64), long_side=64)
    assert x.shape == (3, 64, 64)
    near, far = unit(SPECTRAL_0)[:, None, None], unit(SPECTRAL_1)[:, None, None]
    for rows, cols, colour in ((slice(0, 32), slice(0, 32), near), (slice(0, 32), slice(32, 64), far),
                               (slice(32, 64), slice(0, 32), far), (slice(32, 64), slice(32, 64), near)):
        assert torch.allclose(x[:, rows, cols], colour.expand(3, 32, 32), atol=1e-6)


def test_spectral_resize_is_antialiased_bilinear_rounded_to_bytes():
    """Left half 1 m (Spectral(0) = (158, 1, 66)), right half 16 m (Spectral(1) = (94, 79, 162)), 64x64 -> 32x32.
    Antialiased bilinear at scale 2 weighs 4 source columns by (0.25, 0.75, 0.75, 0.25) / 2; output column 15 takes
    source columns 29-32 (three left, one right): R (1.75 * 158 + 0.25 * 94) / 2 = 150, G (1.75 + 19.75) / 2 =
    10.75 -> 11 (rounded, as torchvision casts back to uint8), B (115.5 + 40.5) / 2 = 78; column 16 mirrors it:
    (102, 69.25 -> 69, 150). Away from the edge the colours stay pure."""
    d = np.ones((64, 64))
    d[:, 32:] = 16.0
    x = encode_spectral_inverse(d, (64, 64), long_side=32)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, :, 15], unit((150, 11, 78))[:, None].expand(3, 32), atol=1e-6)
    assert torch.allclose(x[:, :, 16], unit((102, 69, 150))[:, None].expand(3, 32), atol=1e-6)
    assert torch.allclose(x[:, :, 0], unit(SPECTRAL_0)[:, None].expand(3, 32), atol=1e-6)
    assert torch.allclose(x[:, :, 31], unit(SPECTRAL_1)[:, None].expand(3, 32), atol=1e-6)


def test_inferno_lut_is_opencvs():
    lut = inferno_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    for index in (0, 128, 255):
        assert tuple(lut[index]) == INFERNO[index]


@pytest.mark.parametrize(
    "mm, index",
    [
        (0, 255),  # invalid 0 -> x = 0 -> flipped 1 -> 255: the brightest
        (65535, 0),  # the far end of uint16
        (1000, 251),  # 1 - 1000/65535 = 0.984741 -> 251.11 -> 251
        (874, 251),  # 255 - 874/257 = 251.599: truncated to 251 (rounding would give 252)
        (32768, 127),  # 1 - 0.5000076 -> 127.498 -> 127
        (257, 254),  # 1 - 1/255 -> 254
    ],
)
def test_inferno_linear_colour_of_a_constant_map(mm, index):
    """uint16 millimetres / 65535, flipped, truncated to a byte, INFERNO; the 256x256 square target of a constant
    map is that colour everywhere, whatever the map's shape."""
    depth_m = np.full((48, 64), mm / 1000.0, dtype=np.float32)  # as the episode reader hands it over (metres)
    x = encode_inferno_linear(depth_m, 256)
    assert x.shape == (3, 256, 256)
    assert torch.allclose(x, unit(INFERNO[index])[:, None, None].expand_as(x), atol=1e-6)


def test_inferno_linear_is_square_at_any_aspect():
    assert encode_inferno_linear(np.full((100, 300), 1.0), 256).shape == (3, 256, 256)
    assert target_size("inferno_linear", 480, 640, 256, 32) == (256, 256)
    x = encode_depth("inferno_linear", np.full((480, 640), 1.0), (480, 640), 256)
    assert x.shape == (3, 256, 256)
    assert unit(INFERNO[251]).tolist() == pytest.approx([0.929412, 0.960784, 0.176471], abs=1e-6)
    assert torch.allclose(x[:, 0, 0], unit(INFERNO[251]), atol=1e-6)


def test_inferno_linear_resize_is_pil_bilinear():
    """Left half 0 mm (entry 255: (252, 255, 164)), right half 65535 mm (entry 0: (0, 0, 4)), 4x4 -> 2x2. PIL's
    bilinear downscale by 2 is a triangle of support 2 source pixels: output column 0 (centre 1.0) weighs source
    columns 0, 1, 2 by 0.75, 0.75, 0.25 (normalised by 1.75). Column 0: R 1.5 * 252 / 1.75 = 216, G 218.57 -> 219,
    B (1.5 * 164 + 0.25 * 4) / 1.75 = 141.14 -> 141; column 1: R 36, G 36.43 -> 36, B (41 + 6) / 1.75 = 26.86 ->
    27. (An area average would keep the halves pure.)"""
    d = np.zeros((4, 4), dtype=np.float32)
    d[:, 2:] = 65.535
    x = encode_inferno_linear(d, 2)
    assert torch.allclose(x[:, :, 0], unit((216, 219, 141))[:, None].expand(3, 2), atol=1e-6)
    assert torch.allclose(x[:, :, 1], unit((36, 36, 27))[:, None].expand(3, 2), atol=1e-6)


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="unknown depth encoding 'jet'"):
        encode_depth("jet", np.ones((4, 4)), (4, 4), 32)
