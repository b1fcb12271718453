"""Questions about a rendered gem-synth scene, with answers read off that render's id and depth buffers.

Each question kind is a function (rng, facts) -> (task, prompt, answer, number of images) or None when the scene
cannot support it (e.g. no two objects far enough apart in depth to make "which is closer" unambiguous). Margins
keep every answer decidable by eye: depths must differ by DEPTH_MARGIN_M, columns by 6% of the image width.

Answer formats (tests and evaluations parse them):
  box          "[x1, y1, x2, y2]"  pixel-edge coordinates, x2/y2 one past the last visible pixel
  point        "(x, y)"            column, row of a visible pixel of the object
  closer       "The <name>."
  left_right   "Left." | "Right."  where the first-named object's visible centroid is, relative to the second's
  count        "<n>"
  depth_order  "<name>, <name>, <name>"  nearest to farthest (mean depth of visible pixels)
  two_view     "The first image." | "The second image."
  plan         numbered steps, one per line
  next_step    one step, as in plan
"""

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .synth_scene import COLOURS, PICKABLE, SHAPES, ObjectView, SceneObject

DEPTH_MARGIN_M = 0.03  # two depths closer than this are too close to call
COLUMN_MARGIN = 0.06  # fraction of the image width separating "left" from "right"


@dataclass(frozen=True)
class SceneFacts:
    objects: list[SceneObject]  # the scene's objects (index = id-buffer value)
    views: list[list[ObjectView]]  # per rendered image, per object
    width: int  # image width in pixels
    min_pixels: int  # smaller objects are not asked about

    def visible(self, view: int = 0) -> list[int]:
        return [i for i, v in enumerate(self.views[view]) if v.pixels >= self.min_pixels]


Question = tuple[str, str, str, int]  # (task, prompt without <image> tags, answer, number of images)


def _pick(rng: np.random.Generator, items: list, k: int) -> list:
    return [items[i] for i in rng.permutation(len(items))[:k]]


def _the(obj: SceneObject) -> str:
    return f"the {obj.name}"


def ask_box(rng, facts: SceneFacts) -> Question | None:
    visible = facts.visible()
    if not visible:
        return None
    (i,) = _pick(rng, visible, 1)
    x1, y1, x2, y2 = facts.views[0][i].box
    prompt = [
        f"Give the bounding box of {_the(facts.objects[i])} as [x1, y1, x2, y2] in pixels.",
        f"Locate {_the(facts.objects[i])} in the image and answer with its box [x1, y1, x2, y2] in pixels.",
    ][rng.integers(2)]
    return "grounding", prompt, f"[{x1}, {y1}, {x2}, {y2}]", 1


def ask_point(rng, facts: SceneFacts) -> Question | None:
    visible = facts.visible()
    if not visible:
        return None
    (i,) = _pick(rng, visible, 1)
    x, y = facts.views[0][i].point
    prompt = [
        f"Point to {_the(facts.objects[i])}. Answer with its pixel coordinates (x, y).",
        f"Where is {_the(facts.objects[i])}? Give one point on it as (x, y) in pixels.",
    ][rng.integers(2)]
    return "grounding", prompt, f"({x}, {y})", 1


def _depth_separated(facts: SceneFacts, indices: list[int], view: int = 0) -> bool:
    depths = sorted(facts.views[view][i].mean_depth for i in indices)
    return all(b - a >= DEPTH_MARGIN_M for a, b in pairwise(depths))


def ask_closer(rng, facts: SceneFacts) -> Question | None:
    visible = facts.visible()
    pairs = [(a, b) for a in visible for b in visible if a < b and _depth_separated(facts, [a, b])]
    if not pairs:
        return None
    a, b = pairs[rng.integers(len(pairs))]
    if rng.integers(2):
        a, b = b, a
    nearer = min((a, b), key=lambda i: facts.views[0][i].mean_depth)
    prompt = f"Which is closer to the camera: {_the(facts.objects[a])} or {_the(facts.objects[b])}?"
    return "spatial", prompt, f"The {facts.objects[nearer].name}.", 1


def ask_left_right(rng, facts: SceneFacts) -> Question | None:
    visible = facts.visible()
    margin = COLUMN_MARGIN * facts.width
    column = {i: facts.views[0][i].centroid[0] for i in visible}
    pairs = [(a, b) for a in visible for b in visible if a != b and abs(column[a] - column[b]) >= margin]
    if not pairs:
        return None
    a, b = pairs[rng.integers(len(pairs))]
    prompt = (
        f"In the image, is {_the(facts.objects[a])} to the left or to the right of {_the(facts.objects[b])}?"
    )
    return "spatial", prompt, "Left." if column[a] < column[b] else "Right.", 1


def ask_count(rng, facts: SceneFacts) -> Question | None:
    # Counting needs every object clearly in view: a hidden one would make the true count unknowable.
    if len(facts.visible()) != len(facts.objects):
        return None
    present_any = rng.random() < 0.3  # sometimes ask about an absent colour/shape: "0" is an answer too
    if rng.integers(2):
        options = list(COLOURS) if present_any else sorted({o.colour for o in facts.objects})
        colour = options[rng.integers(len(options))]
        n = sum(o.colour == colour for o in facts.objects)
        prompt = f"How many {colour} objects are on the table?"
    else:
        options = list(SHAPES) if present_any else sorted({o.shape for o in facts.objects})
        shape = options[rng.integers(len(options))]
        n = sum(o.shape == shape for o in facts.objects)
        prompt = f"How many {shape}s are on the table?"
    return "spatial", prompt, str(n), 1


def ask_depth_order(rng, facts: SceneFacts) -> Question | None:
    visible = facts.visible()
    triples = [
        (a, b, c)
        for a in visible
        for b in visible
        for c in visible
        if a < b < c and _depth_separated(facts, [a, b, c])
    ]
    if not triples:
        return None
    chosen = list(triples[rng.integers(len(triples))])
    chosen = _pick(rng, chosen, 3)
    names = [facts.objects[i].name for i in chosen]
    order = sorted(chosen, key=lambda i: facts.views[0][i].mean_depth)
    prompt = (
        f"Order the {names[0]}, the {names[1]} and the {names[2]} from nearest to farthest from the camera."
    )
    return "spatial", prompt, ", ".join(facts.objects[i].name for i in order), 1


def ask_two_view(rng, facts: SceneFacts) -> Question | None:
    if len(facts.views) < 2:
        return None
    both = [i for i in facts.visible(0) if i in facts.visible(1)]
    candidates = [
        i for i in both if abs(facts.views[0][i].mean_depth - facts.views[1][i].mean_depth) >= DEPTH_MARGIN_M
    ]
    if not candidates:
        return None
    (i,) = _pick(rng, candidates, 1)
    first_nearer = facts.views[0][i].mean_depth < facts.views[1][i].mean_depth
    prompt = (
        "The two images show the same table from different viewpoints. "
        f"In which image is {_the(facts.objects[i])} closer to the camera?"
    )
    return "spatial", prompt, "The first image." if first_nearer else "The second image.", 2


def plan_steps(item: str, target: str) -> list[str]:
    """The templated pick-and-place plan (also what the episode expert executes, phase by phase)."""
    return [
        f"Move the gripper above the {item}.",
        f"Lower the gripper and grasp the {item}.",
        f"Lift the {item}.",
        f"Move the {item} above the {target}.",
        f"Lower the {item} onto the {target} and release it.",
        "Move the gripper up and away.",
    ]


def _place_pairs(facts: SceneFacts) -> list[tuple[int, int]]:
    visible = facts.visible()
    items = [i for i in visible if facts.objects[i].shape in PICKABLE]
    targets = [i for i in visible if facts.objects[i].shape in ("plate", "cube")]
    return [(i, t) for i in items for t in targets if i != t]


def _pick_task(rng, facts: SceneFacts) -> tuple[str, str, list[str]] | None:
    """A random (item, target, steps) placing task in the scene, or None when it has none."""
    pairs = _place_pairs(facts)
    if not pairs:
        return None
    i, t = pairs[rng.integers(len(pairs))]
    item, target = facts.objects[i].name, facts.objects[t].name
    return item, target, plan_steps(item, target)


def ask_plan(rng, facts: SceneFacts) -> Question | None:
    task = _pick_task(rng, facts)
    if task is None:
        return None
    item, target, steps = task
    prompt = f"To put the {item} on the {target}, list the steps."
    return "planning", prompt, "\n".join(f"{k + 1}. {s}" for k, s in enumerate(steps)), 1


def ask_next_step(rng, facts: SceneFacts) -> Question | None:
    task = _pick_task(rng, facts)
    if task is None:
        return None
    item, target, steps = task
    done = int(rng.integers(len(steps)))
    history = " ".join(steps[:done]) if done else "Nothing yet."
    prompt = f"The robot is putting the {item} on the {target}. Done so far: {history} What is the next step?"
    return "planning", prompt, steps[done], 1


QUESTION_KINDS: dict[str, Callable] = {
    "box": ask_box,
    "point": ask_point,
    "closer": ask_closer,
    "left_right": ask_left_right,
    "count": ask_count,
    "depth_order": ask_depth_order,
    "two_view": ask_two_view,
    "plan": ask_plan,
    "next_step": ask_next_step,
}


def scene_questions(rng: np.random.Generator, facts: SceneFacts, count: int) -> list[tuple[str, Question]]:
    """Up to `count` questions of distinct kinds; a scene with a second view asks its two-image question first."""
    kinds = [k for k in QUESTION_KINDS if k != "two_view"]
    order = (
        ["two_view"] + _pick(rng, kinds, len(kinds))
        if len(facts.views) > 1
        else _pick(rng, kinds, len(kinds))
    )
    questions = []
    for kind in order:
        if len(questions) == count:
            break
        question = QUESTION_KINDS[kind](rng, facts)
        if question is not None:
            questions.append((kind, question))
    return questions


def to_sample(sample_id: str, images: list[str], question: Question) -> dict:
    """The LLaVA/Qwen annotation record: one <image> tag per image, before the question."""
    task, prompt, answer, num_images = question
    images = images[:num_images]
    human = "<image>\n" * num_images + prompt
    return {
        "id": sample_id,
        "image": images[0] if num_images == 1 else images,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
        "task": task,
    }
