"""Typed settings of the training stages and the runtime they share. These become recipe keys.

Settings classes are pydantic dataclasses built with `settings`: building one in code validates it like the
recipe loader does and raises a one-line InputError; `explain` turns pydantic's report into that line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import reprlib
import types
import typing
from typing import Any, Literal

from pydantic import ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from gem_models.config import SETTINGS, Bool, Float, Int, Str, setting

from .errors import InputError

# Logical parts of the GEM model a stage can train (gem_models.gem.GemModel.module_groups()).
MODULE_GROUPS = (
    "vision", "merger", "deepstack_merger", "language", "connector", "depth_generator", "action_expert")

STAGES = ("stage1", "stage2", "stage3", "stage4")


def settings(cls: type) -> type:
    """`cls` as a validated settings dataclass whose bad values raise a one-line InputError."""
    cls = pydantic_dataclass(cls, config=SETTINGS)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise InputError(explain(e, type(self))) from None

    cls.__init__ = __init__
    return cls


def suggest(key: str, valid: typing.Iterable[str], what: str = "valid keys") -> str:
    """'did you mean ...' text for a mistyped name, or the list of valid names when nothing is close."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"{what}: " + ", ".join(sorted(valid))


def explain(error: ValidationError, root: type, prefix: str = "") -> str:
    """One line for the first problem pydantic found in `root`: the dotted key, the value and what is allowed."""
    problems = error.errors(include_url=False)
    e = problems[0]
    loc, kind, ctx, value = e["loc"], e["type"], e.get("ctx") or {}, e.get("input")
    key = _dotted(prefix, loc)
    shown = f"{key}={_show(value)}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown key '{key}': {suggest(str(loc[-1]), _field_names(root, loc[:-1]))}"
    if kind == "missing":
        return f"missing key '{key}'"
    if kind == "literal_error":
        return f"{shown} is not allowed: choose one of {ctx['expected'].replace(' or ', ', ')}"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        op, name = bounds[kind]
        return f"{shown} is out of range: must be {op} {ctx[name]}"
    if kind == "multiple_of":
        return f"{shown} is not a multiple of {ctx['multiple_of']}"
    if kind == "string_pattern_mismatch":
        return f"{shown} is not allowed: it must match {ctx['pattern']}"
    if kind == "too_short":
        return f"{key} is empty: give at least {ctx.get('min_length', 1)} item(s)"
    if kind == "finite_number":
        return f"{shown} is not a finite number"
    if kind in ("value_error", "assertion_error"):
        return f"{key or _class_name(root)}: {ctx.get('error', e['msg'])}"
    for prefix_, what in (("int_", "an integer"), ("float_", "a number"), ("bool_", "a boolean (true/false)"),
                          ("string_", "a string"), ("list_", "a list"), ("dict_", "a mapping")):
        if kind.startswith(prefix_):
            return f"{shown} is not {what}"
    if kind.startswith(("dataclass_", "model_")):
        return f"{key} must be a mapping of settings, got {_show(value)}"
    return f"{shown}: {e['msg']}"


def _dotted(prefix: str, loc: tuple) -> str:
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    # a key from the user's file may hold control characters: escaped, the message stays one line
    return key if key.isprintable() else repr(key)[1:-1]


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 6, 4, 60, 60, 40


def _show(value: Any) -> str:
    """A short repr: bounded in depth and length, so any value fits in one line."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int too long for repr (Python's 4300-digit limit)
        return "<a number with more than 4300 digits>"


def _class_name(cls: type) -> str:
    return getattr(cls, "__name__", str(cls))


def _field_names(root: type, loc: tuple) -> list[str]:
    """Field names of the settings class at `loc` below `root` (for 'did you mean')."""
    tp: Any = root
    for part in loc:
        tp = _settings_class(tp, part)
        if tp is None:
            return []
    tp = _settings_class(tp, None)
    return [f.name for f in dataclasses.fields(tp)] if tp is not None else []


def _settings_class(tp: Any, part: Any) -> Any:
    """The dataclass that field `part` of `tp` holds (None: just unwrap `tp` itself: Optional, list, ...)."""
    if isinstance(part, str):  # a field name (an int is a list index: `tp` already is the item type)
        tp = typing.get_type_hints(tp).get(part) if dataclasses.is_dataclass(tp) else None
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else None
        elif origin is list:
            tp = typing.get_args(tp)[0]
        else:
            break
    return tp if dataclasses.is_dataclass(tp) else None


@settings
class LossWeights:
    lm: Float = setting(0.0, "Weight of the language-modelling cross-entropy (GEM: 1 in stage 3, 0 elsewhere).", ge=0.0)
    depth: Float = setting(1.0, "Weight of the rectified-flow depth-generation loss (GEM: 0.1 in joint training).",
                           ge=0.0)
    action: Float = setting(0.0, "Weight of the action expert's loss (stage 4 only).", ge=0.0)


@settings
class EpisodeSamplesConfig:
    """How stage 4 turns an episode step into a training sample. The released GEM-VLA's values (train_joint.sh,
    main_joint.py defaults, configs/demo.yaml, train/dataset.py) are in recipes/gem-2b.yaml."""

    cameras: list[Str] | None = setting(
        None, "Cameras shown per step, exterior first; the only depth target is the first camera's (null: the "
        "episodes' first camera alone). The release: two (left_stereo, right_stereo).", min_length=1)
    image_history: Int = setting(
        1, "Frames per camera: this step and the ones before it, oldest first; before the episode's start its "
        "first frame repeats. The release: 1.", ge=1)
    prompt: Literal["question", "release"] = setting(
        "question", "question: '<image>... What action should the robot take to {instruction}?' plus the "
        "generation prompt; release: the user turn holds the images then the bare instruction, no assistant turn.")
    image_aug: Bool = setting(
        False, "The release's --image_aug: each shown image, with probability 0.5, gets colour jitter, corruption "
        "(noise, blur, JPEG) or both, equally likely.")
    state_noise_snr: Float | None = setting(
        None, "Gaussian noise on the input state at this signal-to-noise ratio in dB: std = the dataset's state std "
        "/ sqrt(10^(snr/10)) per dimension (null: none). The release passes 40, but takes the std over one row, "
        "so its noise is zero in effect.")
    cond_mask_prob: Float = setting(
        0.0, "Each camera image, and the instruction, is left out of the prompt with this probability. The "
        "release: 0.1.", ge=0.0, le=1.0)
    cam_ext_mask_prob: Float = setting(
        -1.0, "The first (exterior) camera's drop probability instead of cond_mask_prob (negative: "
        "cond_mask_prob). The release: -1.", ge=-1.0, le=1.0)


@settings
class TrainStageConfig:
    trainable: list[str] = setting(
        lambda: ["connector"], "Module groups whose parameters train; every other parameter is frozen (the VAE "
        "always is).", min_length=1,
        json_schema_extra={"items": {"enum": list(MODULE_GROUPS)}})
    init: Str = setting(
        "previous", "Where the weights start: previous = the previous stage's checkpoint; base = the base model "
        "(ablation: skip warm-up); imported:NAME = a model `gemctl import gem-2b PATH --as NAME` converted (the "
        "released GEM-2B).", pattern=r"^(previous|base|imported:[A-Za-z0-9][A-Za-z0-9_.-]*)$")
    steps: Int = setting(10, "Optimiser steps (one step = batch_size x grad_accum x world_size samples).", ge=1)
    epochs: Float | None = setting(
        None, "Passes over the stage's data instead of a step count (null: use steps). The released stage-3 "
        "script: 1.", ge=0.0)
    lr: Float = setting(1e-4, "Peak learning rate of AdamW.", ge=0.0, le=1.0)
    schedule: Literal["cosine", "constant", "linear"] = setting("cosine", "Learning-rate schedule after warm-up.")
    warmup_ratio: Float = setting(0.03, "Fraction of steps spent warming the learning rate up linearly from 0.",
                                  ge=0.0, le=1.0)
    weight_decay: Float = setting(0.0, "AdamW weight decay.", ge=0.0)
    batch_size: Int = setting(2, "Samples per device per micro-batch.", ge=1)
    packing: Bool = setting(
        False, "Train each micro-batch as one sequence of its samples back to back, without padding (the release's "
        "data_flatten): every sample keeps its own position ids and attends only to itself, so losses and gradients "
        "are the padded batch's. The sequence is up to batch_size x model.backbone.max_length tokens (the release: "
        "16384). Not with the action loss (stage 4).")
    grad_accum: Int = setting(1, "Micro-batches accumulated per optimiser step.", ge=1)
    max_grad_norm: Float = setting(1.0, "Gradient-norm clipping threshold (0 disables clipping).", ge=0.0)
    loss: LossWeights = setting(LossWeights, "Loss weights of this stage.")
    checkpoint_every: Int = setting(
        0, "Save a resumable checkpoint every this many steps (0: only at the end and on preemption).", ge=0)
    keep_checkpoints: Int = setting(2, "Resumable checkpoints kept on disk (older ones are deleted).", ge=1)
    log_every: Int = setting(1, "Log losses to the tracker every this many steps.", ge=1)
    depth_init: Literal["previous", "base"] = setting(
        "previous", "Where the depth expert (connector + DiT) starts when the stage continues a checkpoint: that "
        "checkpoint's, or the base model's (model.depth's pretrained DiT, a fresh seeded connector) while the rest "
        "continues. The released VLA script: base.")
    episodes: EpisodeSamplesConfig = setting(EpisodeSamplesConfig, "Stage 4: episode steps as samples.")
    depth_long_side: Int | None = setting(
        None, "Depth-target long side for this stage (null: model.depth.image_long_side). The released VLA "
        "script: 256.", ge=32, multiple_of=32)
    depth_encoding: Literal["spectral_inverse", "inferno_linear"] = setting(
        "spectral_inverse", "How depth becomes the RGB target. spectral_inverse (released VLM, stages 1-3): inverse "
        "depth between its 2nd/98th percentiles, Spectral colours, sides scaled to the depth long side and floored to "
        "multiples of 32. inferno_linear (released VLA joint training): millimetres / 65535, flipped, INFERNO "
        "colours, a depth_long_side x depth_long_side square.")


@settings
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "Device to train on; auto = CUDA when available, else CPU.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "Mixed precision; auto = bf16 on GPUs that support it, none on CPU.")
    distributed: Literal["ddp", "deepspeed_zero2"] = setting(
        "ddp", "Multi-GPU strategy (accelerate): plain DDP or DeepSpeed ZeRO-2.")
    find_unused_parameters: Bool = setting(
        True, "DDP: tolerate parameters that get no gradient in a step, e.g. a loss part skipped for a batch "
        "without depth targets; false is faster when every trainable parameter gets a gradient every step.")
    gradient_checkpointing: Bool = setting(False, "Trade compute for memory in the backbone.")
    compile_blocks: Bool = setting(
        False, "torch.compile each LLM, ViT and DiT block (fuses the elementwise work between matrix products): "
        "faster steps after the first ones, which compile (minutes at 2B scale). On one H100, gem-2b's stage-3 "
        "step at 16 samples: 1.72-1.83 s -> 1.42 s (bench/README.md).")
    num_workers: Int = setting(0, "DataLoader worker processes (0 = load in the training process).", ge=0)
    cpu_threads: Int = setting(
        0, "torch intra-op CPU threads (0 = torch's default). Tiny models run fastest on 1: more threads spin on "
        "small ops.", ge=0)


@settings
class StagesConfig:
    stage1: TrainStageConfig = setting(lambda: TrainStageConfig(
        trainable=["connector"], init="base", loss=LossWeights(lm=0.0, depth=1.0)),
        "1: connector init (depth loss only; connector trains).")
    stage2: TrainStageConfig = setting(lambda: TrainStageConfig(
        trainable=["connector", "depth_generator"], loss=LossWeights(lm=0.0, depth=1.0)),
        "2: depth-generator warm-up (connector + DiT).")
    stage3: TrainStageConfig = setting(lambda: TrainStageConfig(
        trainable=["merger", "deepstack_merger", "language", "connector", "depth_generator"], lr=1e-5,
        loss=LossWeights(lm=1.0, depth=0.1)),
        "3: end-to-end joint training, L = L_LM + 0.1 L_depth.")
    stage4: TrainStageConfig = setting(lambda: TrainStageConfig(
        trainable=["action_expert"], lr=1e-5, schedule="constant", warmup_ratio=0.0,
        loss=LossWeights(lm=0.0, depth=0.1, action=1.0)),
        "4: GEM-VLA action expert, L = L_action + 0.1 L_depth.")

    @model_validator(mode="after")
    def _trainable_groups_exist(self):
        # The trainer itself takes any group names its model has; a recipe trains the GEM model's groups.
        for stage in STAGES:
            for group in getattr(self, stage).trainable:
                if group not in MODULE_GROUPS:
                    raise ValueError(f"{stage}.trainable has unknown module group {group!r}: "
                                     f"{suggest(group, MODULE_GROUPS, 'choose from')}")
            cfg = getattr(self, stage)
            if cfg.packing and cfg.loss.action > 0:
                raise ValueError(f"{stage}.packing cannot train the action loss, which reads one row per sample: "
                                 f"set stages.{stage}.packing=false")
        return self
