"""The training-stage program: build or load the model, pick the stage's data, train, write the checkpoint.

    stage1  connector init        base model             QA samples      L_depth
    stage2  depth warm-up         stage1's checkpoint    QA samples      L_depth
    stage3  joint                 stage2's checkpoint    QA samples      L_LM + 0.1 L_depth
    stage4  action expert         stage3's checkpoint    episodes        L_action + 0.1 L_depth

Which modules train, the loss weights and the schedule all come from the stage's TrainStageConfig.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch

from gem_models.config import GemModelConfig
from gem_models.gem import GemModel

from .config import RuntimeConfig, TrainStageConfig
from .data.reader import EpisodeWindows, GemSamples, action_statistics, text_corpus
from .errors import InputError
from .files import atomic_dir
from .tracker import Tracker
from .trainer import train

ACTION_PROMPT = "<image>\nWhat action should the robot take to {instruction}?"


class EpisodeSamples:
    """Episode windows as processor samples: the observation image (and depth) with the instruction as prompt."""

    def __init__(self, windows: EpisodeWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        return {"images": [w["image"]], "depths": [w["depth"]],
                "conversations": [{"from": "human", "value": ACTION_PROMPT.format(instruction=w["instruction"])}],
                "state": w["state"], "actions": w["actions"]}


def make_collate(model: GemModel) -> Callable[[list[dict]], dict]:
    processor = model.processor

    def collate(samples: list[dict]) -> dict:
        batch = processor(samples)
        if "actions" in samples[0]:
            batch["state"] = torch.as_tensor(torch.stack([torch.as_tensor(s["state"]) for s in samples]))
            batch["actions"] = torch.stack([torch.as_tensor(s["actions"]) for s in samples])
        return batch

    return collate


def load_model(stage: str, model_cfg: GemModelConfig, stage_cfg: TrainStageConfig, seed: int, data_dir: Path,
               init_dir: Path | None) -> GemModel:
    if init_dir is None:
        # The base model. Tiny backbones train their tokenizer on the dataset's text; same data + seed = same model.
        return GemModel.build(model_cfg, corpus=text_corpus(data_dir), seed=seed)
    try:
        return GemModel.load(str(init_dir), model_cfg)
    except ValueError as e:  # the recipe's model section was changed after the parent checkpoint was trained
        raise InputError(f"{stage} continues the model in {init_dir}, but {e}: change the model section back, "
                         f"or start from the base model with -o stages.{stage}.init=base") from None


def stage_samples(stage: str, model: GemModel, model_cfg: GemModelConfig, data_dir: Path):
    if stage != "stage4":
        samples = GemSamples(data_dir)
        if len(samples) == 0:
            raise InputError(f"the dataset in {data_dir} has no QA samples: add annotations (data.files) "
                             "or raise data.num_scenes")
        return samples
    if model_cfg.action.kind == "none":
        raise InputError("stage4 trains the action expert but model.action.kind is 'none': "
                         "set -o model.action.kind=flow (or autoregressive)")
    windows = EpisodeWindows(data_dir, chunk_size=model_cfg.action.chunk_size)
    if len(windows) == 0:
        raise InputError(f"stage4 needs action episodes but {data_dir} has none: raise data.num_episodes "
                         "or set data.episodes_dir")
    model.set_action_statistics(action_statistics(data_dir))
    return EpisodeSamples(windows)


def rank_nodes() -> list[str]:
    """The machine of every rank, in rank order: SLURM's node name inside a SLURM job, else the host name.
    A collective when a process group exists: every rank calls it."""
    import torch.distributed as dist

    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if not (dist.is_available() and dist.is_initialized()):
        return [node]
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


def train_stage(stage: str, *, model_cfg: GemModelConfig, stage_cfg: TrainStageConfig, runtime: RuntimeConfig,
                seed: int, data_dir: Path, init_dir: Path | None, out_dir: Path, work_dir: Path,
                tracker: Tracker | None = None, should_stop: Callable[[], bool] | None = None,
                progress: Callable | None = None, shard: tuple[int, int] | None = None) -> dict:
    """Run one training stage; write <out_dir>/model and <out_dir>/summary.json atomically. Returns the summary.
    shard: (rank, world), which slice of each global batch this process trains on (default: the job's rank)."""
    from transformers.utils import logging as transformers_logging

    # the stage reports its own progress; transformers' bars for loading and writing each file are noise here
    transformers_logging.disable_progress_bar()
    model = load_model(stage, model_cfg, stage_cfg, seed, data_dir, init_dir)
    if runtime.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if stage_cfg.depth_long_side is not None:  # saved with the checkpoint's processor settings
        model.processor.depth_long_side = stage_cfg.depth_long_side
    model.processor.depth_encoding = stage_cfg.depth_encoding
    samples = stage_samples(stage, model, model_cfg, data_dir)
    if progress is None:
        from .progress import RichProgress

        progress = RichProgress(stage)
    with progress:
        result = train(model, model.module_groups(), stage_cfg, runtime, samples, make_collate(model), seed=seed,
                       work_dir=work_dir, tracker=tracker, should_stop=should_stop, progress=progress.update,
                       shard=shard)
    summary = {"stage": stage, "status": result.status, "step": result.step, "losses": result.losses,
               "resumed_from": result.resumed_from, "seconds": round(result.seconds, 3),
               "steps_per_second": round(result.steps_per_second, 3), "trainable": stage_cfg.trainable,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "nodes": rank_nodes()}
    if result.status != "completed" or int(os.environ.get("RANK", "0")) != 0:
        return summary  # one rank writes the checkpoint (the trainer's last barrier has passed)
    with atomic_dir(out_dir) as tmp:
        model.save(tmp / "model")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
