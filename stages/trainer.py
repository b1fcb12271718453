"""One trainer for every stage: accelerate, gradient accumulation, warm-up + schedule, clipping, atomic resumable
checkpoints and exact resume.

Exactness by construction: the data order of every micro-batch is a pure function of (seed, micro-step), and every
random draw of a step (noise, timesteps, CFG dropout, dropout layers) comes from generators seeded by (seed, step,
micro-step, rank). A run stopped after step k and resumed from its checkpoint (model, optimiser, scheduler, step)
therefore replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .accelerator import build_accelerator
from .config import RuntimeConfig, TrainStageConfig
from .tracker import NullTracker, Tracker

FINAL_LOSS_STEPS = 20  # micro-batches averaged into TrainResult.losses


@dataclass
class TrainResult:
    status: str  # "completed" or "preempted" (checkpointed; run again to resume)
    step: int  # optimiser steps done
    losses: dict[str, float] = field(default_factory=dict)  # mean of each loss part over the last micro-batches
    resumed_from: int = 0  # step the run resumed from (0 = fresh)
    seconds: float = 0.0
    steps_per_second: float = 0.0


def step_seed(seed: int, *parts: int) -> int:
    """A well-mixed 63-bit seed for one draw site (splitmix-style; Python's hash() is salted per process)."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for p in parts:
        x = (x ^ (p + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class MicroBatches(Dataset):
    """Item m = the collated micro-batch this rank trains on at micro-step m, over an endless stream of epochs,
    each a fresh permutation seeded by (seed, epoch). Indexable, so resuming is just starting at m."""

    def __init__(self, samples: Sequence, collate: Callable, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(samples) == 0:
            raise ValueError("the training set is empty")
        self.samples, self.collate = samples, collate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self._perm_epoch, self._perm = -1, None

    def indices(self, m: int) -> list[int]:
        n = len(self.samples)
        start = (m * self.world_size + self.rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch = p // n
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(step_seed(self.seed, 1, epoch))
                self._perm, self._perm_epoch = torch.randperm(n, generator=g).tolist(), epoch
            out.append(self._perm[p % n])
        return out

    def __len__(self) -> int:  # effectively endless; the trainer decides where to stop
        return sys.maxsize

    def __getitem__(self, m: int):
        return self.collate([self.samples[i] for i in self.indices(m)])


def set_trainable(model: torch.nn.Module, groups: dict[str, torch.nn.Module], trainable: list[str]) -> list[str]:
    """Freeze everything, then unfreeze the named module groups. Returns the groups that had parameters."""
    model.requires_grad_(False)
    present = []
    for name in trainable:
        module = groups.get(name)
        if module is None:
            raise ValueError(f"stage trains '{name}' but this model has no such part: remove it from trainable")
        module.requires_grad_(True)
        present.append(name)
    return present


def total_steps(cfg: TrainStageConfig, num_samples: int, world_size: int) -> int:
    """Optimiser steps of a stage: cfg.steps, or enough for cfg.epochs passes over the data when that is set."""
    if cfg.epochs is None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil(cfg.epochs * num_samples / per_step))


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _checkpoints(work_dir: Path) -> list[Path]:
    return sorted(p for p in work_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


def train(
    model: torch.nn.Module,
    groups: dict[str, torch.nn.Module],
    cfg: TrainStageConfig,
    runtime: RuntimeConfig,
    samples: Sequence,
    collate: Callable,
    *,
    seed: int,
    work_dir: Path,
    tracker: Tracker | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int, dict[str, float], float], None] | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps optimiser steps (or cfg.epochs passes over `samples`); resume from the newest
    checkpoint in work_dir if any.

    `model(batch, weights=..., generator=...)` must return a dict with "loss" (tensor) and float loss parts.
    """
    tracker = tracker or NullTracker()
    work_dir = Path(work_dir)
    accelerator = build_accelerator(runtime, cfg.grad_accum, cfg.max_grad_norm)
    # DeepSpeed divides the loss by its accumulation steps itself; everywhere else the trainer does
    loss_scale = 1.0 if accelerator.distributed_type == "DEEPSPEED" else 1.0 / cfg.grad_accum
    set_trainable(model, groups, cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = total_steps(cfg, len(samples), accelerator.num_processes)
    warmup = int(round(cfg.warmup_ratio * total))
    # Not prepared by accelerate: its wrapper steps a scheduler once per process, which would change the schedule
    # with the world size. It is registered for checkpointing instead.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, warmup, total))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    start = 0
    found = _checkpoints(work_dir) if work_dir.exists() else []
    if found:
        accelerator.load_state(str(found[-1]))
        start = json.loads((found[-1] / "trainer_state.json").read_text())["step"]

    weights = {"lm": cfg.loss.lm, "depth": cfg.loss.depth, "action": cfg.loss.action}
    rank, world = accelerator.process_index, accelerator.num_processes
    batches = MicroBatches(samples, collate, cfg.batch_size, seed, rank, world)
    loader = DataLoader(batches, sampler=range(start * cfg.grad_accum, total * cfg.grad_accum),
                        batch_size=None, num_workers=runtime.num_workers)
    micro_batches = iter(loader)

    model.train()
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    # the reported final losses average the last steps: one step of a flow-matching loss is noise
    recent: collections.deque[dict[str, float]] = collections.deque(maxlen=FINAL_LOSS_STEPS)
    t0 = time.perf_counter()
    step = start
    status = "completed"
    while step < total:
        if _stop_requested(should_stop, accelerator):
            status = "preempted"
            break
        torch.manual_seed(step_seed(seed, 2, step, rank))  # dropout layers and anything else on the global RNG
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(micro_batches), accelerator.device)
            generator = torch.Generator(device=accelerator.device).manual_seed(step_seed(seed, 3, step, micro, rank))
            sync = micro == cfg.grad_accum - 1
            with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                with accelerator.autocast():
                    out = model(batch, weights=weights, generator=generator)
                accelerator.backward(out["loss"] * loss_scale)
            parts = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
            for k, v in parts.items():
                window.setdefault(k, []).append(v)
            recent.append(parts)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % cfg.log_every == 0 or step == total:
            last = {k: sum(v) / len(v) for k, v in window.items()}
            last["lr"] = scheduler.get_last_lr()[0]
            window.clear()
            if accelerator.is_main_process:
                tracker.log_metrics(last, step)
        if progress is not None and accelerator.is_main_process:
            progress(step, total, last, time.perf_counter() - t0)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            _save(accelerator, work_dir, step, cfg.keep_checkpoints)

    if status == "preempted":
        _save(accelerator, work_dir, step, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    done = step - start
    final = {k: sum(r[k] for r in recent) / len(recent) for k in (recent[0] if recent else {})}
    return TrainResult(status=status, step=step, losses=final, resumed_from=start, seconds=seconds,
                       steps_per_second=done / seconds if seconds > 0 else 0.0)


def _stop_requested(should_stop, accelerator) -> bool:
    flag = bool(should_stop and should_stop())
    if accelerator.num_processes > 1:
        # every rank must stop at the same step boundary, or the collectives of the next step would hang
        t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
    return flag


def _save(accelerator, work_dir: Path, step: int, keep: int) -> None:
    """Write ckpt-<step> atomically: fill ckpt-<step>.tmp, then rename; drop the oldest beyond `keep`."""
    final = work_dir / f"ckpt-{step:08d}"
    tmp = work_dir / f"ckpt-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
