"""The contract between a benchmark and the evaluation runner.

A benchmark turns its files into `EvalItem`s, says how to prompt the model for one, and scores the model's raw
text for it. The runner (batched generation, predictions.jsonl, results.json) knows nothing else about it.

    bench = BENCHMARKS["cv-bench"](root)          # or mapping.MappingBenchmark.from_file("benchmarks/x.yaml")
    items = bench.items()                          # InputError (one line, file and record) for a malformed file
    text  = model answers bench.prompt(item) with item.images / item.video
    graded = bench.grade(item, text)               # never raises: unparsable text is wrong, and counted
    results = aggregate(bench.name, items, graded)

Scores are in [0, 1] per item (1 = correct); numeric items may score in between (Mean Relative Accuracy).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

# What an item asks for, which decides its parser and metric:
#   choice  - one of item.choices, answered by letter (A, B, ...); exact match
#   numeric - a number (distances, counts, sizes); Mean Relative Accuracy unless the benchmark says otherwise
#   yesno   - yes or no; exact match
#   open    - free text; normalised exact match and token F1 (never called a benchmark's official score)
#   point   - one or more (x, y) points, normalised to [0, 1]; scored inside the target region/mask
#   box     - a box (x0, y0, x1, y1), normalised to [0, 1]; IoU >= 0.5
#   depth   - a depth map generated for item.images[0]; scored against item.answer (a depth map path or array)
#   episode - a closed-loop episode: the policy acts in a simulated task; scored 1 when the task's goal test passes
ItemKind = Literal["choice", "numeric", "yesno", "open", "point", "box", "depth", "episode"]


@dataclass
class EvalItem:
    id: str  # unique within the benchmark, stable across runs (predictions are matched by it)
    kind: ItemKind
    question: str  # the question as the benchmark states it (choices not yet appended)
    answer: Any  # ground truth: a letter for choice, float for numeric, "yes"/"no", text, region/mask/box, depth
    images: list[Any] = field(default_factory=list)  # file paths, raw bytes (parquet) or PIL images, in order
    video: str | None = None  # a video file; decoded to at most 32 evenly spaced frames
    choices: list[str] | None = None  # choice items: the options in order (A, B, ...)
    category: str = "all"  # per-category scores (question type, task, folder)
    meta: dict[str, Any] = field(default_factory=dict)  # anything the grader needs (image size, mask path...)
    error: str | None = None  # set when the item cannot be shown to the model (undecodable image): it counts wrong


@dataclass
class Graded:
    id: str
    parsed: Any  # what the parser read from the model's text (None: nothing parsable)
    score: float  # in [0, 1]
    note: str = ""  # why it scored 0 when that is not a wrong answer: "unparsable", "undecodable: ..."


class Benchmark:
    """Base class of the built-in benchmarks and the mapping adapter."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"  # the name results.json gives the overall score (e.g. "accuracy", "MRA")

    def __init__(self, root: Path):
        self.root = Path(root)

    def items(self) -> list[EvalItem]:
        raise NotImplementedError

    def prompt(self, item: EvalItem) -> str:
        raise NotImplementedError

    def grade(self, item: EvalItem, text: str) -> Graded:
        raise NotImplementedError

    def overall(self, per_category: dict[str, float]) -> float:
        """The benchmark's overall score from its per-category scores; the default is the mean over items, which
        the runner passes as per_category["__items__"]. VSI-Bench and RoboSpatial-Home average the categories."""
        return per_category["__items__"]

    def overall_of_items(self, items: list[EvalItem], scores: list[float]) -> float | None:
        """An overall score that per-category means cannot give (CV-Bench's mean over sources), or None to use
        overall()."""
        return None


def aggregate(bench: Benchmark, items: list[EvalItem], graded: list[Graded]) -> dict[str, Any]:
    """results.json's scores: overall (the benchmark's rule), per category, and counts (incl. unparsable and
    undecodable items, which scored 0 and are never dropped)."""
    by_id = {g.id: g for g in graded}
    per: dict[str, list[float]] = defaultdict(list)
    for item in items:
        per[item.category].append(by_id[item.id].score)
    categories = {c: sum(v) / len(v) for c, v in sorted(per.items())}
    scores = [by_id[i.id].score for i in items]
    overall = bench.overall_of_items(items, scores)
    if overall is None:
        overall = bench.overall({**categories, "__items__": sum(scores) / len(scores) if scores else 0.0})
    return {
        "benchmark": bench.name,
        "metric": bench.metric,
        "overall": overall,
        "categories": categories,
        "counts": {
            "items": len(items),
            "per_category": {c: len(v) for c, v in sorted(per.items())},
            "unparsable": sum(g.note == "unparsable" for g in graded),
            "undecodable": sum(g.note.startswith("undecodable") for g in graded),
        },
    }
