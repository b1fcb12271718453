"""Where2Place (Yuan et al., "RoboPoint"): point to free space described by a spatial relation.

Layout (the Hugging Face dataset wentao-yuan/where2place, as RoboPoint's evaluation reads it):
    <root>/point_questions.jsonl    one {question_id, image, text, category?} per line, in order
    <root>/images/<image>           the image (e.g. 00.jpg)
    <root>/masks/<NN>.jpg           the ground-truth mask of the n-th question (two-digit index)
Prompt: the question text as given (it asks for a list of (x, y) points, normalised to [0, 1]). Score, as
RoboPoint's summarize script: the mask value (grey / 255) averaged over the predicted points, points outside the
image counting 0; per category when the file has one.
"""

from __future__ import annotations

from PIL import Image

from ..benchmark import Benchmark, EvalItem, Graded
from .common import field, grade, image_error, media, need, read_jsonl


class Where2Place(Benchmark):
    name = "where2place"
    metric = "accuracy"

    def items(self) -> list[EvalItem]:
        path = need(self.root / "point_questions.jsonl", "Where2Place's point_questions.jsonl")
        items = []
        for n, r in enumerate(read_jsonl(path)):
            where = f"{path} line {n + 1}"
            image = media(self.root, f"images/{field(r, 'image', where, str)}", where)
            mask = media(self.root, f"masks/{n:02d}.jpg", where)
            error = image_error(image) or (f"mask {mask.name}: {e}" if (e := image_error(mask)) else None)
            size = None
            if error is None:
                with Image.open(image) as im:
                    size = im.size
            items.append(EvalItem(
                id=str(r.get("question_id", n)), kind="point", question=field(r, "text", where, str),
                answer=str(mask), images=[str(image)], category=str(r.get("category") or "all"),
                meta={"mask": str(mask), "image_size": size}, error=error))
        return items

    def prompt(self, item: EvalItem) -> str:
        return item.question

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)
