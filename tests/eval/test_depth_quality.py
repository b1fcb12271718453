"""Depth-generation quality: colour-map decoding, affine alignment, AbsRel / delta1 / RMSE on hand-computed cases,
and a tiny model's generated depth scored end to end (with the PNG sheet)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from gem_models.config import tiny_config
from gem_models.depth_encoding import (
    colour_table,
    decode_colours,
    decoded_inverse_depth,
    encode_inferno_linear,
    encode_spectral_inverse,
    normalized_inverse_depth,
)
from gem_models.gem import GemModel
from gem_stages.data.depth_png import save_depth_mm
from gem_stages.errors import InputError
from gem_stages.eval.benchmark import aggregate
from gem_stages.eval.depth_quality import (
    DepthBenchmark,
    align_affine,
    depth_metrics,
    depth_summary,
    grade_depth_batch,
    score_depth,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _scene_depth(h=64, w=64, seed=0) -> np.ndarray:
    """A smooth slanted plane with a box in front: metres, all valid."""
    rows = np.linspace(0.8, 2.5, h)[:, None].repeat(w, axis=1)
    depth = rows + np.random.default_rng(seed).uniform(0, 0.05, (h, w))
    depth[20:40, 24:44] = 0.6
    return depth


def _as_generated(target: torch.Tensor) -> torch.Tensor:
    return (target + 1.0) / 2.0  # a target in [-1, 1] as sample_depth returns images: [0, 1]


@pytest.mark.parametrize("encoding", ["spectral_inverse", "inferno_linear"])
def test_colour_table_entries_decode_to_their_own_bin(encoding):
    table = colour_table(encoding)
    rgb = torch.from_numpy(table.astype(np.float32) / 255.0).T.reshape(3, 16, 16)
    unit = decode_colours(encoding, rgb).reshape(-1).numpy()
    bins = 256.0 if encoding == "spectral_inverse" else 255.0
    first = {tuple(c): k for k, c in reversed(list(enumerate(table)))}  # a repeated colour: its first bin
    expected = np.array([(first[tuple(c)] + 0.5) / bins for c in table]).clip(0, 1)
    np.testing.assert_allclose(unit, expected, atol=1e-6)


def test_spectral_round_trip_recovers_the_normalised_inverse_depth():
    depth = _scene_depth()
    target = encode_spectral_inverse(depth, (64, 64), long_side=64)  # no resize: colours are the table's own
    inverse, valid = decoded_inverse_depth("spectral_inverse", _as_generated(target))
    expected = 1.0 - normalized_inverse_depth(depth)  # the encoding's input before the flip: near = 1
    assert valid.all()
    # the table's own colours decode to their bin's centre: off by at most half a bin (1/512)
    assert np.abs(inverse - expected).max() <= 0.5 / 256 + 1e-9


def test_inferno_round_trip_recovers_metres_within_one_level():
    depth = np.full((64, 64), 3.0)
    depth[:, 32:] = 10.0
    depth[0, 0] = 0.0  # invalid: the brightest colour
    target = encode_inferno_linear(depth, side=64)
    inverse, valid = decoded_inverse_depth("inferno_linear", _as_generated(target))
    level = 65.535 / 255  # one uint8 level of the linear map, in metres
    assert not valid[0, 0]
    assert abs(1.0 / inverse[10, 5] - 3.0) <= level and abs(1.0 / inverse[10, 60] - 10.0) <= level


def test_inferno_round_trip_scores_near_perfect_where_levels_resolve_depth():
    # one inferno level is 0.257 m: a 3-30 m scene spans ~100 levels, so the decoded depth is within a level
    depth = np.linspace(3.0, 30.0, 64)[:, None].repeat(64, axis=1)
    s = score_depth("inferno_linear", _as_generated(encode_inferno_linear(depth, side=64)), depth)
    assert s["delta1"] == 1.0 and s["absrel"] < 0.03 and s["scale"] == pytest.approx(1.0, abs=0.05)


def test_align_affine_hand_computed():
    # mean p = 1.5, mean g = 2.5, cov = 6, var = 5 -> s = 1.2, t = 2.5 - 1.2 * 1.5 = 0.7
    scale, shift = align_affine(np.array([0.0, 1, 2, 3]), np.array([1.0, 2, 2, 5]))
    assert scale == pytest.approx(1.2) and shift == pytest.approx(0.7)
    assert align_affine(np.array([2.0, 2, 2]), np.array([1.0, 2, 6])) == (0.0, pytest.approx(3.0))


def test_depth_metrics_hand_computed():
    m = depth_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0]))
    assert m["absrel"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert m["delta1"] == pytest.approx(1 / 3)  # ratios 1, 2, 4/3: only the first is under 1.25
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_score_is_affine_invariant_and_ignores_invalid_pixels():
    depth = _scene_depth()
    gt = depth.copy()
    gt[:5] = 0.0  # no measurement there
    target = encode_spectral_inverse(depth, (64, 64), long_side=64)
    s = score_depth("spectral_inverse", _as_generated(target), gt)
    assert s["valid_pixels"] == 64 * 59
    assert s["delta1"] == 1.0 and s["absrel"] < 0.005 and s["rmse"] < 0.01  # metres
    flat = score_depth("spectral_inverse", torch.full((3, 64, 64), 0.5), gt)  # one colour: no shape at all
    assert flat["scale"] == 0.0 and flat["delta1"] < 0.6
    with pytest.raises(ValueError, match="fewer than 2 valid pixels"):
        score_depth("spectral_inverse", _as_generated(target), np.zeros((64, 64)))


def _depth_folder(root, n):
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        rgb = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i:03d}.png")
        save_depth_mm(root / "depth" / f"{i:03d}.png", _scene_depth(seed=i))


def test_tiny_model_scored_end_to_end(tmp_path):
    _depth_folder(tmp_path / "bench", 5)
    (tmp_path / "bench" / "images" / "broken.png").write_bytes(b"not a png")
    save_depth_mm(tmp_path / "bench" / "depth" / "broken.png", _scene_depth())
    bench = DepthBenchmark(tmp_path / "bench")
    items = bench.items()
    assert [i.id for i in items] == ["000", "001", "002", "003", "004", "broken"]
    model = GemModel.build(tiny_config(), corpus=["depth of the scene"], seed=0)
    sheet = tmp_path / "sheet.png"
    graded = bench.grade_batch(model, items, batch_size=4, steps=2, sheet_path=sheet, sheet_rows=3)
    assert [g.id for g in graded] == [i.id for i in items]
    assert graded[-1].score == 0.0 and graded[-1].note.startswith("undecodable")
    for g in graded[:-1]:
        assert 0.0 <= g.score <= 1.0 and g.score == g.parsed["delta1"]
        assert all(math.isfinite(g.parsed[k]) for k in ("absrel", "rmse", "scale", "shift"))
        assert g.parsed["valid_pixels"] == 64 * 64
    results = aggregate(bench, items, graded)
    assert results["counts"] == {"items": 6, "per_category": {"all": 6}, "unparsable": 0, "undecodable": 1}
    summary = depth_summary(graded)
    assert summary["scored"] == 5
    assert summary["delta1"] == pytest.approx(sum(g.score for g in graded) / 5)
    with Image.open(sheet) as im:
        assert im.size == (3 * 128, 3 * 128)
    # one seeded generator draws all noise: the same call gives the same numbers
    again = grade_depth_batch(model, items, batch_size=4, steps=2)
    assert [g.score for g in again] == [g.score for g in graded]


def test_missing_folder_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="images/ and depth/"):
        DepthBenchmark(tmp_path / "nowhere").items()
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(InputError, match="no image with a depth map"):
        DepthBenchmark(tmp_path).items()
