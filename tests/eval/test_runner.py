"""The evaluation runner on the real tiny GEM model: predictions and results files, undecodable items counted, shards
merging to exactly the single run's results, batching not changing answers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gem_models.config import tiny_config
from gem_models.gem import GemModel
from gem_stages.errors import InputError
from gem_stages.eval.benchmark import Benchmark, EvalItem, Graded
from gem_stages.eval.run import evaluate, merge_shards, select


class LetterBench(Benchmark):
    """Multiple choice over generated images; the model's first character is its letter (a deliberately plain rule:
    this tests the runner, not a parser). Item 3's image is a broken file."""

    name = "letters"

    def items(self):
        out = []
        for i in range(7):
            image = self.root / f"{i}.png"
            out.append(EvalItem(id=f"q{i}", kind="choice", question=f"Which colour is image {i}?", answer="A",
                                images=[str(image)], choices=["red", "green"], category="odd" if i % 2 else "even"))
        return out

    def prompt(self, item):
        return f"{item.question} A. {item.choices[0]} B. {item.choices[1]}"

    def grade(self, item, text):
        letter = text.strip()[:1].upper()
        if letter not in ("A", "B"):
            return Graded(item.id, None, 0.0, "unparsable")
        return Graded(item.id, letter, float(letter == item.answer))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("letters")
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (32 + 8 * i, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "3.png").write_bytes(b"not a png")
    return LetterBench(root)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return GemModel.build(tiny_config("qwen3_vl"), seed=0).eval()


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_and_results(model, bench, tmp_path):
    results = evaluate(model, bench, tmp_path, batch_size=4, max_new_tokens=4, settings={"checkpoint": "x"})
    rows = _rows(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(7)]
    assert set(rows[0]) == {"id", "category", "prompt", "text", "parsed", "answer", "score", "note"}
    broken = rows[3]
    assert broken["score"] == 0.0 and broken["note"].startswith("undecodable: image does not decode")
    assert broken["text"] == ""
    # the random-init model says something for every other item; each is graded by the benchmark's rule
    for r in rows[:3] + rows[4:]:
        assert r["score"] == (1.0 if r["text"].strip()[:1].upper() == "A" else 0.0)
        assert r["note"] in ("", "unparsable")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert results["counts"]["items"] == 7 and results["counts"]["undecodable"] == 1
    assert results["counts"]["per_category"] == {"even": 4, "odd": 3}
    assert results["overall"] == pytest.approx(sum(r["score"] for r in rows) / 7)
    assert results["settings"] == {"checkpoint": "x", "limit": None, "shards": 1, "batch_size": 4,
                                   "max_new_tokens": 4}


def test_batching_does_not_change_answers(model, bench, tmp_path):
    evaluate(model, bench, tmp_path / "one", batch_size=1, max_new_tokens=4)
    evaluate(model, bench, tmp_path / "four", batch_size=4, max_new_tokens=4)
    assert _rows(tmp_path / "one" / "predictions.jsonl") == _rows(tmp_path / "four" / "predictions.jsonl")


def test_shards_merge_to_the_single_run(model, bench, tmp_path):
    whole = evaluate(model, bench, tmp_path / "whole", batch_size=2, limit=6, max_new_tokens=4)
    for k in range(3):
        part = evaluate(model, bench, tmp_path / "sharded", batch_size=2, limit=6, shard=(k, 3), max_new_tokens=4)
        assert part["counts"]["items"] == 2  # items k, k+3
    merged = merge_shards(bench, tmp_path / "sharded", 3, limit=6)
    assert _rows(tmp_path / "sharded" / "predictions.jsonl") == _rows(tmp_path / "whole" / "predictions.jsonl")
    assert {k: v for k, v in merged.items() if k != "settings"} == {k: v for k, v in whole.items() if k != "settings"}
    assert merged["settings"]["shards"] == 3 and merged["settings"]["limit"] == 6
    assert not (tmp_path / "sharded" / "shards").exists()


def test_a_missing_shard_is_refused(model, bench, tmp_path):
    evaluate(model, bench, tmp_path, batch_size=4, limit=4, shard=(0, 2), max_new_tokens=2)
    with pytest.raises(InputError, match="shard 1 of 2 has no results"):
        merge_shards(bench, tmp_path, 2, limit=4)
    assert not (tmp_path / "results.json").exists()


def test_select_partitions_the_limited_items():
    items = [EvalItem(id=str(i), kind="open", question="", answer="") for i in range(10)]
    parts = [select(items, 7, (k, 3)) for k in range(3)]
    assert [[it.id for it in p] for p in parts] == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    with pytest.raises(InputError, match="shard 3 of 3 does not exist"):
        select(items, None, (3, 3))


class MixedBench(LetterBench):
    """LetterBench with every other item asking for depth instead, graded by its own grade_batch."""

    name = "mixed"
    calls: list

    def items(self):
        items = super().items()
        for it in items[::2]:
            it.kind = "depth"
        return items

    def grade_batch(self, model, items, sheet_path=None):
        self.calls.append(([it.id for it in items], sheet_path))
        return [Graded(it.id, None, 0.25) for it in items]


def test_depth_items_go_to_grade_batch_and_text_items_to_generate(model, bench, tmp_path):
    mixed = MixedBench(bench.root)
    mixed.calls = []
    results = evaluate(model, mixed, tmp_path, batch_size=4, max_new_tokens=2)
    # batches of 4: q0 and q2 ask for depth in the first, q4 and q6 in the second (one sheet: the first batch's);
    # q3's image is broken, so it is undecodable and shown to neither grade_batch nor generate
    assert mixed.calls == [(["q0", "q2"], tmp_path / "depth_sheet.png"), (["q4", "q6"], None)]
    rows = {r["id"]: r for r in _rows(tmp_path / "predictions.jsonl")}
    assert [rows[f"q{i}"]["score"] for i in (0, 2, 4, 6)] == [0.25] * 4
    assert [rows[f"q{i}"]["text"] for i in (0, 2, 4, 6)] == [""] * 4
    assert rows["q3"]["note"].startswith("undecodable")
    assert results["counts"]["items"] == 7


def test_depth_items_without_grade_batch_use_the_depth_quality_hook(model, bench, tmp_path, monkeypatch):
    seen = []

    def grade_depth_batch(model_, items, sheet_path=None):
        seen.append([it.id for it in items])
        return [Graded(it.id, None, 0.5) for it in items]

    class Plain(MixedBench):
        grade_batch = None

    from gem_stages.eval import depth_quality

    monkeypatch.setattr(depth_quality, "grade_depth_batch", grade_depth_batch)
    evaluate(model, Plain(bench.root), tmp_path, batch_size=8, max_new_tokens=2)
    assert seen == [["q0", "q2", "q4", "q6"]]
