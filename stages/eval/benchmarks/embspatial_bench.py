"""EmbSpatial-Bench (Du et al.): spatial relations in embodied scenes, multiple choice.

Layout (the GitHub release mengfeidu/EmbSpatial-Bench, downloaded as it is):
    <root>/embspatial_bench.json (or any *.json)    a JSON array of {question_id, image (base64-encoded image),
                                                    question, answer_options (list), answer (index into the
                                                    options), relation, data_source, objects}
Prompt: the multiple-choice template (common.choice_prompt). Score: accuracy of the letter, per relation.
"""

from __future__ import annotations

import base64
import binascii

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import LETTERS, choice_prompt, field, grade, image_error, read_records, records_file


class EmbSpatialBench(Benchmark):
    name = "embspatial-bench"
    metric = "accuracy"

    def items(self) -> list[EvalItem]:
        path = records_file(self.root, ("embspatial_bench.json", "*.json"), "EmbSpatial-Bench")
        items = []
        for n, r in enumerate(read_records(path)):
            where = f"{path} record {n}"
            options = [str(o) for o in field(r, "answer_options", where, list)]
            answer = field(r, "answer", where, int)
            if isinstance(answer, bool) or not 0 <= answer < len(options):
                raise InputError(f"{where}: answer {answer!r} is not an index into its {len(options)} options")
            encoded = field(r, "image", where, str)
            try:
                image: bytes | str = base64.b64decode(encoded, validate=True)
                error = image_error(image)
            except (binascii.Error, ValueError) as e:
                image, error = encoded, f"image is not base64 ({e})"
            items.append(EvalItem(
                id=str(r.get("question_id", n)), kind="choice", question=field(r, "question", where, str),
                answer=LETTERS[answer], images=[image], choices=options,
                category=str(r.get("relation") or "all"), meta={"data_source": r.get("data_source")}, error=error))
        return items

    def prompt(self, item: EvalItem) -> str:
        return choice_prompt(item.question, item.choices or [])

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)
