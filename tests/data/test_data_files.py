"""source: files: validation errors (one line, naming the fix), no copying, %-sampling, read-time checks."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from gem_stages.data.config import AnnotationSet, DataConfig
from gem_stages.data.depth_png import save_depth_mm
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows, GemSamples, text_corpus
from gem_stages.data.sampling import parse_set_name, select_indices
from gem_stages.errors import InputError

W, H = 40, 32


def _sample(i: int, images: list[str]) -> dict:
    tags = "<image>\n" * len(images)
    return {
        "id": f"u{i}",
        "image": images[0] if len(images) == 1 else images,
        "conversations": [
            {"from": "human", "value": f"{tags}question {i}"},
            {"from": "gpt", "value": f"answer {i}"},
        ],
        "task": "spatial",
    }


def make_set(root: Path, n: int = 4) -> AnnotationSet:
    """n one-image samples + one two-image sample + one text-only sample, with depth for every image."""
    (root / "imgs").mkdir(parents=True)
    (root / "dep" / "depth").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n + 1):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "imgs" / f"{i:03d}.png")
        save_depth_mm(root / "dep" / "depth" / f"{i:03d}.png", np.full((H, W), 0.5 + i / 10, np.float32))
    samples = [_sample(i, [f"imgs/{i:03d}.png"]) for i in range(n)]
    samples.append(_sample(n, [f"imgs/{n - 1:03d}.png", f"imgs/{n:03d}.png"]))
    samples.append(
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    )
    write_lines(root / "ann.jsonl", samples)
    return AnnotationSet(
        name="mine", annotations=str(root / "ann.jsonl"), data_path=str(root), depth_root=str(root / "dep")
    )


def _line_offsets(aset: AnnotationSet) -> list[int]:
    lines = Path(aset.annotations).read_bytes().splitlines(keepends=True)
    return [sum(len(x) for x in lines[:i]) for i in range(len(lines))]


def write_lines(path: Path, samples: list) -> None:
    path.write_text("".join((s if isinstance(s, str) else json.dumps(s)) + "\n" for s in samples))


def files_cfg(*sets: AnnotationSet, **kw) -> DataConfig:
    return DataConfig(source="files", files=list(sets), **kw)


def write_episode_file(
    path: Path, n: int = 5, instruction: str | None = "stack the cups", cams=("left",)
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["action"] = np.arange(n * 7, dtype=np.float32).reshape(n, 7)
        for cam in cams:
            f[f"observations/images/{cam}"] = np.zeros((n, H, W, 3), np.uint8)
            f[f"observations/depth_images/{cam}"] = np.full((n, H, W), 800, np.uint16)
        f["observations/state"] = np.ones((n, 7), np.float32)
        if instruction is not None:
            f.attrs["instruction"] = instruction


def test_valid_set_is_indexed_not_copied(tmp_path):
    aset = make_set(tmp_path / "user")
    out = tmp_path / "out"
    manifest = prepare_dataset(files_cfg(aset), out)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "files.md5", "index-000.npy"]
    (entry,) = manifest["annotation_sets"]
    assert entry["annotations"] == str((tmp_path / "user" / "ann.jsonl").resolve())
    assert entry["data_path"] == str((tmp_path / "user").resolve())
    assert (entry["lines"], entry["selected"], entry["rate"], entry["images"]) == (6, 6, 100, 5)
    assert manifest["source"] == "files" and manifest["name"] == "mine"
    assert manifest["counts"]["tasks"] == {
        "mine": 1,
        "spatial": 5,
    }  # a sample without "task" counts under its set
    listed = dict(reversed(line.split("  ", 1)) for line in (out / "files.md5").read_text().splitlines())
    assert list(listed) == [entry["annotations"]]  # images are referenced, not read: their stats are digested
    for path, md5 in listed.items():
        assert Path(path).is_absolute() and hashlib.md5(Path(path).read_bytes()).hexdigest() == md5
    text = (out / "files.md5").read_text() + entry["media_digest"]
    assert manifest["digest"] == hashlib.md5(text.encode()).hexdigest()
    assert np.load(out / "index-000.npy").tolist() == [[o, n + 1] for n, o in enumerate(_line_offsets(aset))]

    samples = GemSamples(out)
    assert len(samples) == 6
    first = samples[0]
    assert first["id"] == "u0" and first["task"] == "spatial"
    assert first["images"][0].mode == "RGB" and first["images"][0].size == (W, H)
    assert first["depths"][0].dtype == np.float32 and first["depths"][0].shape == (H, W)
    assert np.allclose(first["depths"][0], 0.5)
    assert len(samples[4]["images"]) == 2 and np.allclose(samples[4]["depths"][1], 0.9)
    assert samples[5]["images"] == [] and samples[5]["task"] == "mine"
    assert "answer 3" in list(text_corpus(out))


def test_missing_depth_map_gives_none_and_is_counted(tmp_path):
    aset = make_set(tmp_path / "user")
    (tmp_path / "user" / "dep" / "depth" / "001.png").unlink()
    manifest = prepare_dataset(files_cfg(aset), tmp_path / "out")
    assert manifest["annotation_sets"][0]["images_without_depth"] == 1
    assert GemSamples(tmp_path / "out")[1]["depths"] == [None]


def test_no_depth_root_means_no_depth(tmp_path):
    aset = make_set(tmp_path / "user")
    aset.depth_root = ""
    prepare_dataset(files_cfg(aset), tmp_path / "out")
    assert GemSamples(tmp_path / "out")[0]["depths"] == [None]


def _break_image(root: Path):
    (root / "imgs" / "002.png").write_bytes(b"this is not a picture")


def _empty_image(root: Path):
    (root / "imgs" / "002.png").write_bytes(b"")


def _missing_image(root: Path):
    (root / "imgs" / "002.png").unlink()


def _small_depth(root: Path):
    save_depth_mm(root / "dep" / "depth" / "002.png", np.ones((16, 20), np.float32))


def _rgb_depth(root: Path):
    Image.new("RGB", (W, H)).save(root / "dep" / "depth" / "002.png")


def _bad_json(root: Path):
    lines = (root / "ann.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (root / "ann.jsonl").write_text("\n".join(lines) + "\n")


def _json_array(root: Path):
    samples = [json.loads(line) for line in (root / "ann.jsonl").read_text().splitlines()]
    (root / "ann.jsonl").write_text(json.dumps(samples, indent=1))


def _no_conversations(root: Path):
    lines = (root / "ann.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"id": "x", "image": "imgs/001.png"})
    (root / "ann.jsonl").write_text("\n".join(lines) + "\n")


def _placeholder_mismatch(root: Path):
    lines = (root / "ann.jsonl").read_text().splitlines()
    sample = json.loads(lines[4])
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace("<image>\n", "", 1)
    lines[4] = json.dumps(sample)
    (root / "ann.jsonl").write_text("\n".join(lines) + "\n")


def _empty_file(root: Path):
    (root / "ann.jsonl").write_text("\n\n")


def _missing_file(root: Path):
    (root / "ann.jsonl").unlink()


def _no_depth_folder(root: Path):
    for p in (root / "dep" / "depth").iterdir():
        p.unlink()
    (root / "dep" / "depth").rmdir()


def _no_depth_at_all(root: Path):
    for p in (root / "dep" / "depth").iterdir():
        p.unlink()


def _missing_data_path(root: Path):
    for p in (root / "imgs").iterdir():
        p.unlink()
    (root / "imgs").rmdir()
    (root / "ann.jsonl").rename(root.parent / "ann.jsonl")


HEADER_CASES = {"unreadable image", "depth size", "depth mode"}  # found at prepare by check_images: header
ERROR_CASES = {
    "unreadable image": (
        _break_image,
        "image 'imgs/002.png' in {ann} line 3 cannot be read (cannot identify image file): re-export it as PNG/JPEG or drop the sample",
    ),
    "empty image": (_empty_image, "image 'imgs/002.png' in {ann} line 3 is empty: re-export it as PNG/JPEG"),
    "missing image": (_missing_image, "image 'imgs/002.png' in {ann} line 3 does not exist under"),
    "depth size": (
        _small_depth,
        "is 20x16 but image 'imgs/002.png' in {ann} line 3 is 40x32: regenerate the depth",
    ),
    "depth mode": (
        _rgb_depth,
        "cannot be read (mode RGB, not 16-bit single-channel): save depth as a 16-bit PNG",
    ),
    "malformed json": (_bad_json, "{ann} line 3 is not valid JSON (Unterminated string starting at column"),
    "json array": (_json_array, "convert it to JSONL"),
    "no conversations": (_no_conversations, "{ann} line 2 has no 'conversations' list"),
    "placeholders": (_placeholder_mismatch, "{ann} line 5 has 1 <image> placeholder(s) but 2 image(s)"),
    "empty annotations": (_empty_file, "({key}.annotations) is empty"),
    "missing annotations": (_missing_file, "({key}.annotations) does not exist: fix the path"),
    "no depth folder": (_no_depth_folder, "has no 'depth' folder"),
    "no depth anywhere": (_no_depth_at_all, "holds a depth map for none of the set's images"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_problem_is_one_input_error_and_nothing_is_written(tmp_path, case):
    mutate, expected = ERROR_CASES[case]
    aset = make_set(tmp_path / "user")
    mutate(tmp_path / "user")
    parent = tmp_path / "runs"
    parent.mkdir()
    check = "header" if case in HEADER_CASES else "stat"
    with pytest.raises(InputError) as err:
        prepare_dataset(files_cfg(aset, check_images=check), parent / "out")
    message = str(err.value)
    assert expected.format(ann=aset.annotations, key="data.files[0]") in message
    assert "\n" not in message and ": " in message
    assert list(parent.iterdir()) == []


def test_missing_image_root(tmp_path):
    aset = make_set(tmp_path / "user")
    aset.data_path = str(tmp_path / "nowhere")
    with pytest.raises(
        InputError, match=r"image root '.*nowhere' \(data.files\[0\].data_path\) is not an existing directory"
    ):
        prepare_dataset(files_cfg(aset), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_decode_check_finds_truncated_images_the_header_check_lets_through(tmp_path):
    aset = make_set(tmp_path / "user")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        tmp_path / "user" / "imgs" / "002.png"
    )
    data = (tmp_path / "user" / "imgs" / "002.png").read_bytes()
    (tmp_path / "user" / "imgs" / "002.png").write_bytes(data[: len(data) // 2])
    prepare_dataset(files_cfg(aset, check_images="header"), tmp_path / "fast")
    with pytest.raises(InputError, match="line 3 cannot be read"):
        prepare_dataset(files_cfg(aset, check_images="decode"), tmp_path / "full")
    with pytest.raises(InputError, match="line 3 cannot be read"):
        GemSamples(tmp_path / "fast")[2]  # the reader decodes, so it catches it at the latest


def test_read_time_problems_are_input_errors(tmp_path):
    aset = make_set(tmp_path / "user")
    prepare_dataset(files_cfg(aset), tmp_path / "out")
    samples = GemSamples(tmp_path / "out")
    _small_depth(tmp_path / "user")
    with pytest.raises(InputError, match="is 20x16 but image 'imgs/002.png' in ann.jsonl line 3 is 40x32"):
        samples[2]
    _break_image(tmp_path / "user")
    with pytest.raises(InputError, match=r"line 3 cannot be read \(cannot identify image file\)"):
        samples[2]
    _missing_image(tmp_path / "user")
    with pytest.raises(InputError, match="does not exist"):
        samples[2]
    _bad_json(tmp_path / "user")
    with pytest.raises(InputError, match="changed since the dataset was prepared: prepare the dataset again"):
        GemSamples(tmp_path / "out")


def test_sampling_suffix_keeps_a_seeded_share(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    write_lines(
        root / "a.jsonl",
        [{"id": f"s{i}", "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(40)],
    )

    def ids(name, seed):
        aset = AnnotationSet(name=name, annotations=str(root / "a.jsonl"), data_path=str(root))
        out = tmp_path / f"{name.replace('%', '_')}-{seed}"
        manifest = prepare_dataset(files_cfg(aset, seed=seed), out)
        got = [s["id"] for s in GemSamples(out)]
        assert manifest["counts"]["samples"] == len(got)
        assert list(text_corpus(out)) == [f"q{i[1:]}" for i in got]  # the corpus holds the kept samples only
        return got

    half = ids("gem%50", 0)
    assert len(half) == 20 and len(set(half)) == 20
    assert half == ids("gem%50", 0)  # same seed, same choice
    assert half != ids("gem%50", 1)
    assert sorted(half, key=lambda s: int(s[1:])) == half  # file order is kept
    assert len(ids("gem%10", 0)) == 4 and len(ids("gem", 0)) == 40 and len(ids("gem%100", 0)) == 40
    assert parse_set_name("gem%7") == ("gem", 7)
    assert len(select_indices(7, 50, 0, "gem")) == 3  # floor, as the reference's int(len * rate)


@pytest.mark.parametrize(
    "name, message",
    [
        ("gem%0", "asks for 0% of its samples: use a rate from 1 to 100"),
        ("gem%150", "asks for 150%"),
        ("ge%m", "is malformed"),
        ("%50", "is malformed"),
    ],
)
def test_bad_sampling_suffix(tmp_path, name, message):
    aset = make_set(tmp_path / "user")
    aset.name = name
    with pytest.raises(InputError, match=message):
        prepare_dataset(files_cfg(aset), tmp_path / "out")


def test_a_rate_that_keeps_nothing_and_duplicate_names_are_errors(tmp_path):
    aset = make_set(tmp_path / "user")
    aset.name = "mine%10"  # 6 lines * 10% -> 0
    with pytest.raises(InputError, match="keeps 0 of its 6 samples: raise its %rate"):
        prepare_dataset(files_cfg(aset), tmp_path / "out")
    aset.name = "mine"
    with pytest.raises(InputError, match="appears twice"):
        prepare_dataset(
            files_cfg(aset, AnnotationSet(**{**aset.__dict__, "name": "mine%50"})), tmp_path / "out"
        )


def test_video_frames_become_images(tmp_path):
    aset = make_set(tmp_path / "user")
    frames = [f"imgs/{i % 5:03d}.png" for i in range(40)]
    video = {
        "id": "v",
        "video": frames,
        "conversations": [
            {"from": "human", "value": "<video>\nwhat happens?"},
            {"from": "gpt", "value": "x"},
        ],
    }
    write_lines(tmp_path / "user" / "ann.jsonl", [video])
    prepare_dataset(files_cfg(aset), tmp_path / "out")
    sample = GemSamples(tmp_path / "out")[0]
    assert len(sample["images"]) == 32 and len(sample["depths"]) == 32
    assert sample["conversations"][0]["value"] == "<image>" * 32 + "\nwhat happens?"


def test_episodes_directory_in_the_reference_layout(tmp_path):
    eps = tmp_path / "eps"
    write_episode_file(eps / "taskA" / "episode_0.hdf5", n=5, instruction=None)
    (eps / "taskA" / "instructions.json").write_text(json.dumps(["fold the towel"]))
    write_episode_file(eps / "taskB" / "episode_0.hdf5", n=3, cams=("left", "right"))
    manifest = prepare_dataset(DataConfig(source="files", episodes_dir=str(eps)), tmp_path / "out")
    episodes = manifest["episodes"]
    assert episodes["lengths"] == [5, 3] and episodes["cameras"] == ["left"]
    assert episodes["instructions"] == ["fold the towel", "stack the cups"]
    assert (episodes["state_dim"], episodes["action_dim"]) == (7, 7)
    windows = EpisodeWindows(tmp_path / "out", chunk_size=4)
    assert len(windows) == 8 and windows[0]["instruction"] == "fold the towel"
    assert np.allclose(windows[0]["depth"], 0.8)
    last = windows[7]  # step 2 of the 3-step episode: one real action, then the last one repeated
    assert last["actions"].shape == (4, 7) and last["action_mask"].tolist() == [True, False, False, False]
    assert (last["actions"] == np.arange(14, 21, dtype=np.float32)).all()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "episodes directory '{d}' (data.episodes_dir) does not exist"),
        (lambda d: d.mkdir(), "has no *.hdf5 files"),
        (
            lambda d: write_episode_file(d / "e.hdf5", instruction=None),
            "has no instruction: set the HDF5 attribute 'instruction'",
        ),
        (lambda d: (d.mkdir(), (d / "e.hdf5").write_bytes(b"junk")), "cannot be opened as HDF5"),
    ],
)
def test_episode_directory_problems(tmp_path, setup, message):
    eps = tmp_path / "eps"
    setup(eps)
    with pytest.raises(InputError) as err:
        prepare_dataset(DataConfig(source="files", episodes_dir=str(eps)), tmp_path / "out")
    assert message.format(d=eps) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_episode_missing_a_dataset(tmp_path):
    write_episode_file(tmp_path / "eps" / "e.hdf5")
    with h5py.File(tmp_path / "eps" / "e.hdf5", "a") as f:
        del f["observations/state"]
    with pytest.raises(InputError, match="has no 'observations/state'"):
        prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "eps")), tmp_path / "out")


def test_own_data_finds_depth_under_the_exact_name_or_as_png_and_reports_counts(tmp_path, capsys):
    from .own_data import SCENE_DEPTH, depth_value, make_own_sets

    scenes, captions = make_own_sets(tmp_path / "own")
    manifest = prepare_dataset(files_cfg(scenes, captions), tmp_path / "out")
    by_name = {s["name"]: s for s in manifest["annotation_sets"]}
    assert (by_name["scenes"]["images_with_depth"], by_name["scenes"]["images"]) == (9, 12)
    assert (by_name["captions"]["images_with_depth"], by_name["captions"]["images"]) == (0, 6)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[data] set scenes: 9/12 images with depth",
                   "[data] set scenes: 12 lines, 12 kept (%100), 0 skipped, 12 samples (weight 1)",
                   "[data] set captions: 0/6 images with depth (no depth_root)",
                   "[data] set captions: 6 lines, 6 kept (%100), 0 skipped, 6 samples (weight 1)"]
    samples = GemSamples(tmp_path / "out")
    for i, where in enumerate(SCENE_DEPTH):
        (depth,) = samples[i]["depths"]
        if where == "none":
            assert depth is None, i
        else:
            assert depth.shape == (H, W) and np.allclose(depth, depth_value(i), atol=1e-3), i
    assert all(samples[12 + i]["depths"] == [None] for i in range(6))
    before = manifest["digest"]
    assert prepare_dataset(files_cfg(scenes, captions), tmp_path / "again")["digest"] == before
    depth = Path(scenes.depth_root) / "depth" / "007.jpg"
    save_depth_mm(depth, np.full((H, W), 2.0, np.float32))  # a used depth map changes: so does the digest
    assert prepare_dataset(files_cfg(scenes, captions), tmp_path / "changed")["digest"] != before


def test_the_exact_name_wins_over_the_png_beside_it(tmp_path):
    from .own_data import make_own_sets

    scenes, captions = make_own_sets(tmp_path / "own")
    depth_dir = Path(scenes.depth_root) / "depth"
    save_depth_mm(depth_dir / "007.png", np.full((H, W), 3.0, np.float32))  # 007.jpg is stored under its own name
    prepare_dataset(files_cfg(scenes), tmp_path / "out")
    assert np.allclose(GemSamples(tmp_path / "out")[7]["depths"][0], 0.5 + 7 / 10, atol=1e-3)
