"""Depth-generation quality: how close the depth generator's output is to measured depth, up to scale and shift.

The generator draws a colour-mapped depth image (depth_encoding.py) for each held-out image; batches of images are
sampled together with classifier-free guidance (GemModel.sample_depth). Each output is decoded back to a scalar
through the colour map (nearest colour-table entry), which is inverse depth up to an unknown affine map (the
training targets were normalised per map). The affine-invariant protocol of relative depth (MiDaS's evaluation)
then fits scale and shift by least squares to the ground-truth inverse depth over valid pixels, turns the aligned
inverse depth back into depth (capped at the map's farthest measured depth), and scores:

    AbsRel  mean |d - d*| / d*                      (lower is better)
    delta1  fraction of pixels with max(d/d*, d*/d) < 1.25   (higher is better; the item's score)
    RMSE    sqrt(mean (d - d*)^2), in metres         (lower is better)

over the valid ground-truth pixels, with the ground truth nearest-resized to the generated size. The item's score
(in [0, 1], what `aggregate` averages) is delta1; AbsRel and RMSE are in Graded.parsed and `depth_summary`.
The release has no depth evaluation: these numbers are gemctl's own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..data.depth_png import load_depth_m
from ..data.sample_format import find_depth
from ..errors import InputError
from .benchmark import Benchmark, EvalItem, Graded

DELTA_THRESHOLD = 1.25
# the image tokens come first and attend causally: the text after them does not change the depth condition
DEPTH_PROMPT = "Estimate the depth of the scene."
SHEET_CELL = 128  # pixels per side of one cell of the PNG sheet
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def align_affine(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Scale s and shift t minimising sum (s * pred + t - target)^2 (1-D arrays of valid pixels). A constant
    prediction carries no shape: s = 0 and t = mean(target)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    p = pred - pred.mean()
    var = float(p @ p)
    scale = float(p @ (target - target.mean())) / var if var > 0 else 0.0
    return scale, float(target.mean() - scale * pred.mean())


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """AbsRel, delta1 and RMSE of predicted vs ground-truth depth (1-D arrays of valid pixels, both > 0)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    ratio = np.maximum(pred / gt, gt / pred)
    return {
        "absrel": float(np.mean(np.abs(pred - gt) / gt)),
        "delta1": float(np.mean(ratio < DELTA_THRESHOLD)),
        "rmse": float(np.sqrt(np.mean((pred - gt) ** 2))),
    }


def score_depth(encoding: str, generated, gt_depth_m: np.ndarray) -> dict[str, float]:
    """One generated depth image [3, h, w] in [0, 1] against ground-truth depth (H, W) in metres (<= 0 invalid)
    -> metrics plus the fitted scale/shift and the number of valid pixels. ValueError when nothing is valid."""
    from gem_models.depth_encoding import decoded_inverse_depth, resize_nearest

    pred_inv, pred_valid = decoded_inverse_depth(encoding, generated)
    gt = resize_nearest(gt_depth_m, pred_inv.shape).astype(np.float64)
    valid = (gt > 0) & pred_valid
    if valid.sum() < 2:
        raise ValueError("the ground truth has fewer than 2 valid pixels")
    gt_inv = 1.0 / gt[valid]
    scale, shift = align_affine(pred_inv[valid], gt_inv)
    # aligned inverse depth below the farthest measured depth's (or negative) would be farther than anything seen
    aligned = np.maximum(scale * pred_inv[valid] + shift, gt_inv.min())
    return {
        **depth_metrics(1.0 / aligned, gt[valid]),
        "scale": scale,
        "shift": shift,
        "valid_pixels": int(valid.sum()),
    }


def _open_image(source):
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        return image.convert("RGB")


def _ground_truth(answer) -> np.ndarray:
    if isinstance(answer, (str, Path)):
        return load_depth_m(Path(answer))
    return np.asarray(answer, dtype=np.float32)


def grade_depth_batch(
    model,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 8,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    sheet_path: Path | None = None,
    sheet_rows: int = 4,
) -> list[Graded]:
    """Sample depth for each item's first image (batches of `batch_size`, CFG at the model's guidance scale unless
    given) and score it against item.answer (a 16-bit millimetre depth PNG path, or an (H, W) array in metres).

    Graded.score is delta1; Graded.parsed holds absrel, delta1, rmse, scale, shift and valid_pixels. An item whose
    image or depth does not decode, or whose ground truth has no valid pixels, scores 0 with an "undecodable: ..."
    note (never dropped). With sheet_path, the first `sheet_rows` scored items are drawn as image | generated |
    ground truth into that PNG. One generator seeded with `seed` draws all noise: same items, same numbers.
    """
    import torch

    from gem_models.processor import batch_to

    encoding = model.processor.depth_encoding
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    graded: dict[str, Graded] = {}
    shown: list[tuple[Any, Any, np.ndarray]] = []
    ready = []  # (item, image, ground truth) of the items that decode
    for item in items:
        if item.error:
            graded[item.id] = Graded(item.id, None, 0.0, f"undecodable: {item.error}")
            continue
        try:
            ready.append((item, _open_image(item.images[0]), _ground_truth(item.answer)))
        except (OSError, ValueError, IndexError) as e:
            graded[item.id] = Graded(item.id, None, 0.0, f"undecodable: {e}")
    model.eval()
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        samples = [
            {"images": [image], "conversations": [{"from": "human", "value": DEPTH_PROMPT}]}
            for _, image, _ in chunk
        ]
        batch = batch_to(model.processor(samples, padding_side="left"), device)
        generated = model.sample_depth(batch, steps=steps, guidance_scale=guidance_scale, generator=generator)
        for (item, image, gt), out in zip(chunk, generated):
            try:
                scores = score_depth(encoding, out, gt)
            except ValueError as e:
                graded[item.id] = Graded(item.id, None, 0.0, f"undecodable: {e}")
                continue
            graded[item.id] = Graded(item.id, scores, scores["delta1"])
            if sheet_path is not None and len(shown) < sheet_rows:
                shown.append((image, out.float().cpu(), gt))
    if sheet_path is not None and shown:
        write_sheet(Path(sheet_path), shown, encoding)
    return [graded[item.id] for item in items]


def depth_summary(graded: Sequence[Graded]) -> dict[str, Any]:
    """Mean AbsRel, delta1 and RMSE over the items that were scored, and how many were (results.json's depth part;
    undecodable items are in aggregate's counts and score 0 there)."""
    scored = [g.parsed for g in graded if g.parsed is not None]
    summary: dict[str, Any] = {"scored": len(scored)}
    for key in ("absrel", "delta1", "rmse"):
        summary[key] = float(np.mean([s[key] for s in scored])) if scored else None
    return summary


def write_sheet(path: Path, rows: Sequence[tuple[Any, Any, np.ndarray]], encoding: str) -> None:
    """A PNG with one row per item: the image | the generated depth | the ground truth in the same colour map."""
    from PIL import Image

    from gem_models.depth_encoding import encode_depth

    cell = (SHEET_CELL, SHEET_CELL)
    sheet = Image.new("RGB", (3 * SHEET_CELL, len(rows) * SHEET_CELL), "white")
    for r, (image, generated, gt) in enumerate(rows):
        size = tuple(generated.shape[1:])
        truth = (encode_depth(encoding, gt, size, max(size)) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        cells = [image] + [
            Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
            for x in (generated, truth)
        ]
        for c, im in enumerate(cells):
            sheet.paste(im.resize(cell, Image.BILINEAR), (c * SHEET_CELL, r * SHEET_CELL))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)


class DepthBenchmark(Benchmark):
    """Depth quality on a folder in the GEM layout: images/<name> with depth at depth/<name> (or its .png), 16-bit
    millimetre PNGs (the training data's rule, sample_format.find_depth). Items are kind "depth"; the runner
    grades them with `grade_batch` (the model draws depth; there is no text to parse)."""

    name: ClassVar[str] = "depth"
    metric: ClassVar[str] = "delta1"

    def items(self) -> list[EvalItem]:
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise InputError(
                f"{images_dir} does not exist: a depth benchmark needs images/ and depth/ under its root"
            )
        items = []
        for path in sorted(images_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            depth = find_depth(self.root, path.name)
            if depth is not None:
                items.append(EvalItem(path.stem, "depth", DEPTH_PROMPT, str(depth), images=[str(path)]))
        if not items:
            raise InputError(
                f"{images_dir} has no image with a depth map under {self.root / 'depth'}: "
                "add depth/<image name>.png (16-bit millimetres) for the images to score"
            )
        return items

    def prompt(self, item: EvalItem) -> str:
        return DEPTH_PROMPT

    def grade(self, item: EvalItem, text: str) -> Graded:
        raise TypeError("depth items are graded from the generated depth: call grade_batch(model, items)")

    def grade_batch(self, model, items: Sequence[EvalItem], **kwargs) -> list[Graded]:
        return grade_depth_batch(model, items, **kwargs)
