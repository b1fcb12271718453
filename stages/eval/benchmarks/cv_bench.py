"""CV-Bench (Tong et al., "Cambrian-1"): 2D (Count, Relation) and 3D (Depth, Distance) multiple-choice questions.

Layout (the Hugging Face dataset nyu-visionx/CV-Bench, downloaded as it is):
    <root>/test_2d.parquet, <root>/test_3d.parquet    rows {idx, type, task, image {bytes, path}, question,
                                                      choices (list), answer "(B)", source, ...}
Prompt: the multiple-choice template (common.choice_prompt). Score: accuracy of the letter, per task. The overall
score here is the mean over items; the CV-Bench README's "combined" score instead averages the ADE20K and COCO
accuracies for 2D and Omni3D for 3D, so this is named "accuracy" and not called that score (each item's source
is kept in predictions for it).
"""

from __future__ import annotations

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import LETTERS, choice_prompt, field, grade, image_bytes, image_error, need, read_parquet


class CVBench(Benchmark):
    name = "cv-bench"
    metric = "accuracy"

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
                    meta={"source": r.get("source")}, error=image_error(image)))
        return items

    def prompt(self, item: EvalItem) -> str:
        return choice_prompt(item.question, item.choices or [])

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)
