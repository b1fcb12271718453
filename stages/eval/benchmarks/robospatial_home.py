"""RoboSpatial-Home (Song et al., "RoboSpatial"): spatial configuration, compatibility (yes/no) and context
(pointing) questions on household images.

Layout (as RoboSpatial-Eval's download_benchmark.py writes the Hugging Face dataset chanhee-luke/RoboSpatial-Home):
    <root>/annotations.json    a JSON array of {category, question, answer, img, depth_image, mask}; img is
                               relative to <root> (images/...); answer is "yes"/"no", or for context questions a
                               polygon "[(x, y), ...]" in normalised coordinates
Prompt: the question as given (it carries the answer-format instruction). Score, as RoboSpatial-Eval's
evaluation.py: a yes/no reply is right when it starts with the answer (lower case, stripped: "No, ..." reads as
no, "It is yes" as neither); a context reply by whether its first (x, y) point lies inside the polygon. One
difference: coordinates above 1 are read on Qwen3-VL's 0-1000 grid (answers.parse_points), where the reference
scorer counts them outside. Total = the mean of the three categories' accuracies.
"""

from __future__ import annotations

import ast

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import field, grade, image_error, media, read_records, records_file


class RoboSpatialHome(Benchmark):
    name = "robospatial-home"
    metric = "accuracy"

    def items(self) -> list[EvalItem]:
        path = records_file(self.root, ("annotations.json", "*.json"), "RoboSpatial-Home")
        items = []
        for n, r in enumerate(read_records(path)):
            where = f"{path} record {n}"
            answer = field(r, "answer", where, str).strip()
            image = media(self.root, field(r, "img", where, str), where)
            item = EvalItem(id=str(n), kind="yesno", question=field(r, "question", where, str),
                            answer=answer.lower(), images=[str(image)], category=field(r, "category", where, str),
                            error=image_error(image))
            if answer.lower() not in ("yes", "no"):
                try:
                    polygon = [(float(x), float(y)) for x, y in ast.literal_eval(answer)]
                except (ValueError, TypeError, SyntaxError):
                    polygon = []
                if len(polygon) < 3:
                    raise InputError(f"{where}: answer {answer!r:.60} is neither yes/no nor a polygon [(x, y), ...] "
                                     "of at least 3 points")
                item.kind, item.answer, item.meta["polygon"] = "point", polygon, polygon
            items.append(item)
        return items

    def prompt(self, item: EvalItem) -> str:
        return item.question

    def grade(self, item: EvalItem, text: str) -> Graded:
        if item.kind != "yesno" or item.error is not None:
            return grade(item, text)
        said = text.strip().lower()
        parsed = next((w for w in ("yes", "no") if said.startswith(w)), None)
        if parsed is None:
            return Graded(item.id, None, 0.0, note="unparsable")
        return Graded(item.id, parsed, float(parsed == item.answer))

    def overall(self, per_category: dict[str, float]) -> float:
        scores = [s for c, s in per_category.items() if c != "__items__"]
        return sum(scores) / len(scores) if scores else 0.0
