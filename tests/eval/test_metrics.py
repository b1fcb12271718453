"""Every metric on hand-computed cases."""

import numpy as np
import pytest

from gem_stages.eval.metrics import (
    box_iou,
    exact_match,
    mean_relative_accuracy,
    normalize_answer,
    normalized_exact_match,
    point_in_polygon,
    points_in_mask,
    token_f1,
)


def test_exact_match_ignores_case_and_spaces():
    assert exact_match(" b ", "B") == 1.0
    assert exact_match("C", "B") == 0.0


@pytest.mark.parametrize("pred, gt, expected", [
    (10.0, 10.0, 1.0),      # exact
    (10.4, 10.0, 1.0),      # 4% off: inside every threshold (the tightest is 5%)
    (10.5, 10.0, 0.9),      # 5% off is not < 5%: misses θ = 0.95 only
    (9.5, 10.0, 0.9),       # the same below the answer
    (11.2, 10.0, 0.8),      # 12% off: passes 1-θ in {0.5 .. 0.15}, fails 0.10 and 0.05
    (12.5, 10.0, 0.5),      # 25%: passes 0.50 .. 0.30 (5 of 10)
    (14.9, 10.0, 0.1),      # 49%: passes only 1-θ = 0.50
    (15.0, 10.0, 0.0),      # 50% off: nothing (strict <)
    (0.0, 10.0, 0.0),
    (-10.0, 10.0, 0.0),
    (0.0, 0.0, 1.0),        # no relative error at 0: exact only
    (0.1, 0.0, 0.0),
])
def test_mean_relative_accuracy(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected)


def test_squad_normalisation():
    assert normalize_answer("The  Red, chair!") == "red chair"
    assert normalize_answer("An apple a day") == "apple day"


def test_normalized_exact_match_and_token_f1():
    assert normalized_exact_match("the red chair.", "Red chair") == 1.0
    assert normalized_exact_match("red chair", "blue chair") == 0.0
    # pred {red, chair, left}, gt {red, chair}: precision 2/3, recall 1 -> F1 0.8
    assert token_f1("red chair left", "red chair") == pytest.approx(0.8)
    assert token_f1("the red chair on left", "red chair on") == pytest.approx(6 / 7)  # P 3/4, R 1
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "red") == 0.0  # articles only: empty answer
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # counts, not sets


def test_points_in_mask():
    mask = np.zeros((10, 20), bool)
    mask[:5, :10] = True  # the top-left quarter
    assert points_in_mask([(0.25, 0.25)], mask) == 1.0
    assert points_in_mask([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.49, 0.49)], mask) == 0.5
    assert points_in_mask([(0.5, 0.25)], mask) == 0.0       # x = 0.5 -> column 10, outside
    assert points_in_mask([(1.2, 0.1), (-0.1, 0.1)], mask) == 0.0  # outside the image: misses
    assert points_in_mask([], mask) == 0.0
    soft = np.full((4, 4), 0.5)
    assert points_in_mask([(0.1, 0.1), (0.9, 0.9)], soft) == 0.5  # soft masks average their values


def test_point_in_polygon():
    square = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]
    assert point_in_polygon(0.4, 0.4, square)
    assert not point_in_polygon(0.7, 0.4, square)
    concave = [(0, 0), (1, 0), (1, 1), (0.5, 0.2), (0, 1)]  # a notch from the top down to y = 0.2
    assert point_in_polygon(0.1, 0.5, concave)
    assert not point_in_polygon(0.5, 0.6, concave)


def test_box_iou():
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)  # overlap 2, union 4 + 4 - 2
    assert box_iou((0, 0, 1, 1), (0, 0, 2, 2)) == 0.25
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 1), (0, 0, 0, 1)) == 0.0  # no area
