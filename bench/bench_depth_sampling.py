"""Depth sampling: batches of 8 images (one backbone pass, one CFG sampling loop) vs a per-image loop like the
release's (a backbone pass and a full sampling loop per image), same tiny GEM model, same steps and guidance
(target: batched >= 6x the images/s).

    python bench/bench_depth_sampling.py [--device cuda] [--images 32] [--steps 30]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_models.gem import GemModel  # noqa: E402
from gem_models.processor import batch_to  # noqa: E402
from gem_stages.data.config import DataConfig  # noqa: E402
from gem_stages.eval.depth_quality import DEPTH_PROMPT  # noqa: E402
from gem_stages.eval.gem_synth import GemSynthDepth, write_heldout  # noqa: E402
from gemctl.recipe import resolve  # noqa: E402

BATCH = 8


def sample(model, images, batch_size: int, steps: int, device: str) -> float:
    """Images/s drawing depth for `images` in batches of `batch_size` (CFG at the model's guidance scale)."""
    generator = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        samples = [
            {"images": [image], "conversations": [{"from": "human", "value": DEPTH_PROMPT}]}
            for image in images[start : start + batch_size]
        ]
        batch = batch_to(model.processor(samples, padding_side="left"), device)
        model.sample_depth(batch, steps=steps, generator=generator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="Euler steps (the release's default is 30)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = resolve(Path(__file__).resolve().parents[1] / "recipes", "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        write_heldout(DataConfig(), Path(tmp) / "heldout", num_scenes=args.images)
        items = GemSynthDepth(Path(tmp) / "heldout").items()[: args.images]
        images = [Image.open(item.images[0]).convert("RGB") for item in items]
    model = GemModel.build(recipe.model, corpus=["depth"], seed=0).to(args.device).eval()
    guidance = model.depth_generator.cfg.guidance_scale
    sample(model, images[:BATCH], BATCH, args.steps, args.device)  # warm-up
    rates = {"one": [], "batched": []}
    for _ in range(3):  # interleaved, best of 3
        rates["one"].append(sample(model, images, 1, args.steps, args.device))
        rates["batched"].append(sample(model, images, BATCH, args.steps, args.device))
    one, batched = max(rates["one"]), max(rates["batched"])
    print(f"{len(images)} images, {args.steps} steps, guidance {guidance}, device {args.device}")
    print(f"per-image loop   {one:8.2f} images/s")
    print(f"batches of {BATCH}     {batched:8.2f} images/s   ratio {batched / one:.2f}   target >= 6: "
          f"{'ok' if batched / one >= 6 else 'MISSED'}")
