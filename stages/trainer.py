"""One trainer for every stage, in the shape of torchtitan's Trainer: accelerate, gradient accumulation, warm-up +
schedule, clipping, crash-safe checkpoints and exact resume.

Exact by construction. Micro-batch `micro` of optimiser step `step` on data shard `rank` of `world` has the global
index g = (step * grad_accum + micro) * world + rank; its samples and every random draw it makes (noise, timesteps and
CFG dropout through its generator, dropout layers through the global seed) are pure functions of (seed, g). Hence
- a run stopped after step k and resumed from its checkpoint replays exactly the steps an uninterrupted run takes;
- W ranks accumulating A micro-batches compute what one process accumulating A*W computes over the same
  micro-batches (DDP averages the ranks' gradients, accumulation the micro-batches'), up to float summation order.

Checkpoints survive SIGKILL at any moment: ckpt-<step> is filled as ckpt-<step>.tmp and renamed when complete;
old ones are renamed to .trash-ckpt-<step> before they are deleted. Leftovers of a killed run are removed on start.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .accelerator import build_accelerator
from .config import RuntimeConfig, TrainStageConfig
from .files import removed_on_failure
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
    """Item m = the collated micro-batch that data shard `rank` of `world_size` trains on at its micro-step m: global
    micro-batch g = m * world_size + rank of an endless stream of epochs, each a fresh permutation seeded by
    (seed, epoch). Indexable, so resuming is just starting at m."""

    def __init__(self, samples: Sequence, collate: Callable, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(samples) == 0:
            raise ValueError("the training set is empty")
        self.samples, self.collate = samples, collate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self._perm_epoch, self._perm = -1, None

    def global_index(self, m: int) -> int:
        """m = step * grad_accum + micro, so this is (step * grad_accum + micro) * world + rank."""
        return m * self.world_size + self.rank

    def indices(self, m: int) -> list[int]:
        n = len(self.samples)
        start = self.global_index(m) * self.batch_size
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
        indices = self.indices(m)
        if hasattr(self.samples, "draw"):  # samples with random draws of their own (augmentation): one seed each,
            start = self.global_index(m) * self.batch_size  # a function of the position in the sample stream
            return self.collate([self.samples.draw(i, step_seed(self.seed, 4, start + k))
                                 for k, i in enumerate(indices)])
        return self.collate([self.samples[i] for i in indices])


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



class Trainer:
    """Trains `model` for cfg.steps optimiser steps (or cfg.epochs passes over `samples`), resuming from the newest
    checkpoint in work_dir. `model(batch, weights=..., generator=...)` returns {"loss": tensor, part: tensor|float}:
    each part the batch computed (a part it had no target for is absent, and so is its logged value for that step).

    shard = (rank, world): which slice of each global batch this process trains on; None = the accelerator's
    (process_index, num_processes). Giving it explicitly replays on one process what one rank of a job saw.
    The trainer is itself a checkpointed object: its state is the step count.
    """

    def __init__(self, model: torch.nn.Module, groups: dict[str, torch.nn.Module], cfg: TrainStageConfig,
                 runtime: RuntimeConfig, samples: Sequence, collate: Callable, *, seed: int, work_dir: Path,
                 tracker: Tracker | None = None, shard: tuple[int, int] | None = None):
        self.cfg, self.seed, self.work_dir = cfg, seed, Path(work_dir)
        self.num_workers = runtime.num_workers
        self.tracker = tracker or NullTracker()
        self.accelerator = acc = build_accelerator(runtime, cfg.grad_accum, cfg.max_grad_norm)
        self.rank, self.world = shard or (acc.process_index, acc.num_processes)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"data shard {self.rank} of {self.world} does not exist")
        # DeepSpeed divides the loss by its accumulation steps itself; everywhere else the trainer does
        self.loss_scale = 1.0 if acc.distributed_type == "DEEPSPEED" else 1.0 / cfg.grad_accum
        self.weights = {"lm": cfg.loss.lm, "depth": cfg.loss.depth, "action": cfg.loss.action}
        set_trainable(model, groups, cfg.trainable)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters instead of a handful per update (CPU and CUDA): at gem-2b's 3.44 B
        # trainable parameters the optimiser is a pass over memory that a multi-kernel update makes several times
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.total = total_steps(cfg, len(samples), self.world)
        warmup = int(round(cfg.warmup_ratio * self.total))
        # Not prepared by accelerate: its wrapper steps a scheduler once per process, which would change the schedule
        # with the world size. It is registered for checkpointing instead, like the step count (self).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, warmup, self.total))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler, self)
        self.batches = MicroBatches(samples, collate, cfg.batch_size, seed, self.rank, self.world)
        self.step = 0

    # ----- checkpointed state (accelerate saves it in STATE_FILE) -----
    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    # ----- training -----
    def train_step(self, micro_batches: Iterator) -> list[dict[str, torch.Tensor]]:
        """One optimiser step over grad_accum micro-batches -> each micro-batch's detached loss parts (on device:
        no host sync here)."""
        acc, cfg = self.accelerator, self.cfg
        parts = []
        for micro in range(cfg.grad_accum):
            g = self.batches.global_index(self.step * cfg.grad_accum + micro)
            torch.manual_seed(step_seed(self.seed, 2, g))  # dropout layers and anything else on the global RNG
            generator = torch.Generator(device=acc.device).manual_seed(step_seed(self.seed, 3, g))
            batch = _to_device(next(micro_batches), acc.device)
            last = micro == cfg.grad_accum - 1
            with acc.no_sync(self.model) if not last else contextlib.nullcontext():
                with acc.autocast():
                    out = self.model(batch, weights=self.weights, generator=generator)
                acc.backward(out["loss"] * self.loss_scale)
            parts.append(_logged_parts(out, acc.device))
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return parts

    def train(self, should_stop: Callable[[], bool] | None = None,
              progress: Callable[[int, int, dict[str, float], float], None] | None = None) -> TrainResult:
        """Resume, then step until done or until should_stop() (checked at step boundaries, agreed by all ranks),
        then checkpoint. progress(step, total, last logged losses, seconds) is called after each step on rank 0."""
        acc, cfg = self.accelerator, self.cfg
        self.resume()
        start = self.step
        # pinned host memory: the step's non_blocking copies to the GPU overlap with its work
        loader = DataLoader(self.batches, sampler=range(start * cfg.grad_accum, self.total * cfg.grad_accum),
                            batch_size=None, num_workers=self.num_workers, pin_memory=acc.device.type == "cuda")
        micro_batches = iter(loader)
        self.model.train()
        window: list[dict[str, torch.Tensor]] = []
        # the reported final losses average the last micro-batches: one step of a flow-matching loss is noise
        recent: collections.deque[dict[str, torch.Tensor]] = collections.deque(maxlen=FINAL_LOSS_STEPS)
        logged: dict[str, float] = {}
        status, t0 = "completed", time.perf_counter()
        while self.step < self.total:
            if _stop_requested(should_stop, acc):
                status = "preempted"
                break
            parts = self.train_step(micro_batches)
            window += parts
            recent.extend(parts)
            if self.step % cfg.log_every == 0 or self.step == self.total:
                logged = {**_means(window), "lr": self.scheduler.get_last_lr()[0]}  # the only host sync
                window.clear()
                if acc.is_main_process:
                    self.tracker.log_metrics(logged, self.step)
            if progress is not None and acc.is_main_process:
                progress(self.step, self.total, logged, time.perf_counter() - t0)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total:
                self.save_checkpoint()
        if status == "preempted":
            self.save_checkpoint()
        acc.wait_for_everyone()
        seconds = time.perf_counter() - t0
        return TrainResult(status=status, step=self.step, losses=_means(list(recent)), resumed_from=start,
                           seconds=seconds, steps_per_second=(self.step - start) / seconds if seconds > 0 else 0.0)

    # ----- checkpoints -----
    def resume(self) -> None:
        """Drop what a killed run left half-done, then load the newest complete checkpoint, if any."""
        acc = self.accelerator
        if acc.is_main_process and self.work_dir.is_dir():
            for leftover in [*self.work_dir.glob("ckpt-*.tmp"), *self.work_dir.glob(f"{TRASH}*")]:
                shutil.rmtree(leftover, ignore_errors=True)
        acc.wait_for_everyone()
        found = checkpoints(self.work_dir)
        if found:
            refuse_unsafe_pickles(found[-1])
            acc.load_state(str(found[-1]))

    def save_checkpoint(self) -> None:
        """Write ckpt-<step> so that it exists complete or not at all; keep the newest cfg.keep_checkpoints."""
        acc = self.accelerator
        final = self.work_dir / f"ckpt-{self.step:08d}"
        if final.is_dir():  # stopped again before another step: this very state is on disk already
            return
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        # Resume state, read by this trainer only: torch's format keeps tied weights (lm_head = embeddings) tied,
        # where safetensors would drop one with a warning at every save. The stage's model stays safetensors.
        # a full disk (or a kill) mid-write: the newest complete checkpoint is untouched; the half one goes at once
        with removed_on_failure(tmp):
            acc.save_state(str(tmp), safe_serialization=False)
        acc.wait_for_everyone()
        if acc.is_main_process:
            _fsync_tree(tmp)  # the rename must not reach the disk before the files do (a crash of the machine)
            os.replace(tmp, final)
            for old in checkpoints(self.work_dir)[:-self.cfg.keep_checkpoints]:
                _discard(old)
        acc.wait_for_everyone()


def train(model: torch.nn.Module, groups: dict[str, torch.nn.Module], cfg: TrainStageConfig, runtime: RuntimeConfig,
          samples: Sequence, collate: Callable, *, seed: int, work_dir: Path, tracker: Tracker | None = None,
          should_stop: Callable[[], bool] | None = None,
          progress: Callable[[int, int, dict[str, float], float], None] | None = None,
          shard: tuple[int, int] | None = None) -> TrainResult:
    """Trainer(...).train(...) in one call (see Trainer for the arguments)."""
    trainer = Trainer(model, groups, cfg, runtime, samples, collate, seed=seed, work_dir=work_dir, tracker=tracker,
                      shard=shard)
    return trainer.train(should_stop, progress)


TRASH = ".trash-"  # prefix of a checkpoint being deleted
# accelerate names a registered object's state by its registration index: the scheduler is 0, the trainer 1
STATE_FILE = "custom_checkpoint_1.pkl"


def refuse_unsafe_pickles(checkpoint: Path) -> None:
    """Refuse a resume checkpoint whose pickles hold more than tensors and plain data, before accelerate reads it.

    accelerate unpickles the registered objects' states (custom_checkpoint_*.pkl) with weights_only=False, which would
    run whatever code a planted file names. Every pickle here is first read by torch's weights-only unpickler with
    accelerate's own allow-list (numpy RNG state): what this trainer writes passes, anything else is refused.
    """
    import pickle

    from accelerate.utils.other import load as weights_only_load

    from .errors import InputError

    for path in sorted([*checkpoint.glob("*.pkl"), *checkpoint.glob("*.bin")]):
        try:
            weights_only_load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ModuleNotFoundError) as err:
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: refused to load this resume checkpoint: it is not plain tensors and data as "
                             f"gemctl writes them ({why[:160]}); delete {checkpoint} to resume from an earlier "
                             "checkpoint or start the stage over") from None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimiser step a complete checkpoint holds (the trainer's own saved state)."""
    return int(torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)["step"])


def checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a .tmp one is being written, a .trash- one deleted)."""
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))


def _discard(path: Path) -> None:
    """Delete a checkpoint so that no half-deleted copy keeps its name: rename it out of the way, then delete."""
    trash = path.with_name(TRASH + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _logged_parts(out: dict, device) -> dict[str, torch.Tensor]:
    """A micro-batch's loss parts as logged. An output with "loss" alone had nothing to learn (no depth target in a
    depth-only stage, say): its loss is a zero that only keeps DDP's gradients in step, so it is not logged, and
    the means say honestly what the batches that had targets scored."""
    if set(out) == {"loss"}:
        return {}
    return {k: torch.as_tensor(v, device=device).detach().float() for k, v in out.items()}


def _means(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each loss part over the micro-batches that computed it, in one device-to-host copy."""
    keys = sorted({k for p in parts for k in p})
    if not keys:
        return {}
    means = torch.stack([torch.stack([p[k] for p in parts if k in p]).mean() for k in keys])
    return dict(zip(keys, means.tolist()))


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


def _stop_requested(should_stop, accelerator) -> bool:
    flag = bool(should_stop and should_stop())
    if accelerator.num_processes > 1:
        # every rank must stop at the same step boundary, or the collectives of the next step would hang
        t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
    return flag
