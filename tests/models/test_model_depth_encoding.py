import numpy as np
import pytest
import torch

from gem_models.depth_encoding import depth_target_size, encode_depth, normalized_inverse_depth

# ColorBrewer "Spectral" end points, as matplotlib's LUT stores them: #9e0142 (x=0) and #5e4fa2 (x=1).
SPECTRAL_0 = np.array([158, 1, 66]) / 255
SPECTRAL_1 = np.array([94, 79, 162]) / 255


def test_normalized_inverse_depth_hand_values():
    # depths 1..16 m -> inverse depths 1/16 .. 1/1 (sorted ascending, n = 16).
    d = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    # numpy linear percentile: position p/100 * (n - 1).
    # p2: pos 0.3 between 1/16 and 1/15; p98: pos 14.7 between 1/2 and 1/1.
    lo = 1 / 16 + 0.3 * (1 / 15 - 1 / 16)  # 0.06375
    hi = 1 / 2 + 0.7 * (1 - 1 / 2)  # 0.85
    assert lo == pytest.approx(0.06375) and hi == pytest.approx(0.85)
    out = normalized_inverse_depth(d)
    # d=1: inv 1 > hi -> clipped to 1 -> flipped to 0 (nearest = 0).
    assert out[0, 0] == pytest.approx(0.0)
    # d=2: (0.5 - 0.06375) / 0.78625 = 0.554849 -> 0.445151.
    assert out[0, 1] == pytest.approx(1 - (0.5 - lo) / (hi - lo)) and out[0, 1] == pytest.approx(
        0.445151, abs=1e-6
    )
    # d=4: (0.25 - 0.06375) / 0.78625 = 0.236884 -> 0.763116.
    assert out[0, 3] == pytest.approx(0.763116, abs=1e-6)
    # d=16: inv 0.0625 < lo -> clipped to 0 -> flipped to 1 (farthest).
    assert out[3, 3] == pytest.approx(1.0)
    assert out.min() >= 0 and out.max() <= 1


def test_invalid_pixels_are_far_and_excluded_from_percentiles():
    d = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    d_bad = d.copy()
    d_bad[3, 3] = 0.0  # invalid
    out = normalized_inverse_depth(d_bad)
    assert out[3, 3] == 1.0
    # 15 valid inverse depths 1/15..1: p2 at pos 0.28 between 1/15 and 1/14.
    lo = 1 / 15 + 0.28 * (1 / 14 - 1 / 15)
    hi = 1 / 2 + 0.72 * (1 - 1 / 2)
    assert out[0, 1] == pytest.approx(1 - (0.5 - lo) / (hi - lo))


def test_degenerate_maps_give_all_far():
    few = np.zeros((4, 4))
    few.flat[:9] = 2.0  # 9 valid pixels < 10 -> range 0 -> zeros -> flipped to ones
    assert np.all(normalized_inverse_depth(few) == 1.0)
    constant = np.full((4, 4), 3.0)  # 16 valid, zero spread
    assert np.all(normalized_inverse_depth(constant) == 1.0)
    x = encode_depth(few, long_side=32)
    assert x.shape == (3, 32, 32)
    expected = torch.tensor(SPECTRAL_1 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(x[:, 5, 5], expected, atol=1e-6)


def test_colour_and_range():
    # 32x32 blocks of 1..16 m: p2 = 1/16 and p98 = 1 exactly (64 copies of each value).
    d = np.arange(1, 17, dtype=np.float64).reshape(4, 4).repeat(8, 0).repeat(8, 1)
    x = encode_depth(d, long_side=32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    # The nearest block (d=1 -> 0) is Spectral(0); the farthest (d=16 -> 1) is Spectral(1).
    assert torch.allclose(x[:, 0, 0], torch.tensor(SPECTRAL_0 * 2 - 1, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(x[:, 31, 31], torch.tensor(SPECTRAL_1 * 2 - 1, dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize(
    "hw, long_side, expected",
    [
        ((480, 640), 448, (352, 448)),  # 336 = 10.5 * 32 rounds half up to 352
        ((640, 480), 448, (448, 352)),
        ((64, 64), 64, (64, 64)),
        ((100, 1000), 448, (32, 448)),  # 44.8 -> 32
        ((1, 1000), 448, (32, 448)),  # never below one multiple
        ((480, 640), 256, (192, 256)),  # VLA depth size: exact 192
        ((480, 640), 450, (352, 448)),  # long side itself rounded to a multiple
        ((300, 200), 448, (448, 288)),  # 298.67 -> 9.33 * 32 -> 288
    ],
)
def test_target_size_rule(hw, long_side, expected):
    assert depth_target_size(*hw, long_side=long_side, multiple_of=32) == expected


def test_encode_resizes_to_target():
    x = encode_depth(np.random.default_rng(0).uniform(1, 3, (48, 64)), long_side=64)
    assert x.shape == (3, 64, 64)  # 48 * 64 / 64 = 48 = 1.5 * 32 -> 64
    x = encode_depth(np.random.default_rng(0).uniform(1, 3, (40, 64)), long_side=64)
    assert x.shape == (3, 32, 64)  # 40 / 32 = 1.25 -> 32
