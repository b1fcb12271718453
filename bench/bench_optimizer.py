"""The trainer's optimiser update: AdamW fused (one kernel over all parameters, what the trainer uses) against
torch's default multi-tensor ("foreach") update, on the same parameters and gradients in the same run.

The parameters have gem-2b's stage-3 shapes (bench/gpu_step.py's build from models/presets.py: Qwen3-VL-2B's language
model and mergers, SANA's DiT and the connector, on the meta device), scaled to --scale of them (every tensor kept, each shortened):
the update is a pass over memory, so its time follows the bytes.

    python bench/bench_optimizer.py [--scale 0.05] [--device cpu|cuda] [--steps 5]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAINABLE = ["merger", "deepstack_merger", "language", "connector", "depth_generator"]  # gem-2b's stage 3


def stage3_shapes() -> list[int]:
    """Element counts of the trainable tensors of gem-2b's stage 3 (no memory: built on the meta device)."""
    from gpu_step import paper_model  # the GEM-2B build of bench/gpu_step.py

    groups = paper_model(torch.device("meta")).module_groups()
    return [p.numel() for name in TRAINABLE for p in groups[name].parameters()]


def update_time(params: list[torch.nn.Parameter], steps: int, **kind) -> float:
    """Seconds per AdamW step (after one untimed step that allocates the optimiser state)."""
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, **kind)
    opt.step()
    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="share of gem-2b's trainable parameters")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    sizes = [max(1, int(n * args.scale)) for n in stage3_shapes()]
    gen = torch.Generator().manual_seed(0)
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=gen).to(args.device))
        p.grad = torch.randn(n, generator=gen).to(args.device)
        params.append(p)
    total = sum(sizes)
    print(f"{len(sizes)} tensors, {total / 1e6:.0f} M parameters ({args.scale:g} of gem-2b stage 3's "
          f"{sum(stage3_shapes()) / 1e9:.2f} B) on {args.device}, {torch.get_num_threads()} threads")
    times = {"foreach": [], "fused": []}
    for _ in range(2):  # interleaved: the machine's other load hits both alike
        times["foreach"].append(update_time(params, args.steps, foreach=True))
        times["fused"].append(update_time(params, args.steps, fused=True))
    foreach, fused = min(times["foreach"]), min(times["fused"])
    print(f"AdamW foreach (torch's default)  {foreach * 1e3:8.1f} ms/step")
    print(f"AdamW fused (the trainer's)      {fused * 1e3:8.1f} ms/step   {foreach / fused:.2f}x faster")


if __name__ == "__main__":
    main()
