"""An evaluation through the mapping adapter end to end vs the bare generate loop, on 1,000 generated items and
the same tiny GEM model (target: end to end within 1.5x of the bare loop's time).

End to end = MappingBenchmark reads the JSONL and images, the runner prompts, generates in batches of 8, parses and
grades every answer and writes predictions.jsonl and results.json. The bare loop = the same prompts and images,
already in memory, through the processor and GemModel.generate in batches of 8: what the model alone costs.

    python bench/bench_eval_mapping.py [--items 1000] [--device cpu]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_models.gem import GemModel  # noqa: E402
from gem_models.processor import batch_to  # noqa: E402
from gem_stages.eval.mapping import MappingBenchmark  # noqa: E402
from gem_stages.eval.run import evaluate  # noqa: E402
from gemctl.recipe import resolve  # noqa: E402

BATCH = 8
MAX_NEW_TOKENS = 8
COLOURS = ["red", "green", "blue", "yellow"]


def write_benchmark(root: Path, n: int) -> Path:
    """n multiple-choice items over 16 small images, in a mapping file's layout (JSONL + images/)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    with open(root / "questions.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"question_id": f"q{i}", "question": "Which colour dominates the image?",
                                "image": f"{i % 16}.png", "options": COLOURS, "answer": "ABCD"[i % 4],
                                "question_type": "colour" if i % 2 else "shade"}) + "\n")
    mapping = {"name": "bench-mapping", "root": str(root), "records": "questions.jsonl", "image_root": "images",
               "fields": {"id": "question_id", "question": "question", "images": "image", "choices": "options",
                          "answer": "answer", "category": "question_type"}, "answer_format": "letter"}
    path = root / "bench-mapping.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def bare(model, bench, items, device: str) -> float:
    """Seconds for the prompts and images, in memory, through processor + generate in batches."""
    samples = [{"images": [Image.open(p).convert("RGB") for p in item.images],
                "conversations": [{"from": "human", "value": bench.prompt(item)}]} for item in items]
    t0 = time.perf_counter()
    for start in range(0, len(samples), BATCH):
        batch = batch_to(model.processor(samples[start:start + BATCH], padding_side="left"), device)
        model.generate(batch, max_new_tokens=MAX_NEW_TOKENS)
    return time.perf_counter() - t0


def end_to_end(model, mapping: Path, out: Path) -> float:
    t0 = time.perf_counter()
    evaluate(model, MappingBenchmark.from_file(mapping), out, batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS)
    return time.perf_counter() - t0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = resolve(Path(__file__).resolve().parents[1] / "recipes", "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        mapping = write_benchmark(Path(tmp) / "data", args.items)
        bench = MappingBenchmark.from_file(mapping)
        items = bench.items()
        model = GemModel.build(recipe.model, corpus=[bench.prompt(items[0]), *COLOURS], seed=0)
        model = model.to(args.device).eval()
        bare(model, bench, items[:BATCH], args.device)  # warm-up: first-call allocations
        times = {"bare": [], "e2e": []}
        for r in range(3):  # interleaved, best of 3: the machine's other load hits both alike
            times["bare"].append(bare(model, bench, items, args.device))
            times["e2e"].append(end_to_end(model, mapping, Path(tmp) / f"out{r}"))
    b, e = min(times["bare"]), min(times["e2e"])
    print(f"{len(items)} mapping-adapter items, batches of {BATCH}, max_new_tokens {MAX_NEW_TOKENS}, "
          f"device {args.device}")
    print(f"bare generate loop   {len(items) / b:8.1f} items/s")
    print(f"end to end           {len(items) / e:8.1f} items/s   time ratio {e / b:.2f}   target <= 1.5: "
          f"{'ok' if e / b <= 1.5 else 'MISSED'}")
