"""The mapping adapter: any JSON benchmark by a benchmarks/NAME.yaml file, on differently shaped records."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gem_stages.errors import InputError
from gem_stages.eval.benchmark import aggregate
from gem_stages.eval.mapping import MappingBenchmark

REPO = Path(__file__).resolve().parents[2]


def write_mapping(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (0, 128, 0)).save(path)
    return path.name


def run(bench, answers):
    items = bench.items()
    graded = [bench.grade(i, answers.get(i.id, "")) for i in items]
    return items, graded, aggregate(bench, items, graded)


def test_json_array_with_choice_list_and_one_based_index(tmp_path):
    """Shape 1: a JSON array, nested fields, a list of images below image_root, choices as a list, the answer a
    1-based index, a category field."""
    image(tmp_path / "imgs" / "a.png")
    image(tmp_path / "imgs" / "b.png")
    records = [
        {"uid": "q1", "q": {"text": "Which is closer?"}, "pics": ["a.png", "b.png"], "opts": ["cup", "box"],
         "gt": 2, "kind": "distance"},
        {"uid": "q2", "q": {"text": "Which is taller?"}, "pics": ["a.png"], "opts": ["cup", "box", "lamp"],
         "gt": 3, "kind": "size"},
        {"uid": "q3", "q": {"text": "Which is left?"}, "pics": ["b.png"], "opts": ["cup", "box"], "gt": 1,
         "kind": "size"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="shape1", root=str(tmp_path), records="data.json", image_root="imgs",
        answer_format="index", index_base=1,
        fields={"id": "uid", "question": "q.text", "images": "pics", "choices": "opts", "answer": "gt",
                "category": "kind"}))
    items, graded, results = run(bench, {"q1": "B", "q2": "The answer is (A)", "q3": "no idea"})
    assert bench.name == "shape1" and bench.metric == "accuracy"
    assert [i.answer for i in items] == ["B", "C", "A"]
    assert items[0].images == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")]
    assert [g.score for g in graded] == [1, 0, 0] and graded[2].note == "unparsable"
    assert results["categories"] == {"distance": 1.0, "size": 0.0}
    assert bench.prompt(items[1]) == ("Which is taller?\nOptions:\nA. cup\nB. box\nC. lamp\n"
                                      "Answer with the option's letter from the given choices directly.")


def test_jsonl_with_choices_in_the_question_and_letter_answers(tmp_path):
    """Shape 2: JSONL, one image path as a string, the options written in the question, answers as "(b)"."""
    image(tmp_path / "x.jpg")
    question = "Where is the cup?\nA. on the table\nB. under the table\n(C) in the sink"
    lines = [{"question": question, "image": "x.jpg", "answer": "(b)"},
             {"question": question, "image": "x.jpg", "answer": "C"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="shape2", root=str(tmp_path), records="qa.jsonl", choices_in_question=True,
        fields={"question": "question", "images": "image", "answer": "answer"}))
    items, graded, results = run(bench, {"qa.jsonl#0": "B. under the table", "qa.jsonl#1": "in the sink"})
    assert items[0].choices == ["on the table", "under the table", "in the sink"]
    assert [i.answer for i in items] == ["B", "C"]
    assert [g.score for g in graded] == [1, 1]  # the second by its option's text
    assert bench.prompt(items[0]) == question + "\nAnswer with the option's letter from the given choices directly."
    assert results["categories"] == {"all": 1.0}


def test_one_record_per_folder_with_free_text_by_token_f1(tmp_path):
    """Shape 3: one record per folder (globbed), images beside each record, free-text answers scored by token F1,
    the folder name as the category."""
    for folder, answer in (("kitchen/001", "the red mug"), ("kitchen/002", "blue bowl"), ("garage/003", "a drill")):
        image(tmp_path / folder / "view.png")
        (tmp_path / folder / "item.json").write_text(json.dumps(
            {"prompt": "What is on the shelf?", "image": "view.png", "reply": answer}))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="shape3", root=str(tmp_path), records="*/*/item.json", answer_format="text",
        open_metric="token_f1", fields={"question": "prompt", "images": "image", "answer": "reply"}))
    items = bench.items()
    assert [i.id for i in items] == ["garage/003/item.json", "kitchen/001/item.json", "kitchen/002/item.json"]
    assert items[1].images == [str(tmp_path / "kitchen" / "001" / "view.png")]
    assert bench.metric == "token_f1" and items[0].kind == "open"
    graded = {i.id: bench.grade(i, t) for i, t in zip(items, ["A drill.", "red mug on the left", "   "])}
    assert graded["garage/003/item.json"].score == 1.0
    # "red mug on left" vs "red mug": P 2/4, R 2/2 -> 2/3
    assert graded["kitchen/001/item.json"].score == pytest.approx(2 / 3)
    assert graded["kitchen/002/item.json"].note == "unparsable"


def test_category_from_folder_and_exact_match(tmp_path):
    for folder in ("easy", "hard"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "qa.json").write_text(json.dumps([{"q": "Colour?", "a": "Red"}]))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="folders", root=str(tmp_path), records="*/qa.json", answer_format="text",
        category_from_folder=True, fields={"question": "q", "answer": "a"}))
    items, graded, results = run(bench, {"easy/qa.json#0": "red.", "hard/qa.json#0": "dark red"})
    assert bench.metric == "normalized_exact_match"
    assert results["categories"] == {"easy": 1.0, "hard": 0.0}


def test_number_answers_score_by_mra(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"q": "How far?", "a": 2.0}, {"q": "How many?", "a": "10"}]))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="num", root=str(tmp_path), records="d.json", answer_format="number",
        fields={"question": "q", "answer": "a"}))
    items, graded, _ = run(bench, {"d.json#0": "about 2.2 meters", "d.json#1": "ten"})
    assert bench.metric == "MRA" and [i.answer for i in items] == [2.0, 10.0]
    assert [g.score for g in graded] == pytest.approx([0.8, 1.0])  # 10% off: fails 1-θ = 0.10 and 0.05


def test_bad_mapping_files(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: not found"):
        MappingBenchmark.from_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        MappingBenchmark.from_file(tmp_path / "bad.yaml")
    base = {"name": "b", "root": str(tmp_path), "records": "d.json", "fields": {"question": "q", "answer": "a"}}
    with pytest.raises(InputError, match=r"m.yaml: unknown key 'answer_fromat': did you mean 'answer_format'"):
        MappingBenchmark.from_file(write_mapping(tmp_path / "m.yaml", **base, answer_fromat="letter"))
    with pytest.raises(InputError, match=r"m.yaml: missing key 'fields.answer'"):
        MappingBenchmark.from_file(write_mapping(tmp_path / "m.yaml", **{**base, "fields": {"question": "q"}}))
    with pytest.raises(InputError, match=r"m.yaml: answer_format='word' is not allowed"):
        MappingBenchmark.from_file(write_mapping(tmp_path / "m.yaml", **base, answer_format="word"))


def test_bad_records_name_the_file_and_record(tmp_path):
    base = {"name": "b", "root": str(tmp_path), "records": "d.json",
            "fields": {"question": "q", "answer": "a", "choices": "c", "images": "img"}}
    bench = MappingBenchmark.from_file(write_mapping(tmp_path / "m.yaml", **base))
    with pytest.raises(InputError, match="d.json: not found"):
        bench.items()
    image(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    good = {"q": "?", "a": "A", "c": ["x", "y"], "img": "ok.png"}

    def items_of(*records):
        (tmp_path / "d.json").write_text(json.dumps(list(records)))
        return bench.items()

    with pytest.raises(InputError, match=r"d.json record 1: missing field 'q' \(the mapping's fields.question\)"):
        items_of(good, {"a": "A", "c": ["x"], "img": "ok.png"})
    with pytest.raises(InputError, match=r"d.json record 0: field 'c' must be a non-empty list"):
        items_of({**good, "c": "x, y"})
    with pytest.raises(InputError, match=r"d.json record 0: answer 'C' is not a letter A to B"):
        items_of({**good, "a": "C"})
    with pytest.raises(InputError, match=r"d.json record 0: image .*missing.png not found"):
        items_of({**good, "img": "missing.png"})
    (tmp_path / "d.json").write_text("[{]")
    with pytest.raises(InputError, match="d.json: not valid JSON"):
        bench.items()
    # an image that does not decode is not a setup error: the item counts wrong and is counted
    items = items_of(good, {**good, "img": "bad.png"})
    graded = [bench.grade(i, "A") for i in items]
    assert items[1].error and [g.score for g in graded] == [1, 0]
    assert aggregate(bench, items, graded)["counts"]["undecodable"] == 1


def test_example_mapping_file_is_valid():
    bench = MappingBenchmark.from_file(REPO / "benchmarks" / "example-spatial-qa.yaml")
    assert bench.name == "example-spatial-qa" and bench.metric == "accuracy"



@pytest.mark.parametrize("escape", ["../secret.png", "ABSOLUTE", "link/secret.png"])
def test_an_image_path_outside_the_benchmark_folder_is_refused(tmp_path, escape):
    """A record may not make the evaluation read files outside its benchmark folder: ../, an absolute path
    elsewhere, or a symlink out."""
    root = tmp_path / "bench"
    root.mkdir()
    image(tmp_path / "secret.png")
    (root / "link").symlink_to(tmp_path)
    path = str(tmp_path / "secret.png") if escape == "ABSOLUTE" else escape
    (root / "data.json").write_text(json.dumps([{"uid": "q1", "q": "Is it red?", "pic": path, "gt": "yes"}]))
    bench = MappingBenchmark.from_file(write_mapping(
        tmp_path / "m.yaml", name="escape", root=str(root), records="data.json",
        fields={"id": "uid", "question": "q", "images": "pic", "answer": "gt"}))
    with pytest.raises(InputError, match=r"leads outside the benchmark folder .*keep the benchmark's files inside"):
        bench.items()
