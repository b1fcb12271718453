"""Data loading with worker processes at 448-pixel images, against what a training step consumes.

The data is the files source at GEM's image size: N 448x448 JPEGs, each with its 16-bit depth PNG, in a GEM-format
JSONL, prepared as `gemctl data prepare` prepares it. It is read through the trainer's own DataLoader (MicroBatches,
batch_size=None, num_workers=W): each worker opens a micro-batch's JPEGs and depth PNGs and runs the processor at
gem-2b's settings (Qwen3-VL image processor, 16-pixel patches merged 2x2, so a 448x448 image stays 448x448 and is
196 tokens; the depth target's long side 448), i.e. everything a stage-3 step waits for before its forward.

Printed: samples/s for each W and per worker (W=0: the training process loads alone), each worker's first
micro-batch (start-up) apart, and the CPU time of one sample (samples/s per worker with a core to itself, which a
shared, busy machine does not show in wall-clock rates); then what a step consumes: the tiny recipe's stage-3 step measured here on the same
files, and gem-2b's stage-3 step on one H100 from bench/README.md (not measured here). Whether the loader keeps up
is rate(W) against the step's samples/s.

    python bench/bench_dataloader.py [--samples 64] [--batch 4] [--workers 0 1 2 4] [--batches 24]
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_models.config import BackboneConfig  # noqa: E402
from gem_models.gem import GemModel  # noqa: E402
from gem_models.processor import GemProcessor, make_image_processor  # noqa: E402
from gem_models.tokenizer import train_tiny_tokenizer  # noqa: E402
from gem_stages.data.config import AnnotationSet, DataConfig  # noqa: E402
from gem_stages.data.depth_png import save_depth_mm  # noqa: E402
from gem_stages.data.generate import prepare_dataset  # noqa: E402
from gem_stages.data.reader import GemSamples, text_corpus  # noqa: E402
from gem_stages.train import make_collate  # noqa: E402
from gem_stages.trainer import MicroBatches, train  # noqa: E402
from gemctl.recipe import resolve  # noqa: E402

SIDE = 448
# gem-2b's stage-3 step on one H100 (bench/README.md, gpu_step.py): samples of one 896x672 image and 1,102 tokens.
GEM_2B_TOKENS_PER_SAMPLE = 1102
GEM_2B_STEP = {"32 samples a step": 10_559 / GEM_2B_TOKENS_PER_SAMPLE, "1 (the recipe's batch)": 1_313 / 1102}


def write_files(root: Path, n: int, seed: int = 0) -> DataConfig:
    """n photographs-like JPEGs (smooth colour fields: they compress and decode like photos, unlike noise) with
    depth PNGs at depth/<name>.png and a JSONL of one-image questions; the files-source config that reads them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    with open(root / "annotations.jsonl", "w") as f:
        for i in range(n):
            name = f"img_{i:05d}.jpg"
            coarse = Image.fromarray(rng.integers(0, 255, (7, 7, 3), dtype=np.uint8))
            pixels = np.asarray(coarse.resize((SIDE, SIDE), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(pixels + rng.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name, quality=90)
            ramp = np.linspace(0.5, 4.0, SIDE, dtype=np.float32)
            save_depth_mm(root / "depth" / f"img_{i:05d}.png", ramp[:, None] + rng.uniform(0, 0.5, (SIDE, SIDE)))
            f.write(json.dumps({"image": name, "conversations": [
                {"from": "human", "value": f"<image>\nHow far is object {i % 7} from the camera, in metres?"},
                {"from": "gpt", "value": f"About {1 + i % 30 / 10:.1f} metres; the table edge is closer."}]}) + "\n")
    files = AnnotationSet(name="bench", annotations=str(root / "annotations.jsonl"),
                          data_path=str(root / "images"), depth_root=str(root))
    return DataConfig(source="files", files=[files])


def gem_2b_processor(corpus) -> GemProcessor:
    """gem-2b's processing without its download: its image processor settings, a tiny tokenizer (same kind of
    fast BPE, smaller vocabulary)."""
    cfg = BackboneConfig(pretrained=None)  # the defaults are gem-2b's patch, merge and pixel bounds
    return GemProcessor(train_tiny_tokenizer(corpus, cfg.vocab_size), make_image_processor(cfg), cfg.max_length,
                        depth_long_side=448, depth_multiple_of=32)


def loader_rate(samples, collate, batch: int, workers: int, batches: int) -> tuple[float, float, float]:
    """(seconds to the first micro-batch, samples/s after it, this process's CPU seconds per sample after it) through
    the trainer's DataLoader. With no workers the CPU time is the loading itself: what a worker with a core of its
    own needs per sample, however busy the machine is."""
    micro = MicroBatches(samples, collate, batch, seed=0)
    # each worker's first micro-batch is start-up (fork, imports touched first): timed apart
    n = batches + max(workers, 1)
    loader = DataLoader(micro, sampler=range(n), batch_size=None, num_workers=workers)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(max(workers, 1)):
        next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in it:
        pass
    t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, batches * batch / (t2 - t1), (c2 - c1) / (batches * batch)


def tiny_step_rate(model: GemModel, samples, cfg, runtime, batch: int, work: Path) -> float:
    """Samples/s of the tiny recipe's stage-3 trainer step on one collated micro-batch of these files."""
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 20, "batch_size": batch, "warmup_ratio": 0.0, "checkpoint_every": 0})
    micro = make_collate(model)([samples[i] for i in range(batch)])
    result = train(model, model.module_groups(), cfg, runtime, [micro], lambda items: items[0], seed=0,
                   work_dir=work)
    return result.steps_per_second * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="JPEG + depth PNG pairs written")
    parser.add_argument("--batch", type=int, default=4, help="samples per micro-batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4], help="DataLoader workers to try")
    parser.add_argument("--batches", type=int, default=24, help="micro-batches timed per setting, after start-up")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a loader worker runs (torch sets 1 thread in workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_cfg = write_files(tmp / "files", args.samples)
        prepare_dataset(data_cfg, tmp / "data")
        samples = GemSamples(tmp / "data")
        processor = gem_2b_processor(text_corpus(tmp / "data"))
        first = processor([samples[0]])
        tokens = int(first["attention_mask"].sum())
        print(f"{len(samples)} samples of one {SIDE}x{SIDE} JPEG + 16-bit depth PNG; gem-2b processing: "
              f"{tuple(first['pixel_values'].shape)} patch values, {tokens} tokens, depth target "
              f"{tuple(first['depth_pixel_values'][0].shape)}; micro-batch {args.batch}; {os.cpu_count()} CPUs")
        print(f"{'workers':>8} {'start-up s':>11} {'samples/s':>10} {'per worker':>11}")
        rates = {}
        for w in args.workers:
            startup, rates[w], _ = loader_rate(samples, processor, args.batch, w, args.batches)
            print(f"{w:>8} {startup:>11.2f} {rates[w]:>10.1f} {rates[w] / max(w, 1):>11.1f}")
        best = max(rates.values())
        cpu = loader_rate(samples, processor, args.batch, 0, args.batches)[2]
        per_worker = 1 / cpu  # a worker with a core to itself
        print(f"one sample costs {cpu * 1e3:.1f} ms of CPU: {per_worker:.1f} samples/s per worker with a free core "
              f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        recipe = resolve(Path(__file__).resolve().parents[1] / "recipes", "tiny")
        tiny = GemModel.build(recipe.model, corpus=text_corpus(tmp / "data"), seed=0)
        tiny_load = 1 / loader_rate(samples, make_collate(tiny), args.batch, 0, args.batches)[2]
        tiny_step = tiny_step_rate(tiny, samples, recipe.stages.stage3, recipe.runtime, args.batch, tmp / "work")
        print("a training step consumes (samples/s):")
        print(f"  tiny recipe, stage 3, here: {tiny_step:.1f} -> {math.ceil(tiny_step / tiny_load)} worker(s) at "
              f"{tiny_load:.1f} samples/s each (its own processing: a 64x64 budget)")
        for what, rate in GEM_2B_STEP.items():
            need = math.ceil(rate / per_worker)
            print(f"  gem-2b stage 3 on one H100, {what}: {rate:.2f} (bench/README.md) -> {need} worker(s) at "
                  f"{per_worker:.1f} samples/s each")
        print(f"gem-2b's images are 896x672, 3x these pixels: budget ~3x the workers (its recipe has num_workers 8); "
              f"best measured here {best:.1f} samples/s")

if __name__ == "__main__":
    main()
