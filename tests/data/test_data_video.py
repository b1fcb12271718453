"""Video files in annotation samples: at most 32 evenly spaced frames decoded with PyAV, as the released loader."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

from gem_stages.data.config import AnnotationSet, DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import GemSamples
from gem_stages.data.video import decode_video, frame_indices
from gem_stages.errors import InputError

W, H, BITS = 64, 48, 8  # frame i: 8 vertical 8-px stripes, stripe b white iff bit b of i is set


def write_video(path: Path, n: int) -> None:
    """An n-frame clip whose pixels spell each frame's index; intra-only, near-lossless, so decoding recovers it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10, options={"qscale": "1"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = 1
        for i in range(n):
            pixels = np.zeros((H, W, 3), np.uint8)
            for b in range(BITS):
                if i >> b & 1:
                    pixels[:, b * 8 : b * 8 + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def frame_id(image) -> int:
    gray = np.asarray(image.convert("L"), np.float32)
    return sum(1 << b for b in range(BITS) if gray[:, b * 8 + 2 : b * 8 + 6].mean() > 128)


# linspace(0, total - 1, 32).round() by hand: total 63 -> step 62/31 = 2, total 94 -> step 93/31 = 3, total 100 ->
# step 99/31 = 3.19.. (3.19 -> 3, 6.39 -> 6, 9.58 -> 10, ...); 32 frames or fewer are all kept.
HUNDRED = [0, 3, 6, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 42, 45, 48, 51, 54, 57, 61, 64, 67, 70, 73, 77, 80, 83,
           86, 89, 93, 96, 99]


@pytest.mark.parametrize("total, expected", [
    (100, HUNDRED),
    (63, list(range(0, 63, 2))),
    (94, list(range(0, 94, 3))),
    (32, list(range(32))),
    (10, list(range(10))),
    (1, [0]),
])
def test_frame_indices_are_the_released_loaders(total, expected):
    assert frame_indices(total) == expected


@pytest.mark.parametrize("name, total, expected", [
    ("clip.mp4", 100, HUNDRED),
    ("short.mp4", 10, list(range(10))),
    ("clip.mkv", 63, list(range(0, 63, 2))),  # Matroska records no frame count: counted by decoding
])
def test_decode_video_keeps_the_expected_frames(tmp_path, name, total, expected):
    write_video(tmp_path / name, total)
    frames = decode_video(tmp_path / name)
    assert [frame_id(f) for f in frames] == expected
    assert {(f.mode, f.size) for f in frames} == {("RGB", (W, H))}


def make_set(root: Path, samples: list[dict]) -> AnnotationSet:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ann.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return AnnotationSet(name="clips", annotations=str(root / "ann.jsonl"), data_path=str(root))


def video_sample(video) -> dict:
    return {
        "id": "v",
        "video": video,
        "conversations": [{"from": "human", "value": "<video>\nwhat happens?"}, {"from": "gpt", "value": "x"}],
    }


def test_a_video_file_sample_becomes_32_frames_without_depth(tmp_path):
    write_video(tmp_path / "user" / "clips" / "a.mp4", 100)
    aset = make_set(tmp_path / "user", [video_sample("clips/a.mp4")])
    prepare_dataset(DataConfig(source="files", files=[aset]), tmp_path / "out")
    sample = GemSamples(tmp_path / "out")[0]
    assert [frame_id(f) for f in sample["images"]] == HUNDRED
    assert sample["depths"] == [None] * 32  # the release looks depth up by image path: a video has none
    assert sample["conversations"][0]["value"] == "<image>" * 32 + "\nwhat happens?"


@pytest.mark.parametrize("video, write, message", [
    ("clips/missing.mp4", None, "video 'clips/missing.mp4' in .* does not exist under"),
    ("clips/bad.mp4", b"not a video at all", "video 'clips/bad.mp4' in .* cannot be read .*: re-encode it"),
    ("clips/a.gif", None, "is not a video file .*: give a video file or a list of frame paths"),
    (["clips/a.mp4", "clips/b.mp4"], None, "lists video files as the frames"),
])
def test_bad_video_samples_are_one_line_errors(tmp_path, video, write, message):
    root = tmp_path / "user"
    if write is not None:
        (root / "clips").mkdir(parents=True)
        (root / "clips" / "bad.mp4").write_bytes(write)
    aset = make_set(root, [video_sample(video)])
    with pytest.raises(InputError, match=message):  # header: the container is opened at prepare
        prepare_dataset(DataConfig(source="files", files=[aset], check_images="header"), tmp_path / "out")


def test_a_video_file_under_image_is_refused(tmp_path):
    sample = {"image": "clip.mp4", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                     {"from": "gpt", "value": "a"}]}
    aset = make_set(tmp_path / "user", [sample])
    with pytest.raises(InputError, match="lists the video file 'clip.mp4' under \"image\": give it as \"video\""):
        prepare_dataset(DataConfig(source="files", files=[aset]), tmp_path / "out")


def test_a_video_changed_after_prepare_is_a_read_error(tmp_path):
    path = tmp_path / "user" / "clips" / "a.mp4"
    write_video(path, 12)
    aset = make_set(tmp_path / "user", [video_sample("clips/a.mp4")])
    prepare_dataset(DataConfig(source="files", files=[aset]), tmp_path / "out")
    path.write_bytes(b"truncated")
    with pytest.raises(InputError, match="video 'clips/a.mp4' in .* cannot be decoded .*: re-encode it"):
        GemSamples(tmp_path / "out")[0]
