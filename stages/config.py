"""Typed settings of the training stages and the runtime they share. These become recipe keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Logical parts of the GEM model a stage can train (gem_models.gem.GemModel.module_groups()).
MODULE_GROUPS = ("vision", "merger", "language", "connector", "depth_generator", "action_expert")

STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclass
class LossWeights:
    # Weight of the language-modelling cross-entropy (GEM: 1 in stage 3, 0 elsewhere).
    lm: float = field(default=0.0, metadata={"min": 0.0})
    # Weight of the rectified-flow depth-generation loss (GEM: 0.1 in joint training).
    depth: float = field(default=1.0, metadata={"min": 0.0})
    # Weight of the action expert's loss (stage 4 only).
    action: float = field(default=0.0, metadata={"min": 0.0})


@dataclass
class TrainStageConfig:
    # Module groups whose parameters train; every other parameter is frozen (the VAE always is).
    trainable: list[str] = field(default_factory=lambda: ["connector"])
    # Where the weights start: the previous stage's checkpoint, or the base model (ablation: skip warm-up).
    init: Literal["previous", "base"] = "previous"
    # Optimiser steps (one step = batch_size x grad_accum x world_size samples).
    steps: int = field(default=10, metadata={"min": 1})
    # Passes over the stage's data instead of a step count (null: use steps). The released stage-3 script: 1.
    epochs: float | None = field(default=None, metadata={"min": 0.0})
    # Peak learning rate of AdamW.
    lr: float = field(default=1e-4, metadata={"min": 0.0, "max": 1.0})
    # Learning-rate schedule after warm-up.
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    # Fraction of steps spent warming the learning rate up linearly from 0.
    warmup_ratio: float = field(default=0.03, metadata={"min": 0.0, "max": 1.0})
    # AdamW weight decay.
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    # Samples per device per micro-batch.
    batch_size: int = field(default=2, metadata={"min": 1})
    # Micro-batches accumulated per optimiser step.
    grad_accum: int = field(default=1, metadata={"min": 1})
    # Gradient-norm clipping threshold (0 disables clipping).
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    # Loss weights of this stage.
    loss: LossWeights = field(default_factory=LossWeights)
    # Save a resumable checkpoint every this many steps (0: only at the end and on preemption).
    checkpoint_every: int = field(default=0, metadata={"min": 0})
    # Resumable checkpoints kept on disk (older ones are deleted).
    keep_checkpoints: int = field(default=2, metadata={"min": 1})
    # Log losses to the tracker every this many steps.
    log_every: int = field(default=1, metadata={"min": 1})
    # Depth-target long side for this stage (null: model.depth.image_long_side). The released VLA script: 256.
    depth_long_side: int | None = field(default=None, metadata={"min": 32, "multiple_of": 32})

    def validate(self) -> None:
        for group in self.trainable:
            if group not in MODULE_GROUPS:
                import difflib

                close = difflib.get_close_matches(group, MODULE_GROUPS, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "choose from " + ", ".join(MODULE_GROUPS)
                raise ValueError(f"trainable: unknown module group '{group}': {hint}")
        if not self.trainable:
            raise ValueError("trainable is empty: name at least one module group to train")


@dataclass
class RuntimeConfig:
    # Device to train on; auto = CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision; auto = bf16 on GPUs that support it, none on CPU.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # Multi-GPU strategy (accelerate): plain DDP or DeepSpeed ZeRO-2.
    distributed: Literal["ddp", "deepspeed_zero2"] = "ddp"
    # DDP: look for parameters without a gradient after each backward (a loss part skipped for a batch leaves its
    # parameters unused). False is faster but fails when a rank's batch skips a part.
    find_unused_parameters: bool = True
    # Trade compute for memory in the backbone.
    gradient_checkpointing: bool = False
    # DataLoader worker processes (0 = load in the training process).
    num_workers: int = field(default=0, metadata={"min": 0})
    # torch intra-op CPU threads (0 = torch's default). Tiny models run fastest on 1: more threads spin on small ops.
    cpu_threads: int = field(default=0, metadata={"min": 0})


@dataclass
class StagesConfig:
    # 1: connector init (depth loss only; connector trains).
    stage1: TrainStageConfig = field(default_factory=lambda: TrainStageConfig(
        trainable=["connector"], init="base", loss=LossWeights(lm=0.0, depth=1.0)))
    # 2: depth-generator warm-up (connector + DiT).
    stage2: TrainStageConfig = field(default_factory=lambda: TrainStageConfig(
        trainable=["connector", "depth_generator"], loss=LossWeights(lm=0.0, depth=1.0)))
    # 3: end-to-end joint training, L = L_LM + 0.1 L_depth.
    stage3: TrainStageConfig = field(default_factory=lambda: TrainStageConfig(
        trainable=["merger", "language", "connector", "depth_generator"], lr=1e-5,
        loss=LossWeights(lm=1.0, depth=0.1)))
    # 4: GEM-VLA action expert, L = L_action + 0.1 L_depth.
    stage4: TrainStageConfig = field(default_factory=lambda: TrainStageConfig(
        trainable=["action_expert"], lr=1e-5, schedule="constant", warmup_ratio=0.0,
        loss=LossWeights(lm=0.0, depth=0.1, action=1.0)))
