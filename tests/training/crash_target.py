"""A training process for the SIGKILL test: the real Trainer on a model big enough that a checkpoint write takes
a few milliseconds, checkpointing every step. Usage: python crash_target.py WORK_DIR STEPS. Writes WORK_DIR/final.pt
(the trained weights) when done."""

import os
import sys
from pathlib import Path

import torch

from gem_stages.config import LossWeights, RuntimeConfig, TrainStageConfig
from gem_stages.trainer import train


class Wide(torch.nn.Module):
    def __init__(self, width: int = 384):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, width), torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))

    def forward(self, batch, weights, generator):
        x = batch["x"] + 0.1 * torch.randn(batch["x"].shape, generator=generator)
        pred = self.head(torch.tanh(self.b(torch.tanh(self.a(x))))).squeeze(-1)
        depth = ((pred - batch["y"]) ** 2).mean()
        return {"loss": weights["depth"] * depth, "depth": depth.detach()}


def collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


if __name__ == "__main__":
    work_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    samples = [{"x": torch.randn(8, generator=torch.Generator().manual_seed(i)), "y": torch.tensor(float(i % 5))}
               for i in range(32)]
    model = Wide()
    cfg = TrainStageConfig(trainable=["a", "b", "head"], steps=steps, lr=1e-3, batch_size=4, grad_accum=2,
                           warmup_ratio=0.1, loss=LossWeights(depth=1.0), checkpoint_every=1, keep_checkpoints=2)
    groups = {"a": model.a, "b": model.b, "head": model.head}
    train(model, groups, cfg, RuntimeConfig(device="cpu"), samples, collate, seed=5, work_dir=work_dir)
    tmp = work_dir / "final.pt.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, work_dir / "final.pt")
