"""RoboRefIt (Lu et al., "VL-Grasp"): referring expressions for objects in cluttered robot scenes, as boxes.

Layout (the release's final_dataset, downloaded as it is):
    <root>/testA/roborefit_testA.json, <root>/testB/roborefit_testB.json    JSON arrays of {num, text, rgb_path,
        depth_path, mask_path, bbox [x0, y0, x1, y1] in pixels, class}; rgb_path is relative to <root> or to the
        folder holding final_dataset (both are tried)
Prompt: 'Locate "{text}" in the image and answer with its bounding box as [x0, y0, x1, y1], coordinates
normalised to 0-1.' Score: accuracy = IoU >= 0.5 with the ground-truth box (normalised by the image size); per
split (testA, testB).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import field, grade, image_error, read_records

SPLITS = ("testA", "testB")


class RoboRefIt(Benchmark):
    name = "roborefit"
    metric = "accuracy@IoU0.5"

    def items(self) -> list[EvalItem]:
        files = [self.root / s / f"roborefit_{s}.json" for s in SPLITS]
        if not any(f.exists() for f in files):
            raise InputError(f"{self.root}: neither testA/roborefit_testA.json nor testB/roborefit_testB.json "
                             "found; give the RoboRefIt final_dataset folder")
        items = []
        for split, path in zip(SPLITS, files):
            if not path.exists():
                continue
            for n, r in enumerate(read_records(path)):
                where = f"{path} record {n}"
                image = self._image(field(r, "rgb_path", where, str), where)
                box = field(r, "bbox", where, list)
                if len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
                    raise InputError(f"{where}: bbox {box!r:.60} is not [x0, y0, x1, y1]")
                error = image_error(image)
                answer = None
                if error is None:
                    with Image.open(image) as im:
                        w, h = im.size
                    answer = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
                items.append(EvalItem(
                    id=f"{split}/{r.get('num', n)}", kind="box", question=field(r, "text", where, str),
                    answer=answer, images=[str(image)], category=split,
                    meta={"image_size": None if error else (w, h), "class": r.get("class")}, error=error))
        return items

    def _image(self, relative: str, where: str) -> Path:
        relative = relative.replace("\\", "/").removeprefix("./")
        tail = relative.split("final_dataset/", 1)[-1]
        for candidate in (self.root / relative, self.root / tail, self.root.parent / relative):
            if candidate.is_file():
                return candidate
        raise InputError(f"{where}: image {relative} not found under {self.root}; give the final_dataset folder")

    def prompt(self, item: EvalItem) -> str:
        return (f'Locate "{item.question}" in the image and answer with its bounding box as [x0, y0, x1, y1], '
                "coordinates normalised to 0-1.")

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)
