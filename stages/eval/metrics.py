"""Per-item metrics of the benchmarks, as their papers and reference scorers define them.

Every function returns a score in [0, 1] for one item; the benchmark's overall score is a mean of these
(stages/eval/benchmark.py: aggregate).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

# VSI-Bench's confidence thresholds θ ∈ {0.50, 0.55, ..., 0.95}, kept in hundredths so that 1 - θ is exact.
MRA_THRESHOLDS = tuple(range(50, 100, 5))


def exact_match(pred: str, gt: str) -> float:
    """1 when the two strings agree ignoring case and surrounding whitespace (letters, yes/no)."""
    return float(pred.strip().lower() == gt.strip().lower())


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """VSI-Bench's MRA: the mean over θ of 1[|pred - gt| / gt < 1 - θ]. A prediction within 5% of the answer scores
    1, one off by 50% or more scores 0. A ground truth of 0 (no relative error defined) needs an exact 0."""
    if gt == 0:
        return float(pred == 0)
    relative_error = abs(pred - gt) / abs(gt)
    return sum(relative_error < (100 - t) / 100 for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalized_exact_match(pred: str, gt: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gt))


def token_f1(pred: str, gt: str) -> float:
    """SQuAD's token F1 between the normalised answers (two empty answers agree; one empty one scores 0)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gt).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def points_in_mask(points: Sequence[tuple[float, float]], mask: np.ndarray) -> float:
    """Where2Place's accuracy for one item: the mean of the H×W mask's values (bool, or in [0, 1] for a soft mask,
    as the reference scorer reads its JPEG masks / 255) at the predicted points (normalised x, y). A point outside
    the image is a miss; no points score 0."""
    if not points:
        return 0.0
    h, w = mask.shape[:2]
    hits = 0.0
    for x, y in points:
        col, row = int(np.floor(x * w)), int(np.floor(y * h))
        if 0 <= col < w and 0 <= row < h:
            hits += float(mask[row, col])
    return hits / len(points)


def point_in_polygon(x: float, y: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray casting: is (x, y) inside the polygon (vertices in order)? RoboSpatial-Home's region test."""
    inside = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        (xi, yi), (xj, yj) = polygon[i], polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either has no area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
