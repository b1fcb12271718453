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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from gem_models.config import GemModelConfig
from gem_models.connector import Connector
from gem_models.depth_generator import DepthGenerator
from gem_models.gem import GemModel
from gem_models.processor import IMAGE_PLACEHOLDER

from .augment import augment
from .config import EpisodeSamplesConfig, RuntimeConfig, TrainStageConfig
from .data.reader import EpisodeWindows, GemSamples, action_statistics, text_corpus
from .errors import InputError
from .files import atomic_dir
from .tracker import Tracker
from .trainer import train

ACTION_QUESTION = "What action should the robot take to {instruction}?"
# Beside a stage-4 checkpoint's weights: the action/state statistics it was trained with (the reference's name).
# The model's normaliser holds the same numbers as buffers, so loading the checkpoint restores them.
ACTION_STATS_FILE = "action_stats.json"


class EpisodeSamples:
    """Episode windows as processor samples: the cameras' images (the first camera's with its depth), the
    instruction as prompt, the state and the action chunk.

    `samples[i]` shows everything, unaltered; `samples.draw(i, seed)` (what the trainer calls) makes the stage's
    random choices from `seed`, as GEM-VLA's dataset does: each image left out with cond_mask_prob
    (cam_ext_mask_prob for the first camera when >= 0), the instruction blanked with cond_mask_prob, image
    augmentation, state noise. A left-out image is gone from the prompt, and with the first camera's current
    frame goes the sample's depth target.
    """

    statistics: dict | None = None  # the dataset's action/state statistics the model normalises with

    def __init__(self, windows: EpisodeWindows, cfg: EpisodeSamplesConfig | None = None,
                 state_std: Sequence[float] | None = None):
        self.windows, self.cfg = windows, cfg or EpisodeSamplesConfig()
        if self.cfg.state_noise_snr is not None and state_std is None:
            raise ValueError("state noise needs the dataset's per-dimension state std")
        # SNR in dB: noise std = signal std / sqrt(10^(snr/10)) (RDT's formula, with the dataset's std per dimension)
        snr = self.cfg.state_noise_snr
        self.state_noise_std = None if snr is None else np.asarray(state_std, np.float64) / np.sqrt(10 ** (snr / 10))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        return self.draw(i, None)

    def draw(self, i: int, seed: int | None) -> dict:
        """Sample i with the stage's random choices drawn from `seed` (None: no random choice, everything shown)."""
        w, cfg = self.windows[i], self.cfg
        rng = None if seed is None else np.random.default_rng(seed)
        num_cameras = len(self.windows.cameras)
        drop = [cfg.cond_mask_prob] * num_cameras
        if cfg.cam_ext_mask_prob >= 0:
            drop[0] = cfg.cam_ext_mask_prob
        depth_at = len(w["images"]) - num_cameras  # the first camera's frame at this step
        images, depths = [], []
        for k, image in enumerate(w["images"]):
            if rng is not None and rng.random() < drop[k % num_cameras]:
                continue
            if rng is not None and cfg.image_aug:
                image = augment(image, rng)
            images.append(image)
            depths.append(w["depth"] if k == depth_at else None)
        instruction = w["instruction"]
        if rng is not None and rng.random() < cfg.cond_mask_prob:
            instruction = ""
        state = w["state"]
        if rng is not None and self.state_noise_std is not None:
            state = (state + rng.normal(0.0, self.state_noise_std)).astype(np.float32)
        if cfg.prompt == "release":  # images, then the bare instruction; the prompt ends with the user turn
            text, generation_prompt = IMAGE_PLACEHOLDER * len(images) + instruction, False
        else:
            text = "".join(IMAGE_PLACEHOLDER + "\n" for _ in images) + ACTION_QUESTION.format(instruction=instruction)
            generation_prompt = True
        return {"images": images, "depths": depths, "conversations": [{"from": "human", "value": text}],
                "generation_prompt": generation_prompt, "state": state, "actions": w["actions"]}


def make_collate(model: GemModel, packing: bool = False) -> Callable[[list[dict]], dict]:
    processor = model.processor

    def collate(samples: list[dict]) -> dict:
        batch = processor.pack(samples) if packing else processor(samples)
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
    if stage_cfg.init.startswith("imported:"):
        from .imported import adopt_imported

        model = adopt_imported(stage, stage_cfg.init, init_dir, model_cfg, seed)
    else:
        try:
            model = GemModel.load(str(init_dir), model_cfg)
        except ValueError as e:  # the recipe's model section was changed after the parent checkpoint was trained
            raise InputError(f"{stage} continues the model in {init_dir}, but {e}: change the model section back, "
                             f"or start from the base model with -o stages.{stage}.init=base") from None
    if stage_cfg.depth_init == "base":
        fresh_depth_expert(model, seed)
    return model


def fresh_depth_expert(model: GemModel, seed: int) -> None:
    """Replace the connector and the depth generator by the base model's: model.depth's pretrained DiT (the tiny
    recipe: its seeded random init) and a fresh connector, seeded as GemModel.build seeds them. The released VLA
    (GEM-VLA/models/depth_expert.py) starts so unless given a depth-expert checkpoint."""
    cfg = model.cfg
    hidden = model.backbone.config.text_config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model.connector = Connector(hidden, cfg.connector)
    model.depth_generator = DepthGenerator.build(cfg.depth, cfg.connector.width, seed + 2)


def stage_samples(stage: str, model: GemModel, model_cfg: GemModelConfig, data_dir: Path,
                  stage_cfg: TrainStageConfig | None = None):
    if stage != "stage4":
        samples = GemSamples(data_dir)
        if len(samples) == 0:
            raise InputError(f"the dataset in {data_dir} has no QA samples: add annotations (data.files) "
                             "or raise data.num_scenes")
        return samples
    if model_cfg.action.kind == "none":
        raise InputError("stage4 trains the action expert but model.action.kind is 'none': "
                         "set -o model.action.kind=flow (or autoregressive)")
    episodes = (stage_cfg or TrainStageConfig()).episodes
    windows = EpisodeWindows(data_dir, chunk_size=model_cfg.action.chunk_size, cameras=episodes.cameras,
                             history=episodes.image_history)
    if len(windows) == 0:
        raise InputError(f"stage4 needs action episodes but {data_dir} has none: raise data.num_episodes "
                         "or set data.episodes_dir")
    for what in ("action", "state"):
        have, want = windows.meta[f"{what}_dim"], getattr(model_cfg.action, f"{what}_dim")
        if have != want:
            raise InputError(f"the episodes' {what}s have {have} dimensions but model.action.{what}_dim is {want}: "
                             f"set -o model.action.{what}_dim={have}")
    stats = action_statistics(data_dir)
    model.set_action_statistics(stats)
    samples = EpisodeSamples(windows, episodes, stats["state"]["std"])
    samples.statistics = stats  # written beside the checkpoint: what inference normalises with
    return samples


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
    if runtime.compile_blocks:
        model.compile_blocks()
    if stage_cfg.packing:
        model.enable_packed_attention()
    if stage_cfg.depth_long_side is not None:  # saved with the checkpoint's processor settings
        model.processor.depth_long_side = stage_cfg.depth_long_side
    model.processor.depth_encoding = stage_cfg.depth_encoding
    samples = stage_samples(stage, model, model_cfg, data_dir, stage_cfg)
    if progress is None:
        from .progress import RichProgress

        progress = RichProgress(stage)
    with progress:
        collate = make_collate(model, stage_cfg.packing)
        result = train(model, model.module_groups(), stage_cfg, runtime, samples, collate, seed=seed,
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
        if isinstance(samples, EpisodeSamples):
            (tmp / "model" / ACTION_STATS_FILE).write_text(json.dumps(samples.statistics, indent=2) + "\n")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
