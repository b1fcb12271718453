"""gem-synth held-out benchmarks: scenes disjoint from training, every generator answer scores 1 under its parser,
messy and wrong answers score as documented, and a tiny model gets finite numbers on every kind."""

import hashlib
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from gem_models.config import tiny_config
from gem_models.gem import GemModel
from gem_models.processor import batch_to
from gem_stages.data.config import DataConfig
from gem_stages.data.synth_dataset import write_synth
from gem_stages.errors import InputError
from gem_stages.eval.benchmark import Graded, aggregate
from gem_stages.eval.depth_quality import depth_summary
from gem_stages.eval.gem_synth import (
    GEM_SYNTH_BENCHMARKS,
    GemSynthDepth,
    GemSynthGrounding,
    GemSynthPlanning,
    GemSynthQA,
    GemSynthSpatial,
    ensure_heldout,
    open_answer_f1,
    token_f1,
    write_heldout,
)

SCENES = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout") / "gem-synth"
    write_heldout(DataConfig(), root, SCENES)
    return root


def _records(root):
    return [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]


def _pixels(root):
    return {
        hashlib.md5(np.asarray(Image.open(p)).tobytes()).hexdigest()
        for p in sorted(root.glob("images/*.png"))
    }


def test_heldout_scenes_are_never_training_scenes(tmp_path, heldout):
    held = _pixels(heldout)
    assert len(held) == len(list(heldout.glob("images/*.png")))  # every held-out view is a different image
    for seed in (0, 1):  # the training set of the same seed, and of another one
        train = tmp_path / f"train{seed}"
        train.mkdir()
        write_synth(DataConfig(seed=seed, num_scenes=10 * SCENES, num_episodes=0), train)
        assert held.isdisjoint(_pixels(train))
        # the same question text can recur (templates); the same scene with the same answers cannot
        train_qa = {
            (
                json.loads(line)["conversations"][0]["value"].split("\n")[-1],
                json.loads(line)["conversations"][1]["value"],
            )
            for line in open(train / "annotations.jsonl")
        }
        boxes = {qa for qa in train_qa if qa[0].startswith(("Give the bounding box", "Locate"))}
        held_boxes = {(r["question"], r["answer"]) for r in _records(heldout) if r["kind"] == "box"}
        assert held_boxes and boxes and held_boxes.isdisjoint(boxes)


def test_heldout_is_reproducible_and_records_what_made_it(tmp_path, heldout):
    info = write_heldout(DataConfig(), tmp_path / "again", SCENES)
    assert (tmp_path / "again" / "items.jsonl").read_bytes() == (heldout / "items.jsonl").read_bytes()
    assert info == json.loads((heldout / "heldout.json").read_text())
    assert info["stream"] == 2 and info["num_scenes"] == SCENES and info["items"] == len(_records(heldout))
    stamp = (tmp_path / "again" / "items.jsonl").stat().st_mtime_ns
    assert ensure_heldout(DataConfig(), tmp_path / "again", SCENES) == info  # same settings: kept as it is
    assert (tmp_path / "again" / "items.jsonl").stat().st_mtime_ns == stamp
    bigger = ensure_heldout(DataConfig(image_height=96), tmp_path / "again", SCENES)  # other settings: rewritten
    assert bigger["image_size"] == [96, 64] and Image.open(next((tmp_path / "again").glob("images/*"))).size == (64, 96)


def test_generator_answers_score_one_under_every_parser(heldout):
    bench = GemSynthQA(heldout)
    items = bench.items()
    records = _records(heldout)
    assert [i.id for i in items] == [r["id"] for r in records]
    assert {i.category for i in items} >= {
        "box",
        "point",
        "closer",
        "left_right",
        "count",
        "plan",
        "next_step",
    }
    for item, record in zip(items, records):
        graded = bench.grade(item, record["answer"])
        assert graded.score == 1.0 and graded.note == "", (item.id, item.category, record["answer"], graded)


def _first(items, category):
    return next(i for i in items if i.category == category)


def test_messy_and_wrong_answers(heldout):
    bench = GemSynthQA(heldout)
    items = bench.items()
    box = _first(items, "box")
    x1, y1, x2, y2 = box.meta["box_px"]
    # one column wider: IoU still >= 0.5
    assert bench.grade(box, f"Sure! The box is [{x1}, {y1}, {x2 + 1}, {y2}].").score == 1.0
    assert bench.grade(box, f"[{x2}, {y2}, {x2 + 20}, {y2 + 20}]").score == 0.0  # no overlap
    assert bench.grade(box, "somewhere on the left").note == "unparsable"

    point = _first(items, "point")
    mask = np.asarray(Image.open(point.meta["mask"])) > 0
    ys, xs = np.nonzero(mask)
    outside = np.argwhere(~mask)[0]
    assert bench.grade(point, f"It is at ({xs[0]}, {ys[0]}).").score == 1.0
    assert bench.grade(point, f"({outside[1]}, {outside[0]})").score == 0.0
    assert bench.grade(point, "(12)").note == "unparsable"

    closer = _first(items, "closer")
    right = closer.choices["AB".index(closer.answer)]
    wrong = closer.choices[1 - "AB".index(closer.answer)]
    assert bench.grade(closer, f"I think the {right.upper()} is.").score == 1.0
    assert bench.grade(closer, f"The {wrong}.").score == 0.0
    assert bench.grade(closer, f"Either the {right} or the {wrong}.").note == "unparsable"

    left_right = _first(items, "left_right")
    truth = "left" if left_right.answer == "A" else "right"
    assert bench.grade(left_right, f"To the {truth}, clearly.").score == 1.0
    assert bench.grade(left_right, "above").note == "unparsable"

    count = _first(items, "count")
    words = "zero one two three four five six seven eight nine ten".split()
    assert bench.grade(count, f"There are {words[count.answer]} of them.").score == 1.0
    assert bench.grade(count, f"{count.answer + 1}").score == 0.0

    plan = _first(items, "plan")
    half = bench.grade(plan, "Move the gripper up and away.")
    assert half.score == 0.0 and 0.0 < half.parsed["f1"] < 1.0
    blank = bench.grade(plan, "   ")
    assert blank.note == "unparsable" and blank.parsed["f1"] == 0.0


def test_token_f1_hand_computed():
    assert token_f1("the red cube", "red cube") == 1.0
    # pred [red, ball], gold [red, cube, now]: 1 common -> p = 1/2, r = 1/3, F1 = 2 * (1/6) / (5/6) = 0.4
    assert token_f1("Red ball!", "red cube now") == pytest.approx(0.4)
    assert token_f1("", "x") == 0.0
    graded = [Graded("a", {"answer": "x", "exact_match": 0.0, "f1": 0.4}, 0.0), Graded("b", "A", 1.0),
              Graded("c", {"answer": "y", "exact_match": 1.0, "f1": 1.0}, 1.0), Graded("d", {"answer": "", "exact_match": 0.0, "f1": 0.0}, 0.0, "unparsable")]
    assert open_answer_f1(graded) == pytest.approx(1.4 / 3)  # a choice item is not an open answer
    assert open_answer_f1(graded[1:2]) is None


def test_task_benchmarks_split_the_questions(heldout):
    total = GemSynthQA(heldout).items()
    parts = [
        GemSynthGrounding(heldout).items(),
        GemSynthSpatial(heldout).items(),
        GemSynthPlanning(heldout).items(),
    ]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in total)
    assert {i.kind for i in parts[0]} == {"box", "point"}
    assert {i.kind for i in parts[2]} <= {"open"}
    assert set(GEM_SYNTH_BENCHMARKS) == {
        "gem-synth-qa",
        "gem-synth-grounding",
        "gem-synth-spatial",
        "gem-synth-planning",
        "gem-synth-depth",
    }


def test_missing_or_malformed_heldout_is_one_line_input_error(tmp_path, heldout):
    with pytest.raises(InputError, match="heldout.json does not exist"):
        GemSynthQA(tmp_path / "nowhere").items()
    broken = tmp_path / "broken"
    write_heldout(DataConfig(), broken, 1)
    with open(broken / "items.jsonl", "a") as f:
        f.write('{"id": "x", "kind": "box"}\n')
    lines = len((broken / "items.jsonl").read_text().splitlines())
    with pytest.raises(InputError, match=f"items.jsonl line {lines} is malformed"):
        GemSynthQA(broken).items()


def _answers(model, bench, items, batch_size=8):
    texts = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        samples = [
            {
                "images": [Image.open(p) for p in i.images],
                "conversations": [{"from": "human", "value": bench.prompt(i)}],
            }
            for i in chunk
        ]
        texts += model.generate(
            batch_to(model.processor(samples, padding_side="left"), "cpu"), max_new_tokens=12
        )
    return texts


def test_tiny_model_scored_on_gem_synth(heldout):
    corpus = [r["question"] + " " + r["answer"] for r in _records(heldout)]
    model = GemModel.build(tiny_config(), corpus=corpus, seed=0)

    qa = GemSynthQA(heldout)
    items = qa.items()
    graded = [qa.grade(i, t) for i, t in zip(items, _answers(model, qa, items))]
    results = aggregate(qa, items, graded)
    kinds = Counter(r["kind"] for r in _records(heldout))
    assert results["counts"]["items"] == len(_records(heldout))
    assert results["counts"]["per_category"] == dict(sorted(kinds.items()))
    assert 0.0 <= results["overall"] <= 1.0 and all(0.0 <= v <= 1.0 for v in results["categories"].values())
    # a random-init model mostly babbles: whatever it cannot answer is counted, never dropped
    assert results["counts"]["unparsable"] == sum(g.note == "unparsable" for g in graded)
    assert results["counts"]["undecodable"] == 0
    f1 = open_answer_f1(graded)
    open_items = [i for i in items if i.kind == "open"]
    assert open_items and 0.0 <= f1 <= 1.0  # every open answer is in the mean, unparsable ones as 0
    assert all(g.parsed is not None for i, g in zip(items, graded) if i.kind == "open")

    depth = GemSynthDepth(heldout)
    depth_items = depth.items()
    assert len(depth_items) == len(list(heldout.glob("images/*.png")))
    depth_graded = depth.grade_batch(model, depth_items, batch_size=8, steps=2)
    summary = depth_summary(depth_graded)
    assert summary["scored"] == len(depth_items)
    assert all(math.isfinite(summary[k]) for k in ("absrel", "delta1", "rmse"))
    assert aggregate(depth, depth_items, depth_graded)["overall"] == pytest.approx(summary["delta1"])
