"""CV-Bench (Tong et al., "Cambrian-1"): 2D (Count, Relation) and 3D (Depth, Distance) multiple-choice questions.

Layout (the Hugging Face dataset nyu-visionx/CV-Bench, downloaded as it is):
    <root>/test_2d.parquet, <root>/test_3d.parquet    rows {idx, type, task, image {bytes, path}, question,
                                                      choices (list), answer "(B)", source, ...}
Prompt: the multiple-choice template (common.choice_prompt). Score: accuracy of the letter, per task. The overall
score is the README's combined accuracy: 2D = the mean of the ADE20K and COCO accuracies, 3D = the Omni3D accuracy,
combined = the mean of 2D and 3D. Each source's accuracy is over its own items, so a limited run (--limit) that lacks
a source averages the sources it has.
"""

from __future__ import annotations

from collections import defaultdict

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import LETTERS, choice_prompt, field, grade, image_bytes, image_error, need, read_parquet


class CVBench(Benchmark):
    name = "cv-bench"
    metric = "combined accuracy"

    def items(self) -> list[EvalItem]:
        need(self.root, "the CV-Bench folder (test_2d.parquet, test_3d.parquet)")
        items = []
        for split in ("test_2d", "test_3d"):
            path = need(self.root / f"{split}.parquet", f"CV-Bench's {split} parquet file")
            for n, r in enumerate(read_parquet(path)):
                where = f"{path} row {n}"
                choices = [str(c) for c in field(r, "choices", where, list)]
                answer = field(r, "answer", where, str).strip().strip("()").upper()
                if answer not in LETTERS[: len(choices)]:
                    raise InputError(f"{where}: answer {r['answer']!r} is not one of the {len(choices)} options' "
                                     "letters, (A) to " + f"({LETTERS[len(choices) - 1]})")
                image = image_bytes(field(r, "image", where, (dict, bytes)), where)
                items.append(EvalItem(
                    id=f"{split}/{r.get('idx', n)}", kind="choice", question=field(r, "question", where, str),
                    answer=answer, images=[image], choices=choices, category=field(r, "task", where, str),
                    meta={"source": r.get("source"), "split": split}, error=image_error(image)))
        return items

    def prompt(self, item: EvalItem) -> str:
        return choice_prompt(item.question, item.choices or [])

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)

    def overall_of_items(self, items: list[EvalItem], scores: list[float]) -> float | None:
        by_source: dict[tuple[str, str], list[float]] = defaultdict(list)
        for item, score in zip(items, scores, strict=True):
            by_source[item.meta["split"], str(item.meta.get("source"))].append(score)
        per_split: dict[str, list[float]] = defaultdict(list)
        for (split, _), source_scores in sorted(by_source.items()):
            per_split[split].append(sum(source_scores) / len(source_scores))
        split_means = [sum(v) / len(v) for v in per_split.values()]
        return sum(split_means) / len(split_means) if split_means else 0.0
