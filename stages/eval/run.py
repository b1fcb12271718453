"""The evaluation runner: a benchmark's items through a model, graded, written as predictions.jsonl and results.json.

    evaluate(model, bench, out_dir, batch_size=8, limit=None, shard=(0, 1))
        items[:limit], those with i % K == k  ->  bench.prompt  ->  batched greedy generate (left-padded, KV cache)
        ->  bench.grade  ->  out_dir/predictions.jsonl (+ results.json when K == 1, else shards/k-of-K/)
    merge_shards(bench, out_dir, shards=K)   ->  the shards' predictions as one predictions.jsonl and results.json

An item that cannot be shown to the model (EvalItem.error, or an image or video that does not decode) scores 0 with
its note and is counted, never dropped. Nothing here knows DVC, MLflow or the executor: gemctl.eval wraps it.

Depth items (kind "depth") are not answered in text: each batch's depth items go to the benchmark's
`grade_batch(model, items)` (else gem_stages.eval.depth_quality.grade_depth_batch(model, items)), which samples and
scores them; their predictions rows have empty text. The first such batch also draws depth_sheet.png (image |
generated | ground truth) beside the results.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .benchmark import Benchmark, EvalItem, Graded, aggregate

PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"
SHEET = "depth_sheet.png"  # depth benchmarks: image | generated | ground truth for the first items


def select(items: list[EvalItem], limit: int | None, shard: tuple[int, int]) -> list[EvalItem]:
    """The first `limit` items, then those of shard k of K (item i goes to shard i % K): the shards of one limit
    together hold exactly its items."""
    k, n = shard
    if not 0 <= k < n:
        raise InputError(f"shard {k} of {n} does not exist: shards are 0..{n - 1}")
    return [it for i, it in enumerate(items[:limit] if limit else items) if i % n == k]


def digest(path: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 (first 16 hex) of a file or a folder's files (relative names and md5s): the benchmark data's and an
    out-of-pipeline checkpoint's identity. `skip`: top-level entries left out (a checkpoint's own eval/). The md5s
    come through the digest cache (gem_stages.data.digest_cache): an unchanged file is not read again."""
    from gem_stages.data.digest_cache import DigestCache

    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.relative_to(path).parts[0] not in skip)
    with DigestCache() as cache:
        for f in files:
            h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
            h.update(cache.md5(f).encode())
    return h.hexdigest()[:16]


def _image(x: Any, root: Path):
    """An EvalItem image (path, bytes, {"bytes": ...} from parquet, or PIL) as an RGB PIL image."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, dict) and "bytes" in x:  # HF datasets' parquet image column
        x = x["bytes"]
    if isinstance(x, bytes | bytearray):
        with Image.open(io.BytesIO(x)) as im:
            return im.convert("RGB")
    p = Path(x)
    with Image.open(p if p.is_absolute() else root / p) as im:
        return im.convert("RGB")


def show(item: EvalItem, root: Path) -> list:
    """The images the model sees for `item` (a video's frames, else its images). Raises ValueError with the reason
    when one does not decode."""
    if item.error:
        raise ValueError(item.error)
    if item.video:
        from gem_stages.data.video import VideoError, decode_video

        video = Path(item.video) if Path(item.video).is_absolute() else root / item.video
        try:
            return decode_video(video)
        except (VideoError, OSError) as e:
            raise ValueError(f"{item.video}: {e}") from None
    try:
        return [_image(x, root) for x in item.images]
    except Exception as e:  # PIL raises many types for a broken file; any of them: the item is undecodable
        raise ValueError(f"image does not decode ({type(e).__name__}: {e})") from None


def _generate(model, samples: list[dict], max_new_tokens: int) -> list[str]:
    import torch

    from gem_models.processor import batch_to

    device = next(model.parameters()).device
    batch = batch_to(model.processor(samples, padding_side="left"), device)
    with torch.inference_mode():
        return model.generate(batch, max_new_tokens=max_new_tokens)


def _grade_depth(model, bench: Benchmark, items: list[EvalItem], sheet: Path | None) -> list[Graded]:
    """Depth items: sampled and scored by the benchmark's own `grade_batch(model, items, sheet_path=...)` when it
    has one, else by the depth-quality hook (gem_stages.eval.depth_quality.grade_depth_batch)."""
    grade_batch = getattr(bench, "grade_batch", None)
    if grade_batch is None:
        try:
            from .depth_quality import grade_depth_batch
        except ImportError:
            raise InputError(f"benchmark {bench.name} has depth items, and depth scoring "
                             "(gem_stages.eval.depth_quality) is not part of this version") from None
        grade_batch = partial(grade_depth_batch, model)
    else:
        grade_batch = partial(grade_batch, model)
    return grade_batch(items, sheet_path=sheet) if sheet is not None else grade_batch(items)


def evaluate(model, bench: Benchmark, out_dir: Path, *, batch_size: int = 8, limit: int | None = None,
             shard: tuple[int, int] = (0, 1), max_new_tokens: int = 32, settings: dict | None = None,
             items: list[EvalItem] | None = None) -> dict:
    """Score the model on `bench` (see the module doc); returns results.json's content (shard 0 of 1) or the
    shard's own aggregate. `settings` (checkpoint, data digest...) are recorded in results.json as they are."""
    out_dir = Path(out_dir)
    k, n = shard
    target = out_dir if n == 1 else shard_dir(out_dir, k, n)
    chosen = select(bench.items() if items is None else items, limit, shard)
    rows: list[dict] = []
    sheet: Path | None = target / SHEET
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        prompts = [bench.prompt(it) for it in part]
        shown: list[list | None] = []
        notes: list[str] = []
        for it in part:
            try:
                shown.append(show(it, bench.root))
                notes.append("")
            except ValueError as e:
                shown.append(None)
                notes.append(f"undecodable: {e}")
        graded: dict[str, Graded] = {}
        texts: dict[str, str] = {}
        for it, note in zip(part, notes):
            if note:
                graded[it.id] = Graded(it.id, None, 0.0, note)
                texts[it.id] = ""
        depth = [it for it, s in zip(part, shown) if it.kind == "depth" and s is not None]
        if depth:
            for g in _grade_depth(model, bench, depth, sheet):
                graded[g.id], texts[g.id] = g, ""
            sheet = None  # one sheet: the first items drawn
        text_items = [(it, p, s) for it, p, s in zip(part, prompts, shown) if it.id not in graded]
        if text_items:
            samples = [{"images": s, "conversations": [{"from": "human", "value": p}]} for _, p, s in text_items]
            for (it, _, _), text in zip(text_items, _generate(model, samples, max_new_tokens)):
                graded[it.id], texts[it.id] = bench.grade(it, text), text
        for it, prompt in zip(part, prompts):
            g = graded[it.id]
            rows.append({"id": it.id, "category": it.category, "prompt": prompt, "text": texts[it.id],
                         "parsed": g.parsed, "answer": _plain(it.answer), "score": g.score, "note": g.note})
    _write_predictions(target / PREDICTIONS, rows)
    results = _results(bench, chosen, rows, {**(settings or {}), "limit": limit, "shards": n,
                                              "batch_size": batch_size, "max_new_tokens": max_new_tokens})
    atomic_write_text(target / RESULTS, json.dumps(results, indent=2, default=str) + "\n")
    return results


def shard_dir(out_dir: Path, k: int, n: int) -> Path:
    return Path(out_dir) / "shards" / f"{k}-of-{n}"


def merge_shards(bench: Benchmark, out_dir: Path, shards: int, *, limit: int | None = None,
                 settings: dict | None = None, items: list[EvalItem] | None = None) -> dict:
    """The shards' predictions as one predictions.jsonl (in item order) and results.json; the shard folders are
    removed once merged. A missing shard is an error (never a partial score)."""
    out_dir = Path(out_dir)
    chosen = select(bench.items() if items is None else items, limit, (0, 1))
    by_id: dict[str, dict] = {}
    shard_results = []
    for k in range(shards):
        d = shard_dir(out_dir, k, shards)
        if not (d / RESULTS).is_file():
            raise InputError(f"shard {k} of {shards} has no results in {d}: run it again")
        shard_results.append(json.loads((d / RESULTS).read_text()))
        for line in (d / PREDICTIONS).read_text().splitlines():
            row = json.loads(line)
            by_id[row["id"]] = row
    missing = [it.id for it in chosen if it.id not in by_id]
    if missing:
        raise InputError(f"the shards in {out_dir / 'shards'} lack {len(missing)} item(s) (first: {missing[0]}): "
                         "they were run on other data or another limit; run them again")
    rows = [by_id[it.id] for it in chosen]
    _write_predictions(out_dir / PREDICTIONS, rows)
    base = {k: v for k, v in shard_results[0].get("settings", {}).items()}
    results = _results(bench, chosen, rows, {**base, **(settings or {}), "shards": shards})
    atomic_write_text(out_dir / RESULTS, json.dumps(results, indent=2, default=str) + "\n")
    import shutil

    if (shard_dir(out_dir, 0, shards) / SHEET).is_file():  # shard 0 holds the first items: its sheet is the one
        os.replace(shard_dir(out_dir, 0, shards) / SHEET, out_dir / SHEET)
    shutil.rmtree(out_dir / "shards", ignore_errors=True)
    return results


def _results(bench: Benchmark, items: list[EvalItem], rows: list[dict], settings: dict) -> dict:
    graded = [Graded(r["id"], r["parsed"], float(r["score"]), r["note"]) for r in rows]
    out = aggregate(bench, items, graded)
    depth = [g for g, item in zip(graded, items) if item.kind == "depth"]
    if depth:  # all three depth metrics, not only the per-item score (delta1)
        from .depth_quality import depth_summary

        out["depth"] = depth_summary([g for g in depth if isinstance(g.parsed, dict)])
    return {**out, "settings": settings}


def _write_predictions(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def _plain(x: Any) -> Any:
    """Ground truth as JSON can hold it (a mask or depth array is named, not dumped)."""
    if x is None or isinstance(x, str | int | float | bool):
        return x
    if isinstance(x, list | tuple) and all(isinstance(v, int | float | str) for v in x):
        return list(x)
    return type(x).__name__


def load_model(checkpoint: Path, device: str = "auto"):
    """The GemModel saved in `checkpoint`, in eval mode, on `device` (auto: CUDA when available)."""
    import torch

    from gem_models.gem import CONFIG_FILE, GemModel

    checkpoint = Path(checkpoint)
    if not (checkpoint / CONFIG_FILE).is_file():
        raise InputError(f"{checkpoint} is not a GemModel checkpoint (no config file): give a stage's model folder, "
                         "e.g. runs/<recipe>/stage3/model")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return GemModel.load(os.fspath(checkpoint)).to(device).eval()


