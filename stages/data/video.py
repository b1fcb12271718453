"""Video files in annotation samples (`"video": "clip.mp4"`): probing at prepare time, decoding at read time (PyAV).

Like the released loader (qwenvl/data/vision_process.py: fetch_video), a video becomes frames at
linspace(0, total - 1, n).round() with n = 32, each then fed to the model as an image. Unlike it, a video shorter than
32 frames gives each frame once (the release repeats frames to reach 32).
"""

from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

MAX_VIDEO_FRAMES = 32  # the released loader's frame count per video
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg")
_SUFFIXES = frozenset(VIDEO_SUFFIXES)


class VideoError(Exception):
    """A video file that cannot be decoded; the message is the reason, for the caller's one-line error."""


def is_video_file(path: str) -> bool:
    # as Path(path).suffix, without pathlib's cost: called for each path of millions of records
    dot = path.rfind(".")
    return dot > path.rfind("/") + 1 and path[dot:].lower() in _SUFFIXES


def frame_indices(total: int, max_frames: int = MAX_VIDEO_FRAMES) -> list[int]:
    """Indices of the kept frames: all of them up to max_frames, else max_frames evenly spaced, first and last kept."""
    if total <= max_frames:
        return list(range(total))
    return np.linspace(0, total - 1, max_frames).round().astype(int).tolist()


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def video_size(file: str | Path | BinaryIO, decode: bool) -> tuple[int, int]:
    """(width, height) of the first video stream; decode=True also decodes its first frame. Raises VideoError."""
    try:
        with av.open(file) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            if decode and next(container.decode(stream), None) is None:
                raise VideoError("no decodable frame")
            return stream.codec_context.width, stream.codec_context.height
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(_reason(e)) from None


def decode_video(path: str | Path, max_frames: int = MAX_VIDEO_FRAMES) -> list[Image.Image]:
    """The kept frames (frame_indices) of the file's first video stream as RGB images. Raises VideoError."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            # The container's frame count when it records one (mp4 does), else one decoding pass to count.
            total = container.streams.video[0].frames or sum(1 for _ in container.decode(video=0))
        frames, decoded = _read_frames(path, frame_indices(total, max_frames))
        if len(frames) < min(total, max_frames):  # the container overstated its frame count: pick again
            frames, _ = _read_frames(path, frame_indices(decoded, max_frames))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(_reason(e)) from None
    if not frames:
        raise VideoError("no decodable frame")
    return frames


def _read_frames(path: str | Path, wanted: list[int]) -> tuple[list[Image.Image], int]:
    """Decode up to the last wanted index -> (the wanted frames that exist, in order; frames decoded)."""
    keep, decoded = set(wanted), 0
    picked: dict[int, Image.Image] = {}
    if not wanted:
        return [], 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            decoded = i + 1
            if i in keep:
                picked[i] = frame.to_image()  # RGB
            if i >= wanted[-1]:
                break
    return [picked[i] for i in wanted if i in picked], decoded
