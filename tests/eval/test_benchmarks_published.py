"""Each built-in benchmark reads small fixtures written in its published layout (file names, field names, types)
and grades model text by its reference scorer's rule."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gem_stages.errors import InputError
from gem_stages.eval.benchmark import aggregate
from gem_stages.eval.benchmarks import PUBLISHED
from tests.data.test_data_video import write_video


def png(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def score(bench, answers: dict[str, str]):
    """Grade every item with the given model text (by id; missing ids answer nothing) and aggregate."""
    items = bench.items()
    graded = [bench.grade(i, answers.get(i.id, "")) for i in items]
    return items, graded, aggregate(bench, items, graded)


# --- VSI-Bench: test.jsonl + <dataset>/<scene_name>.mp4 ---------------------------------------------------------

def vsi_fixture(root: Path) -> Path:
    write_video(root / "arkitscenes" / "41069025.mp4", 5)
    write_video(root / "scannet" / "scene0011_00.mp4", 5)
    (root / "scannetpp").mkdir()
    (root / "scannetpp" / "broken.mp4").write_bytes(b"not a video")
    records = [
        {"id": 0, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_counting",
         "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "4"},
        {"id": 1, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_size_estimation",
         "question": "What is the length of the longest dimension of the table, measured in centimeters?",
         "options": None, "ground_truth": "150"},
        {"id": 2, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_rel_distance",
         "question": "Which of these objects is closest to the sofa?",
         "options": ["A. lamp", "B. table", "C. bed", "D. door"], "ground_truth": "B"},
        {"id": 3, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_rel_direction_easy",
         "question": "Is the door to the left or right?", "options": ["A. left", "B. right"], "ground_truth": "A"},
        {"id": 4, "dataset": "scannet", "scene_name": "scene0011_00",
         "question_type": "object_rel_direction_hard", "question": "Front-left or back-right?",
         "options": ["A. front-left", "B. back-right"], "ground_truth": "B"},
        {"id": 5, "dataset": "scannetpp", "scene_name": "broken", "question_type": "room_size_estimation",
         "question": "What is the size of this room (in square meters)?", "options": None, "ground_truth": "20.0"},
    ]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_vsi_bench_reads_its_layout_and_scores_by_type(tmp_path):
    bench = PUBLISHED["vsi-bench"](vsi_fixture(tmp_path))
    items, graded, results = score(bench, {
        "0": "There are four chairs.",  # words for counts: 4 -> MRA 1
        "1": "about 1.2 m",             # converted to 120 cm: 20% off -> MRA 0.6
        "2": "The answer is B.",
        "3": "B",                       # wrong
        "4": "(B)",
    })
    by_id = {i.id: i for i in items}
    assert by_id["2"].kind == "choice" and by_id["2"].choices == ["lamp", "table", "bed", "door"]
    assert by_id["2"].video == str(tmp_path / "scannet" / "scene0011_00.mp4")
    assert by_id["1"].answer == 150.0 and by_id["1"].meta["unit"] == "cm"
    assert by_id["5"].error and by_id["5"].meta["unit"] == "m2"
    assert [g.score for g in graded] == pytest.approx([1.0, 0.6, 1.0, 0.0, 1.0, 0.0])
    assert graded[5].note.startswith("undecodable")
    # types: counting 1, size 0.6, rel_distance 1, rel_direction (easy 0, hard 1 -> 0.5), room size 0
    assert results["overall"] == pytest.approx((1 + 0.6 + 1 + 0.5 + 0) / 5)
    assert results["counts"]["undecodable"] == 1
    assert "These are frames of a video." in bench.prompt(by_id["2"]) and "B. table" in bench.prompt(by_id["2"])


def test_vsi_bench_bad_input(tmp_path):
    with pytest.raises(InputError, match="not found"):
        PUBLISHED["vsi-bench"](tmp_path / "nowhere").items()
    vsi_fixture(tmp_path)
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": 0, "dataset": "scannet", "scene_name": "missing",
                                                     "question_type": "object_counting", "question": "?",
                                                     "ground_truth": "3"}) + "\n")
    with pytest.raises(InputError, match=r"test.jsonl record 0: .*missing.mp4 not found"):
        PUBLISHED["vsi-bench"](tmp_path).items()
    (tmp_path / "test.jsonl").write_text('{"id": 0, "dataset": "scannet"}\n')
    with pytest.raises(InputError, match="record 0: missing field 'question_type'"):
        PUBLISHED["vsi-bench"](tmp_path).items()


# --- CV-Bench: test_2d.parquet / test_3d.parquet ----------------------------------------------------------------

def cv_fixture(root: Path) -> Path:
    def rows(kind, tasks, answers):
        return pa.table({
            "idx": list(range(len(tasks))),
            "type": [kind] * len(tasks),
            "task": tasks,
            "image": [{"bytes": png(), "path": f"img/{kind}/{i}.png"} for i in range(len(tasks))],
            "question": [f"{t} question?" for t in tasks],
            "choices": [["1", "2", "3"] for _ in tasks],
            "answer": answers,
            "source": ["ADE20K", "COCO"][: len(tasks)] if kind == "2D" else ["Omni3D"] * len(tasks),
        })
    pq.write_table(rows("2D", ["Count", "Relation"], ["(A)", "(C)"]), root / "test_2d.parquet")
    pq.write_table(rows("3D", ["Depth", "Distance", "Depth"], ["(B)", "(B)", "(A)"]), root / "test_3d.parquet")
    return root


def test_cv_bench_reads_both_parquets(tmp_path):
    bench = PUBLISHED["cv-bench"](cv_fixture(tmp_path))
    items, graded, results = score(bench, {
        "test_2d/0": "(A)", "test_2d/1": "The answer is B", "test_3d/0": "B. 2", "test_3d/1": "hmm", "test_3d/2": "A"})
    assert [i.answer for i in items] == ["A", "C", "B", "B", "A"]
    assert items[0].images == [png()] and items[0].error is None  # raw bytes, as the contract says
    assert [g.score for g in graded] == [1, 0, 1, 0, 1]
    assert graded[3].note == "unparsable"
    assert results["categories"] == {"Count": 1.0, "Depth": 1.0, "Distance": 0.0, "Relation": 0.0}
    # combined accuracy: 2D = mean(ADE20K 1/1, COCO 0/1) = 0.5, 3D = Omni3D 2/3; overall = mean(0.5, 2/3), not the
    # item mean 3/5
    assert results["overall"] == pytest.approx((0.5 + 2 / 3) / 2) and results["counts"]["unparsable"] == 1
    assert results["metric"] == "combined accuracy"
    assert bench.prompt(items[0]).splitlines()[1:4] == ["Options:", "A. 1", "B. 2"]


def test_cv_bench_bad_input(tmp_path):
    cv_fixture(tmp_path)
    (tmp_path / "test_3d.parquet").unlink()
    with pytest.raises(InputError, match="test_3d.parquet: not found"):
        PUBLISHED["cv-bench"](tmp_path).items()
    (tmp_path / "test_3d.parquet").write_bytes(b"garbage")
    with pytest.raises(InputError, match="test_3d.parquet: not a readable parquet file"):
        PUBLISHED["cv-bench"](tmp_path).items()
    pq.write_table(pa.table({"idx": [0], "task": ["Depth"], "image": [{"bytes": png(), "path": "x"}],
                             "question": ["?"], "choices": [["a", "b"]], "answer": ["(E)"]}),
                   tmp_path / "test_3d.parquet")
    with pytest.raises(InputError, match=r"test_3d.parquet row 0: answer '\(E\)' is not one of the 2 options"):
        PUBLISHED["cv-bench"](tmp_path).items()


# --- MMSI-Bench: a parquet with images as a list of bytes -----------------------------------------------------

def test_mmsi_bench_multi_image_rows(tmp_path):
    question = "Where is the lamp relative to the bed?\nOptions: A: left, B: right, C: above, D: below"
    pq.write_table(pa.table({
        "id": [10, 11, 12],
        "images": [[png(), png((0, 0, 255))], [png()], [b"\x89PNG broken"]],
        "question_type": ["Positional Relationship (Obj.-Obj.)", "Attribute (Measurement)", "Motion (Camera)"],
        "question": [question] * 3,
        "answer": ["A", "D", "B"],
        "thought": [""] * 3,
    }), tmp_path / "MMSI_Bench.parquet")
    bench = PUBLISHED["mmsi-bench"](tmp_path)
    items, graded, results = score(bench, {"10": "Answer: a", "11": "I think the answer is (C)", "12": "B"})
    assert [len(i.images) for i in items] == [2, 1, 1]
    assert items[2].error is not None
    assert [g.score for g in graded] == [1, 0, 0]
    assert results["counts"]["undecodable"] == 1 and results["overall"] == pytest.approx(1 / 3)
    assert bench.prompt(items[0]).startswith(question) and bench.prompt(items[0]).endswith("directly.")


# --- EmbSpatial-Bench: a JSON array with base64 images ---------------------------------------------------------

def test_embspatial_bench_base64_and_index_answers(tmp_path):
    records = [
        {"question_id": "mp3d_0", "image": base64.b64encode(png()).decode(), "question": "What is left of the bed?",
         "answer_options": ["lamp", "chair", "tv", "door"], "answer": 2, "relation": "left",
         "data_source": "mp3d", "objects": []},
        {"question_id": "ai2thor_1", "image": base64.b64encode(png()).decode(), "question": "What is above?",
         "answer_options": ["shelf", "cup"], "answer": 0, "relation": "above", "data_source": "ai2thor"},
        {"question_id": "sc_2", "image": "%%%not base64%%%", "question": "?",
         "answer_options": ["a", "b"], "answer": 1, "relation": "above", "data_source": "scannet"},
    ]
    (tmp_path / "embspatial_bench.json").write_text(json.dumps(records))
    bench = PUBLISHED["embspatial-bench"](tmp_path)
    items, graded, results = score(bench, {"mp3d_0": "C. tv", "ai2thor_1": "cup", "sc_2": "B"})
    assert [i.answer for i in items] == ["C", "A", "B"]
    assert items[0].images[0] == png() and "not base64" in items[2].error
    assert [g.score for g in graded] == [1, 0, 0]
    assert graded[1].parsed == "B"  # an option's text is read as its letter
    assert results["categories"] == {"above": 0.0, "left": 1.0}
    records[1]["answer"] = 5
    (tmp_path / "embspatial_bench.json").write_text(json.dumps(records))
    with pytest.raises(InputError, match="record 1: answer 5 is not an index into its 2 options"):
        bench.items()


# --- RoboSpatial-Home: annotations.json + images/ --------------------------------------------------------------

def test_robospatial_home_yesno_and_pointing(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    polygon = "[(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]"
    records = [
        {"category": "configuration", "question": "Is the mug left of the plate?", "answer": "Yes",
         "img": "images/a.png", "depth_image": None, "mask": None},
        {"category": "configuration", "question": "Is the mug on the plate?", "answer": "no", "img": "images/a.png"},
        {"category": "compatibility", "question": "Can the box fit in the drawer?", "answer": "yes",
         "img": "images/a.png"},
        {"category": "context", "question": "Point to free space left of the mug.", "answer": polygon,
         "img": "images/a.png"},
        {"category": "context", "question": "Point to free space right of the mug.", "answer": polygon,
         "img": "images/a.png"},
    ]
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    bench = PUBLISHED["robospatial-home"](tmp_path)
    items, graded, results = score(bench, {
        "0": "Yes.", "1": "Yes, it is", "2": "I think yes", "3": "[(0.4, 0.4), (0.9, 0.9)]", "4": "(0.7, 0.3)"})
    assert [i.kind for i in items] == ["yesno", "yesno", "yesno", "point", "point"]
    # yes/no by the reply's start, and only the first point counts, as the reference scorer
    assert [g.score for g in graded] == [1, 0, 0, 1, 0] and graded[2].note == "unparsable"
    # total = mean of the three categories (configuration 0.5, compatibility 0, context 0.5), not of items (0.4)
    assert results["overall"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    records[4]["answer"] = "[(0.1, 0.1)]"
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    with pytest.raises(InputError, match="record 4: answer .* neither yes/no nor a polygon"):
        bench.items()


# --- Where2Place: point_questions.jsonl + images/ + masks/NN.jpg -----------------------------------------------

def test_where2place_points_in_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :20] = 255  # the left half is free space
    for n in range(2):
        Image.new("RGB", (40, 20)).save(tmp_path / "images" / f"{n:02d}.jpg")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{n:02d}.png", format="PNG")
        (tmp_path / "masks" / f"{n:02d}.png").rename(tmp_path / "masks" / f"{n:02d}.jpg")  # lossless for the test
    lines = [{"question_id": n, "image": f"{n:02d}.jpg", "category": c,
              "text": "Locate free space left of the cup. Your answer should be a list of tuples [(x1, y1), ...]."}
             for n, c in ((0, "seen"), (1, "unseen"))]
    (tmp_path / "point_questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench = PUBLISHED["where2place"](tmp_path)
    items, graded, results = score(bench, {"0": "[(0.1, 0.5), (0.3, 0.5), (0.9, 0.5), (0.2, 0.2)]",
                                           "1": "[(30, 10)]"})  # pixels, with the image size 40 x 20
    assert items[0].meta["image_size"] == (40, 20)
    assert [g.score for g in graded] == [0.75, 0.0]
    assert results["categories"] == {"seen": 0.75, "unseen": 0.0}
    (tmp_path / "masks" / "01.jpg").write_bytes(b"not a jpeg")  # present but undecodable: counted wrong
    items, graded, results = score(bench, {"1": "[(0.1, 0.5)]"})
    assert "mask 01.jpg" in items[1].error and results["counts"]["undecodable"] == 1
    (tmp_path / "masks" / "01.jpg").unlink()
    with pytest.raises(InputError, match="line 2: .*masks/01.jpg not found"):
        bench.items()


# --- RoboRefIt: final_dataset/testA/roborefit_testA.json with pixel boxes ------------------------------------

def test_roborefit_boxes_by_iou(tmp_path):
    root = tmp_path / "final_dataset"
    (root / "testA" / "image").mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "testA" / "image" / "0.png")
    records = [{"num": 0, "text": "the red cup", "rgb_path": "final_dataset/testA/image/0.png",
                "depth_path": "final_dataset/testA/depth/0.png", "mask_path": "m.png", "bbox": [10, 10, 50, 30],
                "class": "cup"},
               {"num": 1, "text": "the blue box", "rgb_path": "testA/image/0.png", "bbox": [0, 0, 100, 50]}]
    (root / "testA" / "roborefit_testA.json").write_text(json.dumps(records))
    bench = PUBLISHED["roborefit"](root)
    items, graded, results = score(bench, {"testA/0": "[0.1, 0.2, 0.5, 0.6]",
                                           "testA/1": "[0, 0, 50, 50]"})
    assert items[0].answer == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert [g.score for g in graded] == [1.0, 1.0]  # pixels with the size: [0,0,0.5,1] -> IoU 0.5 with the whole
    assert results["metric"] == "accuracy@IoU0.5" and results["categories"] == {"testA": 1.0}
    with pytest.raises(InputError, match="roborefit_testA.json"):
        PUBLISHED["roborefit"](tmp_path).items()


def test_every_published_benchmark_is_registered():
    assert set(PUBLISHED) == {"vsi-bench", "cv-bench", "mmsi-bench", "embspatial-bench", "robospatial-home",
                              "where2place", "roborefit"}
    assert all(cls.name == name for name, cls in PUBLISHED.items())


def test_a_published_benchmarks_media_path_outside_its_folder_is_refused(tmp_path):
    from gem_stages.eval.benchmarks.common import media

    (tmp_path / "bench").mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"x")
    assert media(tmp_path, "secret.mp4", "r0") == tmp_path / "secret.mp4"  # inside its own root: fine
    for escape in ("../secret.mp4", str(tmp_path / "secret.mp4")):
        with pytest.raises(InputError, match="leads outside the benchmark folder"):
            media(tmp_path / "bench", escape, "test.jsonl record 0")
