"""What the built-in benchmarks and the mapping adapter share: reading their files with one-line errors, checking
images, the multiple-choice prompt, and grading an item by its kind."""

from __future__ import annotations

import io
import json
import string
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gem_stages.errors import InputError

from ..answers import parse_box, parse_choice, parse_number, parse_points, parse_yesno
from ..benchmark import EvalItem, Graded
from ..metrics import box_iou, exact_match, mean_relative_accuracy, point_in_polygon, points_in_mask

LETTERS = string.ascii_uppercase
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Please answer the question using a single word or phrase."


def need(path: Path, what: str) -> Path:
    """`path` when it exists, else the one-line error naming it and what it should be."""
    if not path.exists():
        raise InputError(f"{path}: not found; expected {what}")
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[Any]:
    records = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    return records


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def field(record: Any, key: str, where: str, types: type | tuple[type, ...] = object) -> Any:
    """record[key], checked: a missing field or a value of the wrong type is an InputError naming the record."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        raise InputError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, types):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise InputError(f"{where}: field '{key}' must be {want}, got {type(value).__name__} {value!r:.60}")
    return value


def image_error(image: Any) -> str | None:
    """Why the image (a path, bytes or a parquet {"bytes": ...} struct) cannot be shown, or None when it decodes."""
    try:
        with open_image(image) as im:
            im.load()
    except Exception as e:  # PIL raises many types for a bad file; every one means "cannot show this image"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'undecodable image'}"
    return None


def image_bytes(image: Any, where: str) -> bytes:
    """A parquet image cell as raw bytes: bytes as they are, or the bytes of an Image struct {"bytes", "path"}."""
    if isinstance(image, dict) and isinstance(image.get("bytes"), (bytes, bytearray)):
        return bytes(image["bytes"])
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    raise InputError(f"{where}: an image must be bytes or an image struct with bytes, got {image!r:.60}")


def open_image(image: Any) -> Image.Image:
    if isinstance(image, dict):  # a parquet Image struct: {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image))
    if isinstance(image, Image.Image):
        return image
    return Image.open(image)


def choice_prompt(question: str, choices: list[str]) -> str:
    """The multiple-choice template (lmms-eval's): the question, the lettered options, then the instruction."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\nOptions:\n{options}\n{MC_SUFFIX}"


def grade(item: EvalItem, text: str, letters: str | None = None) -> Graded:
    """Score the model's text for an item by its kind (see benchmark.ItemKind). Never raises."""
    if item.error is not None:
        return Graded(item.id, None, 0.0, note=f"undecodable: {item.error}")
    if item.kind == "choice":
        letters = letters or LETTERS[: len(item.choices or [])] or "ABCD"
        parsed: Any = parse_choice(text, letters, item.choices)
        score = lambda p: exact_match(p, item.answer)  # noqa: E731
    elif item.kind == "numeric":
        parsed = parse_number(text, unit=item.meta.get("unit"))
        score = lambda p: mean_relative_accuracy(p, float(item.answer))  # noqa: E731
    elif item.kind == "yesno":
        parsed = parse_yesno(text)
        score = lambda p: exact_match(p, item.answer)  # noqa: E731
    elif item.kind == "point":
        parsed = parse_points(text, item.meta.get("image_size"))
        score = lambda p: point_score(item, p)  # noqa: E731
    elif item.kind == "box":
        parsed = parse_box(text, item.meta.get("image_size"))
        score = lambda p: float(box_iou(p, item.answer) >= 0.5)  # noqa: E731
    else:
        raise ValueError(f"grade() does not score '{item.kind}' items")  # a programming error, not user input
    if parsed is None:
        return Graded(item.id, None, 0.0, note="unparsable")
    return Graded(item.id, parsed, score(parsed))


def point_score(item: EvalItem, points: list[tuple[float, float]]) -> float:
    """Points against the item's region: meta["polygon"] (the first point must fall inside, as RoboSpatial-Home
    scores) or meta["mask"] (a mask file, read as grey / 255: the mean mask value at the points, as Where2Place scores)."""
    if "polygon" in item.meta:
        return float(point_in_polygon(*points[0], item.meta["polygon"]))
    with Image.open(item.meta["mask"]) as im:
        mask = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    return points_in_mask(points, mask)


def records_file(root: Path, patterns: tuple[str, ...], what: str) -> Path:
    """The first file under `root` matching one of the patterns, in order (the published file names)."""
    need(root, f"the {what} folder")
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    raise InputError(f"{root}: no {' or '.join(patterns)} found; expected the {what} layout")


def read_records(path: Path) -> list[Any]:
    """A JSON array, a JSONL file or a parquet table as a list of records."""
    if path.suffix == ".parquet":
        return read_parquet(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def media(root: Path, relative: str, where: str) -> Path:
    """A media file a record names, relative to the benchmark root; a missing one is the user's setup error, one
    outside the root (../, an absolute path elsewhere, a symlink out) is refused: a benchmark reads its own files."""
    found = confined_file(root, relative, where)
    if found is None:
        raise InputError(f"{where}: {root / relative} not found; is the benchmark root the folder it was downloaded "
                         "to?")
    return found


def confined_file(root: Path, relative: str, where: str) -> Path | None:
    """`relative` under `root` as a path (None when no such file), refused in one line when it leads outside."""
    from gem_stages.data.confine import Confined

    checked = Confined(root).stat(relative)
    if checked == "outside":
        raise InputError(f"{where}: {relative!r} leads outside the benchmark folder {root} (../, an absolute path "
                         "elsewhere or a symlink out): keep the benchmark's files inside its folder")
    return Path(checked[1]) if isinstance(checked, tuple) else None
