"""The GEM annotation format (LLaVA/Qwen JSONL): reading lines, checking a sample, listing its media.

A sample: {"image": "a.jpg" | ["a.jpg", "b.jpg"], "video": "clip.mp4" | [frame paths], "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}], ...}. Paths are relative to the set's
data_path. A video, a file (decoded with PyAV, see video.py) or a list of frame files, gives up to 32 evenly spaced
frames, each fed to the model as an image: the reader replaces its one <video> tag by one <image> tag per frame.
"""

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from .video import VIDEO_SUFFIXES, frame_indices, is_video_file

ROLES = ("human", "gpt", "system")

try:  # several times faster than json on millions of lines; json (below) words the errors
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


def scan_jsonl(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, raw line) of every non-blank line."""
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_no, offset, raw
            offset += len(raw)


def parse_sample(raw: bytes, where: str) -> dict:
    try:
        sample = _loads(raw)
    except ValueError:
        sample = None  # parsed again below by json, whose messages name the problem
    if isinstance(sample, dict):
        return sample
    try:
        sample = json.loads(raw.strip())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = (
            f"{e.msg.removesuffix(' at')} at column {e.colno}"
            if isinstance(e, json.JSONDecodeError)
            else "not UTF-8"
        )
        if raw.lstrip().startswith(b"["):
            raise InputError(
                f"{where} is not a JSON object ({reason}): the file looks like a JSON array; "
                "convert it to JSONL, one sample object per line"
            ) from None
        raise InputError(f"{where} is not valid JSON ({reason}): fix the line or delete it") from None
    if not isinstance(sample, dict):
        raise InputError(
            f"{where} is a JSON {type(sample).__name__}, not an object: write one sample object per line"
        )
    return sample


def _path_list(sample: dict, key: str, where: str) -> list[str]:
    value = sample.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise InputError(
            f"{where} has a malformed '{key}' (expected a path or a list of paths): fix the sample"
        )
    return value


def video_frames(frames: list[str]) -> list[str]:
    """A frame list's kept frames: at most 32, evenly spaced over the video (video.frame_indices)."""
    return [frames[i] for i in frame_indices(len(frames))]


def check_sample(sample: dict, where: str) -> tuple[list[str], list[str]]:
    """Validate one sample; return (image paths, video frame paths), where a video file is the one "frame" [its path]
    (is_video_file tells; its frames are known once decoded). InputError names what is wrong and where."""
    conversations = sample.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise InputError(f"{where} has no 'conversations' list: add the human/gpt turns or drop the sample")
    for turn in conversations:
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ROLES
            or not isinstance(turn.get("value"), str)
        ):
            raise InputError(
                f"{where} has a malformed conversation turn: each turn needs 'from' "
                f"({'/'.join(ROLES)}) and a string 'value'"
            )
    images = _path_list(sample, "image", where)
    for path in images:
        if is_video_file(path):
            raise InputError(f"{where} lists the video file '{path}' under \"image\": give it as \"video\"")
    frames = _path_list(sample, "video", where)
    if isinstance(sample.get("video"), str) and not is_video_file(frames[0]):
        raise InputError(
            f"{where} has \"video\": '{frames[0]}', which is not a video file ({', '.join(VIDEO_SUFFIXES)}): "
            "give a video file or a list of frame paths"
        )
    if len(frames) > 1 and any(is_video_file(f) for f in frames):
        raise InputError(f"{where} lists video files as the frames of its \"video\": give one video file or a "
                         "list of frame images")
    frames = video_frames(frames)
    text = "".join(turn["value"] for turn in conversations)
    if text.count("<image>") != len(images):
        raise InputError(
            f"{where} has {text.count('<image>')} <image> placeholder(s) but {len(images)} image(s): "
            "put one <image> in the human turns per image"
        )
    if text.count("<video>") != (1 if frames else 0):
        raise InputError(
            f"{where} has {text.count('<video>')} <video> placeholder(s) but {1 if frames else 0} video(s): "
            "put one <video> in the human turn of a video sample"
        )
    return images, frames


def expand_video_tag(conversations: list[dict], num_frames: int) -> list[dict]:
    """Replace the <video> tag by one <image> tag per frame (each frame is fed to the model as an image)."""
    return [{**t, "value": t["value"].replace("<video>", "<image>" * num_frames)} for t in conversations]


def depth_candidates(depth_root: Path, image_path: str) -> list[Path]:
    """Where the depth of image p may be, in order: <depth_root>/depth/<basename of p> (the reference's rule), then
    the same stem with .png (depth tools write x.png for image x.jpg, since depth is a 16-bit PNG)."""
    exact = depth_root / "depth" / Path(image_path).name
    png = exact.with_suffix(".png")
    return [exact] if png == exact else [exact, png]


def find_depth(depth_root: Path, image_path: str) -> Path | None:
    """The first of depth_candidates that exists (None: the image has no depth)."""
    return next((p for p in depth_candidates(depth_root, image_path) if p.is_file()), None)
