"""Every gem-synth answer is checked against the scene's id buffer and the depth written to disk."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from gem_stages.data.config import DataConfig
from gem_stages.data.depth_png import load_depth_m
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.synth_dataset import build_scene
from gem_stages.data.synth_questions import DEPTH_MARGIN_M, plan_steps
from gem_stages.data.synth_scene import PICKABLE, min_visible_pixels

MM = 0.001  # depth on disk is rounded to the millimetre


@pytest.fixture(scope="module")
def scenes(synth_cfg, synth_samples):
    return {i: build_scene(synth_cfg, i) for i in sorted({s["scene"] for s in synth_samples})}


def _depth(synth_dir, image_path):
    return load_depth_m(synth_dir / "depth" / image_path.split("/")[-1])


def _mean_depth(depth, ids, index):
    return float(depth[ids == index].astype(np.float64).mean())


def test_annotation_records_have_the_gem_format(synth_samples, synth_cfg):
    assert len(synth_samples) == synth_cfg.num_scenes * synth_cfg.questions_per_scene
    for s in synth_samples:
        images = [s["image"]] if isinstance(s["image"], str) else s["image"]
        human, gpt = s["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n" * len(images))
        assert human["value"].count("<image>") == len(images)
        assert s["task"] in ("grounding", "spatial", "planning")
        assert re.fullmatch(r"synth-\d{6}-\d", s["id"])
        assert all(re.fullmatch(r"images/\d{6}(_1)?\.png", p) for p in images)
    assert len({s["id"] for s in synth_samples}) == len(synth_samples)
    assert {s["task"] for s in synth_samples} == {"grounding", "spatial", "planning"}
    assert any(isinstance(s["image"], list) and len(s["image"]) == 2 for s in synth_samples)


def test_files_on_disk_are_the_renders(synth_dir, scenes):
    for scene in scenes.values():
        for stem, result in zip(scene.stems, scene.renders):
            assert (np.asarray(Image.open(synth_dir / "images" / f"{stem}.png")) == result.rgb).all()
            back = load_depth_m(synth_dir / "depth" / f"{stem}.png")
            assert np.abs(back - result.depth).max() <= 0.0005 + 1e-6


def test_every_answer_is_correct_against_the_buffers(synth_dir, synth_samples, scenes, synth_cfg):
    checked = _check_answers(synth_dir, synth_samples, scenes, synth_cfg)
    assert checked == {
        "box",
        "point",
        "closer",
        "left_right",
        "count",
        "depth_order",
        "two_view",
        "plan",
        "next_step",
    }


def test_answers_stay_correct_for_other_seeds_sizes_and_crowding(tmp_path):
    cfg = DataConfig(
        seed=11,
        num_scenes=25,
        image_height=96,
        image_width=128,
        objects_min=2,
        objects_max=8,
        two_view_fraction=0.5,
        questions_per_scene=9,
        num_episodes=0,
    )
    prepare_dataset(cfg, tmp_path / "d")
    samples = [json.loads(line) for line in (tmp_path / "d" / "annotations.jsonl").read_text().splitlines()]
    scenes = {i: build_scene(cfg, i) for i in sorted({s["scene"] for s in samples})}
    assert len(_check_answers(tmp_path / "d", samples, scenes, cfg)) == 9


def _check_answers(synth_dir, synth_samples, scenes, synth_cfg) -> set[str]:
    h, w = synth_cfg.image_height, synth_cfg.image_width
    checked = set()
    for s in synth_samples:
        scene = scenes[s["scene"]]
        index = {o.name: i for i, o in enumerate(scene.objects)}
        ids = scene.renders[0].ids
        images = [s["image"]] if isinstance(s["image"], str) else s["image"]
        depth = _depth(synth_dir, images[0])
        question, answer = s["conversations"][0]["value"], s["conversations"][1]["value"]
        kind = s["kind"]
        checked.add(kind)

        def visible(name, view=0, scene=scene, index=index):
            return (scene.renders[view].ids == index[name]).sum() >= min_visible_pixels(h, w)

        if kind == "box":
            name = re.search(r"(?:box of|Locate) the (.+?) (?:as|in the image)", question).group(1)
            rows, cols = np.nonzero(ids == index[name])
            assert answer == f"[{cols.min()}, {rows.min()}, {cols.max() + 1}, {rows.max() + 1}]"
        elif kind == "point":
            name = re.search(r"(?:Point to|Where is) the (.+?)[.?]", question).group(1)
            x, y = map(int, re.fullmatch(r"\((\d+), (\d+)\)", answer).groups())
            assert ids[y, x] == index[name]
        elif kind == "closer":
            a, b = re.search(r"camera: the (.+) or the (.+)\?", question).groups()
            da, db = _mean_depth(depth, ids, index[a]), _mean_depth(depth, ids, index[b])
            assert abs(da - db) >= DEPTH_MARGIN_M - MM
            assert answer == f"The {a if da < db else b}."
        elif kind == "left_right":
            a, b = re.search(r"is the (.+) to the left or to the right of the (.+)\?", question).groups()
            ca = np.nonzero(ids == index[a])[1].mean()
            cb = np.nonzero(ids == index[b])[1].mean()
            assert abs(ca - cb) >= 0.06 * w - 1e-9
            assert answer == ("Left." if ca < cb else "Right.")
        elif kind == "count":
            assert all(visible(o.name) for o in scene.objects)  # nothing hidden: the count is knowable
            colour = re.search(r"How many (\w+) objects", question)
            shape = re.search(r"How many (\w+)s are", question)
            if colour:
                n = sum(o.colour == colour.group(1) for o in scene.objects)
            else:
                n = sum(o.shape == shape.group(1) for o in scene.objects)
            assert answer == str(n)
        elif kind == "depth_order":
            names = re.search(r"Order the (.+), the (.+) and the (.+) from nearest", question).groups()
            order = sorted(names, key=lambda n: _mean_depth(depth, ids, index[n]))
            assert answer == ", ".join(order)
            d = [_mean_depth(depth, ids, index[n]) for n in order]
            assert d[1] - d[0] >= DEPTH_MARGIN_M - MM and d[2] - d[1] >= DEPTH_MARGIN_M - MM
        elif kind == "two_view":
            assert len(images) == 2 and question.count("<image>") == 2
            name = re.search(r"In which image is the (.+) closer", question).group(1)
            second = _depth(synth_dir, images[1])
            d0 = _mean_depth(depth, ids, index[name])
            d1 = _mean_depth(second, scene.renders[1].ids, index[name])
            assert visible(name, 0) and visible(name, 1)
            assert answer == ("The first image." if d0 < d1 else "The second image.")
        elif kind in ("plan", "next_step"):
            item, target = re.search(r"(?:To put|is putting) the (.+) on the (.+?)[,.]", question).groups()
            assert scene.objects[index[item]].shape in PICKABLE
            assert scene.objects[index[target]].shape in ("plate", "cube") and item != target
            assert visible(item) and visible(target)
            steps = plan_steps(item, target)
            if kind == "plan":
                assert answer == "\n".join(f"{k + 1}. {step}" for k, step in enumerate(steps))
            else:
                history = re.search(r"Done so far: (.*) What is the next step\?", question).group(1)
                done = 0 if history == "Nothing yet." else sum(step in history for step in steps)
                assert answer == steps[done]
        else:
            pytest.fail(f"unknown kind {kind}")
    return checked
