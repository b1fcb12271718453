"""VSI-Bench (Yang et al., "Thinking in Space"): spatial questions about indoor scene videos.

Layout (the Hugging Face dataset nyu-visionx/VSI-Bench, downloaded as it is):
    <root>/test.jsonl or test-*.parquet    records {id, dataset, scene_name, question_type, question, options,
                                           ground_truth}; options are "A. ..." strings, null for numeric types
    <root>/<dataset>/<scene_name>.mp4      e.g. arkitscenes/41069025.mp4, scannet/scene0011_00.mp4
Prompts (lmms-eval's vsibench task): "These are frames of a video.", the question, then for multiple choice the
options and "Answer with the option's letter from the given choices directly.", for numeric types "Please answer
the question using a single word or phrase.". Multiple-choice types score by exact match of the letter, numeric
types by Mean Relative Accuracy; overall = the mean over question types, with the three object_rel_direction
difficulties first merged into one type (as lmms-eval reports).
"""

from __future__ import annotations

import re

from gem_stages.data.video import VideoError, video_size
from gem_stages.errors import InputError

from ..benchmark import Benchmark, EvalItem, Graded
from .common import MC_SUFFIX, SHORT_SUFFIX, field, grade, media, read_records, records_file

NUMERIC_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
CHOICE_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
                "object_rel_distance", "route_planning", "obj_appearance_order")
_UNITS = (("square meter", "m2"), ("centimeter", "cm"), ("meter", "m"))  # as the questions name them


class VSIBench(Benchmark):
    name = "vsi-bench"
    metric = "accuracy/MRA"

    def items(self) -> list[EvalItem]:
        path = records_file(self.root, ("test.jsonl", "test-*.parquet", "*.jsonl", "*.parquet"), "VSI-Bench")
        items, probed = [], {}  # video -> why it does not open (None: it does); many questions share a scene
        for n, r in enumerate(read_records(path)):
            where = f"{path} record {n}"
            qtype = field(r, "question_type", where, str)
            if qtype not in NUMERIC_TYPES + CHOICE_TYPES:
                raise InputError(f"{where}: unknown question_type {qtype!r}; VSI-Bench's types: "
                                 + ", ".join(CHOICE_TYPES + NUMERIC_TYPES))
            video = media(self.root, f"{field(r, 'dataset', where, str)}/{field(r, 'scene_name', where, str)}.mp4",
                          where)
            question = field(r, "question", where, str)
            truth = str(field(r, "ground_truth", where, (str, int, float)))
            item = EvalItem(id=str(r.get("id", n)), kind="numeric", question=question, answer=None,
                            video=str(video), category=qtype)
            if qtype in CHOICE_TYPES:
                options = field(r, "options", where, list)
                item.kind, item.answer = "choice", truth.strip().upper()
                item.choices = [re.sub(r"^[A-Z]\.\s*", "", str(o)) for o in options]
            else:
                try:
                    item.answer = float(truth)
                except ValueError:
                    raise InputError(f"{where}: ground_truth {truth!r} is not a number") from None
                item.meta["unit"] = next((u for word, u in _UNITS if word in question.lower()), None)
            if video not in probed:
                try:
                    video_size(video, decode=False)
                    probed[video] = None
                except VideoError as e:
                    probed[video] = f"{video.name}: {e}"
            item.error = probed[video]
            items.append(item)
        return items

    def prompt(self, item: EvalItem) -> str:
        if item.kind == "choice":
            options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.choices or []))
            return f"These are frames of a video.\n{item.question}\nOptions:\n{options}\n{MC_SUFFIX}"
        return f"These are frames of a video.\n{item.question}\n{SHORT_SUFFIX}"

    def grade(self, item: EvalItem, text: str) -> Graded:
        return grade(item, text)

    def overall(self, per_category: dict[str, float]) -> float:
        types = {c: s for c, s in per_category.items() if c != "__items__"}
        direction = [types.pop(c) for c in list(types) if c.startswith("object_rel_direction_")]
        if direction:
            types["object_rel_direction"] = sum(direction) / len(direction)
        return sum(types.values()) / len(types) if types else 0.0
