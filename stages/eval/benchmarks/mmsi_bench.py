"""MMSI-Bench (Yang et al.): multi-image spatial intelligence, 4-way multiple choice.

Layout (the Hugging Face dataset RunsenXu/MMSI-Bench, downloaded as it is):
    <root>/MMSI_Bench.parquet (or any *.parquet)    rows {id, images (list of image bytes), question_type,
                                                    question (options written inside it), answer "A".."D", ...}
Prompt: the question as given (it lists the options) and "Answer with the option's letter from the given choices
directly."; the letter is read from the model's text (answers.parse_choice). Score: accuracy, per question type.
"""

from __future__ import annotations

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import MC_SUFFIX, field, grade, image_bytes, image_error, read_parquet, records_file


class MMSIBench(Benchmark):
    name = "mmsi-bench"
    metric = "accuracy"

    def items(self) -> list[EvalItem]:
        path = records_file(self.root, ("MMSI_Bench.parquet", "*.parquet"), "MMSI-Bench")
        items = []
        for n, r in enumerate(read_parquet(path)):
            where = f"{path} row {n}"
            images = [image_bytes(x, where) for x in field(r, "images", where, list)]
            answer = field(r, "answer", where, str).strip().upper()
            if answer not in "ABCD" or len(answer) != 1:
                raise InputError(f"{where}: answer {r['answer']!r} is not a letter A to D")
            errors = [e for e in map(image_error, images) if e]
            items.append(EvalItem(
                id=str(r.get("id", n)), kind="choice", question=field(r, "question", where, str), answer=answer,
                images=images, category=field(r, "question_type", where, str),
                error=errors[0] if errors else None))
        return items

    def prompt(self, item: EvalItem) -> str:
        return f"{item.question}\n{MC_SUFFIX}"

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text, letters="ABCD")
