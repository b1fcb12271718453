"""GEM-format mixtures: each kind of record loads to the expected pixels and depth, %NN and weights list the expected
samples, a 10k-record set indexes to a memory-mapped offsets file, and every bad record meets its data.on_error."""

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from gem_stages.data.config import AnnotationSet, DataConfig
from gem_stages.data.depth_png import save_depth_mm
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import GemSamples, text_corpus
from gem_stages.errors import InputError

W, H = 32, 24


def pixels(k: int) -> np.ndarray:
    """Image k: a constant colour that names it."""
    return np.full((H, W, 3), (k * 10 % 250, 100, 200 - k), np.uint8)


def write_video(path: Path, n: int, shade: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10, options={"qscale": "1"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), shade, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def turns(tags: str, i: int) -> list[dict]:
    return [{"from": "human", "value": f"{tags}question {i}"}, {"from": "gpt", "value": f"answer {i}"}]


def make_root(root: Path, images: int = 12) -> Path:
    """images/0..N-1.png (pixels(k)), depth for the even ones only (k/10 + 0.5 m), clips/c.mp4 (5 frames of grey 128)."""
    (root / "images").mkdir(parents=True)
    (root / "dr" / "depth").mkdir(parents=True)
    (root / "clips").mkdir()
    for k in range(images):
        Image.fromarray(pixels(k)).save(root / "images" / f"{k}.png")
        if k % 2 == 0:
            save_depth_mm(root / "dr" / "depth" / f"{k}.png", np.full((H, W), k / 10 + 0.5, np.float32))
    write_video(root / "clips" / "c.mp4", 5, 128)
    return root


def write_set(root: Path, name: str, samples: list[dict], **kw) -> AnnotationSet:
    path = root / f"{name.split('%')[0]}.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return AnnotationSet(name=name, annotations=str(path), data_path=str(root), depth_root=str(root / "dr"), **kw)


KINDS = [  # one record of each kind the GEM format has
    {"id": "single", "image": "images/2.png", "conversations": turns("<image>\n", 0)},
    {"id": "list", "image": ["images/4.png", "images/3.png"], "conversations": turns("<image><image>\n", 1)},
    {"id": "video", "video": "clips/c.mp4", "conversations": turns("<video>\n", 2)},
    {"id": "frames", "video": [f"images/{k}.png" for k in (6, 7, 8)], "conversations": turns("<video>\n", 3)},
    {"id": "no-depth", "image": "images/5.png", "conversations": turns("<image>\n", 4)},
    {"id": "text", "conversations": turns("", 5)},
]


def test_each_record_kind_loads_to_the_expected_pixels_and_depth(tmp_path):
    root = make_root(tmp_path / "u")
    manifest = prepare_dataset(DataConfig(source="files", files=[write_set(root, "kinds", KINDS)]), tmp_path / "o")
    (entry,) = manifest["annotation_sets"]
    # distinct paths: 6 images and one video; depth for the even images 2, 4, 6, 8
    assert (entry["images"], entry["images_with_depth"], entry["images_without_depth"]) == (8, 4, 3)
    samples = {s["id"]: s for s in GemSamples(tmp_path / "o")}

    def check(sample, ks, depth_ks):
        assert [np.asarray(im).tolist() for im in sample["images"]] == [pixels(k).tolist() for k in ks]
        for d, k in zip(sample["depths"], depth_ks):
            assert (d is None) if k is None else (d.shape == (H, W) and np.allclose(d, k / 10 + 0.5))

    check(samples["single"], [2], [2])
    check(samples["list"], [4, 3], [4, None])
    check(samples["frames"], [6, 7, 8], [6, None, 8])
    check(samples["no-depth"], [5], [None])
    video = samples["video"]
    assert len(video["images"]) == 5 and video["depths"] == [None] * 5
    assert all(abs(np.asarray(im, np.float32).mean() - 128) < 3 for im in video["images"])
    assert video["conversations"][0]["value"] == "<image>" * 5 + "\nquestion 2"
    assert samples["frames"]["conversations"][0]["value"] == "<image>" * 3 + "\nquestion 3"
    assert samples["text"]["images"] == [] and samples["text"]["depths"] == []


def _numbered(n: int, image: bool = True) -> list[dict]:
    return [{"id": f"s{i}", **({"image": f"images/{i % 12}.png"} if image else {}),
             "conversations": turns("<image>\n" if image else "", i)} for i in range(n)]


def test_rates_and_weights_make_the_mixture(tmp_path):
    root = make_root(tmp_path / "u")
    sets = [write_set(root, "a", _numbered(10)),
            write_set(root, "b%50", _numbered(20), weight=2.0),
            write_set(root, "c", _numbered(8), weight=0.5),
            write_set(root, "d", _numbered(4), weight=1.5)]
    manifest = prepare_dataset(DataConfig(source="files", files=sets, seed=3), tmp_path / "o")
    by_name = {s["name"]: s for s in manifest["annotation_sets"]}
    assert {n: (s["lines"], s["selected"], s["samples"]) for n, s in by_name.items()} == {
        "a": (10, 10, 10), "b": (20, 10, 20), "c": (8, 8, 4), "d": (4, 4, 6)}
    assert manifest["counts"]["samples"] == 40 and manifest["counts"]["records"] == 32
    ids = [GemSamples(tmp_path / "o").record(i)[0]["id"] for i in range(40)]
    a, b, c, d = ids[:10], ids[10:30], ids[30:34], ids[34:]
    assert a == [f"s{i}" for i in range(10)]
    assert b[:10] == b[10:] and len(set(b)) == 10  # the kept half of b, listed twice
    assert len(set(c)) == 4 and set(c) < {f"s{i}" for i in range(8)}  # a seeded half of c
    assert d[:4] == ["s0", "s1", "s2", "s3"] and set(d[4:]) < set(d[:4]) and len(set(d[4:])) == 2
    again = prepare_dataset(DataConfig(source="files", files=sets, seed=3), tmp_path / "o2")
    assert [GemSamples(tmp_path / "o2").record(i)[0]["id"] for i in range(40)] == ids  # same seed, same mixture
    corpus = list(text_corpus(tmp_path / "o"))
    assert len(corpus) == 2 * (10 + 10 + 4 + 4) and again["digest"] == manifest["digest"]  # each text once


def test_ten_thousand_records_index_to_a_mapped_offsets_file(tmp_path):
    root = make_root(tmp_path / "u")
    lines = _numbered(10_000)
    lines[1234] = {"id": "list", "image": ["images/1.png", "images/2.png"], "conversations": turns("<image><image>", 0)}
    aset = write_set(root, "big", lines)
    manifest = prepare_dataset(DataConfig(source="files", files=[aset]), tmp_path / "o")
    (entry,) = manifest["annotation_sets"]
    assert (entry["lines"], entry["samples"], entry["images"], entry["skipped"]) == (10_000, 10_000, 12, 0)
    index = np.load(tmp_path / "o" / entry["index"])
    raw = Path(aset.annotations).read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(raw) if b == ord("\n")][:-1]
    assert index.dtype == np.int64 and index.tolist() == [[o, n + 1] for n, o in enumerate(starts)]
    samples = GemSamples(tmp_path / "o")
    assert len(samples) == 10_000 and isinstance(samples._set_rows(0), np.memmap)
    sample, where, _ = samples.record(9_999)
    assert sample["id"] == "s9999" and where == "big.jsonl line 10000"
    assert [np.asarray(im)[0, 0].tolist() for im in samples[1234]["images"]] == [pixels(1)[0, 0].tolist(),
                                                                                pixels(2)[0, 0].tolist()]


# --- bad records x data.on_error ------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _noise_png(path: Path) -> None:  # incompressible, so that half of the file is half of the pixels
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


# name -> (how to break record 3 (line 4) of 8 single-image records, the stop message, found at prepare?)
BAD = {
    "missing image": (lambda r, s: (r / "images" / "3.png").unlink(),
                      "image 'images/3.png' in {ann} line 4 does not exist under", True),
    "wrong field type": (lambda r, s: s.__setitem__(3, {**s[3], "image": 7}),
                         "{ann} line 4 has a malformed 'image' (expected a path or a list of paths)", True),
    "dot-dot path": (lambda r, s: s.__setitem__(3, {**s[3], "image": "../outside.png"}),
                     "image '../outside.png' in {ann} line 4 is outside its data root", True),
    "absolute path outside": (lambda r, s: s.__setitem__(3, {**s[3], "image": str(r.parent / "outside.png")}),
                              "line 4 is outside its data root", True),
    "symlink out": (lambda r, s: os.symlink(r.parent / "outside.png", r / "images" / "link.png")
                    or s.__setitem__(3, {**s[3], "image": "images/link.png"}),
                    "image 'images/link.png' in {ann} line 4 is outside its data root", True),
    "truncated image": (lambda r, s: (_noise_png(r / "images" / "3.png"), _truncate(r / "images" / "3.png")),
                        "image 'images/3.png' in u.jsonl line 4 cannot be read", False),
    "truncated video": (lambda r, s: (_truncate(r / "clips" / "c.mp4"),
                                      s.__setitem__(3, {"id": "s3", "video": "clips/c.mp4",
                                                        "conversations": turns("<video>\n", 3)})),
                        "video 'clips/c.mp4' in u.jsonl line 4 cannot be decoded", False),
    "depth of the wrong size": (lambda r, s: save_depth_mm(r / "dr" / "depth" / "3.png", np.ones((5, 7), np.float32)),
                                "depth map '{root}/dr/depth/3.png' is 7x5 but image 'images/3.png' in u.jsonl "
                                "line 4 is 32x24: regenerate the depth", False),
}


def _bad_set(tmp_path: Path, case: str) -> tuple[AnnotationSet, str]:
    root = make_root(tmp_path / "u")
    _noise_png(tmp_path / "outside.png")
    samples = [{"id": f"s{i}", "image": f"images/{i}.png", "conversations": turns("<image>\n", i)} for i in range(8)]
    breaker, message, _ = BAD[case]
    breaker(root, samples)
    aset = write_set(root, "u", samples)
    return aset, message.format(ann=aset.annotations, root=root)


@pytest.mark.parametrize("case", sorted(BAD))
def test_stop_names_file_and_line(tmp_path, case):
    aset, message = _bad_set(tmp_path, case)
    cfg = DataConfig(source="files", files=[aset], on_error="stop")
    if BAD[case][2]:  # found at prepare: nothing is written
        with pytest.raises(InputError) as err:
            prepare_dataset(cfg, tmp_path / "o")
        assert not (tmp_path / "o").exists()
    else:  # found when the sample is read
        prepare_dataset(cfg, tmp_path / "o")
        samples = GemSamples(tmp_path / "o")
        assert samples[2]["id"] == "s2"
        with pytest.raises(InputError) as err:
            samples[3]
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_skip_counts_and_goes_on_until_max_skipped(tmp_path, case, capsys):
    aset, message = _bad_set(tmp_path, case)
    cfg = DataConfig(source="files", files=[aset], on_error="skip", max_skipped=0.2)
    manifest = prepare_dataset(cfg, tmp_path / "o")
    samples = GemSamples(tmp_path / "o")
    if BAD[case][2]:
        assert manifest["counts"]["skipped"] == 1 and manifest["annotation_sets"][0]["samples"] == 7
        assert sum(manifest["counts"]["skipped_by_reason"].values()) == 1
        assert [samples.record(i)[0]["id"] for i in range(7)] == [f"s{i}" for i in range(8) if i != 3]
    else:
        assert manifest["counts"]["skipped"] == 0 and len(samples) == 8
        assert samples[3]["id"] == "s4" and samples.skipped == 1  # the next sample stands in
    assert message in capsys.readouterr().err
    # the same bad record is more than a 10% share of 8: the stage fails, in one line
    cfg = DataConfig(source="files", files=[aset], on_error="skip", max_skipped=0.1)
    with pytest.raises(InputError, match=r"more than data.max_skipped 10.0%.*raise data.max_skipped") as err:
        prepare_dataset(cfg, tmp_path / "strict")
        GemSamples(tmp_path / "strict")[3]
    assert "\n" not in str(err.value) and message in str(err.value)
