"""gem-synth held-out benchmarks: synthetic tabletop scenes no training run ever sees, so every run (tiny ones
included) gets real numbers for grounding, spatial QA, planning and depth quality.

Held-out scenes come from the training generators (synth_dataset.build_scene, synth_questions) drawing from their
own stream, HELDOUT_SCENE_STREAM: scene i is rendered from default_rng([seed, 2, i]) where training scenes use
[seed, 0, j], so no held-out scene is a training scene for any seed or dataset size. `write_heldout` writes them:

    heldout.json        seed, stream, scene count, image size, digest of the files
    images/<stem>.png   the rendered views;  depth/<stem>.png  16-bit millimetre depth (DepthBenchmark's layout)
    masks/<id>.png      pointing items: the target object's visible pixels (255)
    items.jsonl         one question per line: id, kind, task, question, answer (the training text), images, ...

Prompt: the question exactly as in training (images first, then the text). Parsing and scoring per question kind:
    box          the first "[x1, y1, x2, y2]" (4 numbers, pixels)    IoU with the true box >= 0.5
    point        the first "(x, y)" (2 numbers, pixels)              inside the object's visible pixels
    closer       which object name the answer says (choice)          exact match; both or neither: unparsable
    left_right   "left" or "right" (choice)                          exact match
    two_view     "first" or "second" (choice)                        exact match
    count        the first integer (digits or zero..ten) (numeric)   exact match (a count; MRA is undefined at 0)
    depth_order  the names in the order written (open)               normalised exact match
    plan         free text (open)                                    normalised exact match; token F1 in parsed
    next_step    free text (open)                                    normalised exact match; token F1 in parsed
Open answers report exact match as the score and token F1 beside it: gemctl's metrics, not a published benchmark's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from ..data.config import DataConfig
from ..data.depth_png import save_depth_mm
from ..data.manifest import md5_file, write_file_list
from ..data.synth_dataset import HELDOUT_SCENE_STREAM, build_scene
from ..errors import InputError
from ..files import atomic_dir
from .benchmark import Benchmark, EvalItem, Graded
from .depth_quality import DepthBenchmark
from .metrics import box_iou, token_f1
from .metrics import normalize_answer as normalise

HELDOUT_FILE = "heldout.json"
ITEMS_FILE = "items.jsonl"
DEFAULT_SCENES = 20  # ~80 questions, ~25 depth images: seconds for a tiny model, enough to move the numbers
IOU_THRESHOLD = 0.5
TASKS = ("grounding", "spatial", "planning")
NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


# ----- writing the held-out scenes -----
def _choices(kind: str, question: str) -> list[str] | None:
    if kind == "closer":  # "Which is closer to the camera: the A or the B?"
        a, b = question.split(": ", 1)[1].rstrip("?").split(" or ")
        return [a.removeprefix("the "), b.removeprefix("the ")]
    return {"left_right": ["Left", "Right"], "two_view": ["The first image", "The second image"]}.get(kind)


def write_heldout(cfg: DataConfig, root: Path, num_scenes: int = DEFAULT_SCENES) -> dict:
    """Render `num_scenes` held-out scenes of `cfg` (seed, image size, objects) into `root` (replaced whole,
    atomically) and return heldout.json's content. Same cfg and count -> byte-identical files."""
    if num_scenes < 1:
        raise InputError(f"num_scenes is {num_scenes}: the held-out set needs at least 1 scene")
    root = Path(root)
    with atomic_dir(root) as out:
        for sub in ("images", "depth", "masks"):
            (out / sub).mkdir()
        lines = []
        for index in range(num_scenes):
            scene = build_scene(cfg, index, HELDOUT_SCENE_STREAM)
            for stem, view in zip(scene.stems, scene.renders):
                Image.fromarray(view.rgb).save(out / "images" / f"{stem}.png", format="PNG")
                save_depth_mm(out / "depth" / f"{stem}.png", view.depth)
            ids = scene.renders[0].ids
            for q, (kind, (task, question, answer, num_images)) in enumerate(scene.questions):
                record = {
                    "id": f"heldout-{index:06d}-{q}",
                    "kind": kind,
                    "task": task,
                    "question": question,
                    "answer": answer,
                    "images": [f"images/{stem}.png" for stem in scene.stems[:num_images]],
                    "choices": _choices(kind, question),
                }
                if kind == "point":  # the object under the true point: its visible pixels are the target
                    x, y = _numbers(answer)
                    mask = (ids == ids[int(y), int(x)]).astype(np.uint8) * 255
                    record["mask"] = f"masks/{record['id']}.png"
                    Image.fromarray(mask).save(out / record["mask"], format="PNG")
                lines.append(json.dumps(record) + "\n")
        (out / ITEMS_FILE).write_text("".join(lines))
        md5s = {p.relative_to(out).as_posix(): md5_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
        info = {
            "name": "gem-synth-heldout",
            "seed": cfg.seed,
            "stream": HELDOUT_SCENE_STREAM,
            "num_scenes": num_scenes,
            "items": len(lines),
            "image_size": [cfg.image_height, cfg.image_width],
            "config": asdict(cfg),
            "digest": write_file_list(out, md5s),
        }
        (out / HELDOUT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def ensure_heldout(cfg: DataConfig, root: Path, num_scenes: int = DEFAULT_SCENES) -> dict:
    """The held-out folder for `cfg` and `num_scenes`: kept when heldout.json says it was made from the same data
    settings and count (so its digest, and DVC's, stay put), written afresh otherwise."""
    path = Path(root) / HELDOUT_FILE
    if path.is_file():
        info = json.loads(path.read_text())
        if info.get("config") == json.loads(json.dumps(asdict(cfg))) and info.get("num_scenes") == num_scenes:
            return info
    return write_heldout(cfg, root, num_scenes)


def open_answer_f1(graded: list[Graded]) -> float | None:
    """Mean token F1 of the open answers graded, unparsable ones as 0 (None: there were none); exact match is
    their score."""
    f1 = [g.parsed["f1"] for g in graded if isinstance(g.parsed, dict) and "f1" in g.parsed]
    return sum(f1) / len(f1) if f1 else None


def _read_heldout(root: Path) -> dict:
    path = Path(root) / HELDOUT_FILE
    if not path.is_file():
        raise InputError(
            f"{path} does not exist: write the gem-synth held-out scenes there first "
            "(gem_stages.eval.gem_synth.write_heldout)"
        )
    return json.loads(path.read_text())


# ----- parsing and scoring -----
def _numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]


def _first_group(text: str, opening: str, closing: str, count: int) -> list[float] | None:
    for inside in re.findall(
        re.escape(opening) + r"([^" + re.escape(closing) + r"]*)" + re.escape(closing), text
    ):
        values = _numbers(inside)
        if len(values) == count:
            return values
    return None


def _choice(text: str, choices: list[str], keys: list[str]) -> int | None:
    """Index of the only choice whose key (a lower-case word or phrase) the text contains; None: none or several."""
    low = " " + normalise(text) + " "
    hits = [i for i, key in enumerate(keys) if f" {key} " in low]
    return hits[0] if len(hits) == 1 else None


def _count(text: str) -> int | None:
    for word in normalise(text).split():
        if word.isdigit():
            return int(word)
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
    return None


def grade_answer(item: EvalItem, text: str) -> Graded:
    """Score the model's text for one held-out question (rules in the module docstring); never raises."""
    kind = item.meta["kind"]
    unparsable = Graded(item.id, None, 0.0, "unparsable")
    if kind == "box":
        box = _first_group(text, "[", "]", 4)
        if box is None:
            return unparsable
        return Graded(item.id, box, float(box_iou(box, item.meta["box_px"]) >= IOU_THRESHOLD))
    if kind == "point":
        point = _first_group(text, "(", ")", 2)
        if point is None:
            return unparsable
        x, y = int(np.floor(point[0])), int(np.floor(point[1]))
        with Image.open(item.meta["mask"]) as im:
            mask = np.asarray(im) > 0
        inside = 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])
        return Graded(item.id, point, float(inside))
    if kind in ("closer", "left_right", "two_view"):
        keys = {
            "closer": [normalise(c) for c in item.choices],
            "left_right": ["left", "right"],
            "two_view": ["first", "second"],
        }[kind]
        index = _choice(text, item.choices, keys)
        if index is None:
            return unparsable
        letter = "ABCDEFGH"[index]
        return Graded(item.id, letter, float(letter == item.answer))
    if kind == "count":
        n = _count(text)
        return unparsable if n is None else Graded(item.id, n, float(n == item.answer))
    # open: depth_order, plan, next_step
    if not normalise(text):  # nothing to read: F1 0, kept in the open answers' mean
        return Graded(item.id, {"answer": "", "exact_match": 0.0, "f1": 0.0}, 0.0, "unparsable")
    exact = float(normalise(text) == normalise(item.answer))
    return Graded(
        item.id, {"answer": text.strip(), "exact_match": exact, "f1": token_f1(text, item.answer)}, exact
    )


_KINDS = {
    "box": "box",
    "point": "point",
    "closer": "choice",
    "left_right": "choice",
    "two_view": "choice",
    "count": "numeric",
    "depth_order": "open",
    "plan": "open",
    "next_step": "open",
}


def _item(root: Path, record: dict, size: tuple[int, int]) -> EvalItem:
    kind, answer = record["kind"], record["answer"]
    h, w = size
    meta = {"kind": kind, "task": record["task"]}
    if kind == "box":
        meta["box_px"] = _numbers(answer)
        x1, y1, x2, y2 = meta["box_px"]
        answer = [x1 / w, y1 / h, x2 / w, y2 / h]  # the contract's normalised box
    elif kind == "point":
        meta["mask"] = str(root / record["mask"])
        x, y = _numbers(answer)
        answer = [(x + 0.5) / w, (y + 0.5) / h]
    elif record["choices"]:
        keys = {"left_right": ["left", "right"], "two_view": ["first", "second"]}.get(kind)
        said = _choice(answer, record["choices"], keys or [normalise(c) for c in record["choices"]])
        answer = "ABCDEFGH"[said]
    elif kind == "count":
        answer = int(answer)
    return EvalItem(
        id=record["id"],
        kind=_KINDS[kind],
        question=record["question"],
        answer=answer,
        images=[str(root / p) for p in record["images"]],
        choices=record["choices"],
        category=kind,
        meta=meta,
    )


# ----- the benchmarks -----
class GemSynthQA(Benchmark):
    """All held-out questions (grounding, spatial, planning), per question kind. Subclasses keep one task."""

    name: ClassVar[str] = "gem-synth-qa"
    metric: ClassVar[str] = "accuracy"
    tasks: ClassVar[tuple[str, ...]] = TASKS

    def items(self) -> list[EvalItem]:
        info = _read_heldout(self.root)
        size = tuple(info["image_size"])
        items = []
        with open(self.root / ITEMS_FILE) as f:
            for line_no, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                    if record["task"] in self.tasks:
                        items.append(_item(self.root, record, size))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as e:
                    raise InputError(
                        f"{self.root / ITEMS_FILE} line {line_no} is malformed ({e}): "
                        "write the held-out scenes again (write_heldout)"
                    ) from None
        return items

    def prompt(self, item: EvalItem) -> str:
        return item.question  # as in training: the images go first, then this text

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade_answer(item, text)


class GemSynthGrounding(GemSynthQA):
    name: ClassVar[str] = "gem-synth-grounding"
    tasks: ClassVar[tuple[str, ...]] = ("grounding",)


class GemSynthSpatial(GemSynthQA):
    name: ClassVar[str] = "gem-synth-spatial"
    tasks: ClassVar[tuple[str, ...]] = ("spatial",)


class GemSynthPlanning(GemSynthQA):
    name: ClassVar[str] = "gem-synth-planning"
    tasks: ClassVar[tuple[str, ...]] = ("planning",)


class GemSynthDepth(DepthBenchmark):
    """Depth quality on every held-out view (images/ + depth/ of the held-out folder)."""

    name: ClassVar[str] = "gem-synth-depth"

    def items(self) -> list[EvalItem]:
        _read_heldout(self.root)
        return super().items()


GEM_SYNTH_BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (GemSynthQA, GemSynthGrounding, GemSynthSpatial, GemSynthPlanning, GemSynthDepth)
}
