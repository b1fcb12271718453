"""Trainer steps/s vs a bare PyTorch loop on the same tiny GEM model and batch (target ratio >= 0.95).

Both loops do the same work per step: forward (all three losses of stage 4), backward, clip, AdamW, schedule.
The batch is collated once, so the comparison is of the training loops, not of data loading.
"""

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_models.gem import GemModel  # noqa: E402
from gem_stages.data.config import DataConfig  # noqa: E402
from gem_stages.data.generate import prepare_dataset  # noqa: E402
from gem_stages.data.reader import text_corpus  # noqa: E402
from gem_stages.train import make_collate, stage_samples  # noqa: E402
from gem_stages.trainer import lr_lambda, set_trainable, train  # noqa: E402
from gemctl.recipe import resolve  # noqa: E402

STEPS = 100


def bare_loop(model, cfg, batch) -> float:
    set_trainable(model, model.module_groups(), cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, fused=True)  # as the trainer
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, 0, STEPS))
    weights = {"lm": cfg.loss.lm, "depth": cfg.loss.depth, "action": cfg.loss.action}
    model.train()
    t0 = time.perf_counter()
    for step in range(STEPS):
        out = model(batch, weights=weights, generator=torch.Generator().manual_seed(step))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return STEPS / (time.perf_counter() - t0)


def trainer_loop(model, cfg, runtime, batch, work) -> float:
    result = train(model, model.module_groups(), cfg, runtime, [batch], lambda items: items[0], seed=0,
                   work_dir=work)
    return result.steps_per_second


if __name__ == "__main__":
    torch.set_num_threads(1)
    recipe = resolve(Path(__file__).resolve().parents[1] / "recipes", "tiny")
    cfg = recipe.stages.stage4
    # no periodic checkpoints: the bare loop has none (checkpoint cost is I/O, not loop overhead)
    cfg = type(cfg)(**{**cfg.__dict__, "steps": STEPS, "batch_size": 1, "warmup_ratio": 0.0, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare_dataset(DataConfig(num_scenes=4, num_episodes=2, episode_max_steps=30), data)
        base = GemModel.build(recipe.model, corpus=text_corpus(data), seed=0)
        samples = stage_samples("stage4", base, recipe.model, data)
        batch = make_collate(base)([samples[i] for i in range(4)])
        rates = {"bare": [], "trainer": []}
        for rep in range(5):  # interleaved, best of 5: the machine's other load hits both alike
            rates["bare"].append(bare_loop(copy.deepcopy(base), cfg, batch))
            rates["trainer"].append(trainer_loop(copy.deepcopy(base), cfg, recipe.runtime, batch,
                                                 Path(tmp) / f"w{rep}"))
    bare, ours = max(rates["bare"]), max(rates["trainer"])
    print(f"bare PyTorch loop  {bare:7.2f} steps/s")
    print(f"gemctl trainer     {ours:7.2f} steps/s   ratio {ours / bare:.3f}   target >= 0.95: "
          f"{'ok' if ours / bare >= 0.95 else 'MISSED'}")
