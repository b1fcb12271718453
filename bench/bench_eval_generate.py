"""Evaluation generation: batches of 8 left-padded prompts (greedy, KV cache) vs one prompt at a time, on the same
tiny GEM model and the same gem-synth held-out questions (target: batched >= 4x the items/s).

Both paths call GemModel.generate (transformers' generate: greedy, KV cache) with the same max_new_tokens; the
only difference is how many prompts share a call. Items/s counts prompts answered, processor time included.

    python bench/bench_eval_generate.py [--device cuda] [--items 64]
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
from gem_stages.eval.gem_synth import GemSynthQA, write_heldout  # noqa: E402
from gemctl.recipe import resolve  # noqa: E402

BATCH = 8
MAX_NEW_TOKENS = 24


def answer(model, bench, items, batch_size: int, device: str) -> float:
    """Items/s answering `items` in batches of `batch_size`."""
    t0 = time.perf_counter()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        samples = [
            {
                "images": [Image.open(p) for p in item.images],
                "conversations": [{"from": "human", "value": bench.prompt(item)}],
            }
            for item in chunk
        ]
        batch = batch_to(model.processor(samples, padding_side="left"), device)
        model.generate(batch, max_new_tokens=MAX_NEW_TOKENS)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(items) / (time.perf_counter() - t0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = resolve(Path(__file__).resolve().parents[1] / "recipes", "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        write_heldout(DataConfig(), Path(tmp) / "heldout", num_scenes=args.items // 3)
        bench = GemSynthQA(Path(tmp) / "heldout")
        items = bench.items()[: args.items]
        corpus = [item.question for item in items]
        model = GemModel.build(recipe.model, corpus=corpus, seed=0).to(args.device).eval()
        answer(model, bench, items[:BATCH], BATCH, args.device)  # warm-up: first-call allocations, kernels
        rates = {"one": [], "batched": []}
        for _ in range(3):  # interleaved, best of 3: the machine's other load hits both alike
            rates["one"].append(answer(model, bench, items, 1, args.device))
            rates["batched"].append(answer(model, bench, items, BATCH, args.device))
    one, batched = max(rates["one"]), max(rates["batched"])
    print(f"{len(items)} gem-synth questions, max_new_tokens {MAX_NEW_TOKENS}, device {args.device}")
    print(f"one item at a time  {one:8.2f} items/s")
    print(f"batches of {BATCH}        {batched:8.2f} items/s   ratio {batched / one:.2f}   target >= 4: "
          f"{'ok' if batched / one >= 4 else 'MISSED'}")
