"""The `data:` section of a recipe: where the samples and episodes come from, and how big the built-in set is."""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal

from ..errors import InputError

# Cameras the synthetic world knows (positions in synth_scene.EPISODE_CAMERAS).
CAMERA_NAMES = ("front", "top", "side")


@dataclass
class AnnotationSet:
    name: str = "gem"  # set name; a "%NN" suffix keeps NN% of its samples, chosen by seed ("gem%50")
    annotations: str = ""  # JSONL file, one LLaVA/Qwen-style sample per line
    data_path: str = ""  # image root the sample paths are relative to; "" = the JSONL file's folder
    depth_root: str = ""  # depth of image p: <depth_root>/depth/<basename of p> (16-bit mm PNG); "" = none


SIZE = {"min": 32, "max": 1024, "multiple_of": 32}  # image sides: the depth VAE downsamples by 32
COUNT = {"min": 0, "max": 1_000_000}


@dataclass
class DataConfig:
    source: Literal["synth", "files"] = "synth"  # built-in procedural tabletop data, or the user's own files
    seed: int = 0  # every random choice: same seed -> byte-identical synth files and the same %-sampling

    # --- gem-synth (source: synth) ---
    num_scenes: int = field(default=50, metadata=COUNT)  # tabletop scenes that get questions
    image_height: int = field(default=64, metadata=SIZE)  # pixels, scenes and episodes alike
    image_width: int = field(default=64, metadata=SIZE)  # pixels
    questions_per_scene: int = field(default=4, metadata={"min": 1, "max": 9})  # distinct kinds per scene
    two_view_fraction: float = field(default=0.15, metadata={"min": 0.0, "max": 1.0})  # scenes with 2 images
    objects_min: int = field(default=3, metadata={"min": 2, "max": 8})  # fewest objects on a table
    objects_max: int = field(default=5, metadata={"min": 2, "max": 8})  # most objects on a table
    num_episodes: int = field(default=8, metadata=COUNT)  # scripted pick-and-place episodes
    episode_max_steps: int = field(default=40, metadata={"min": 10, "max": 1000})  # the expert needs 15-30
    cameras: list[str] = field(default_factory=lambda: ["front", "top"])  # episode cameras: front/top/side

    # --- user files (source: files) ---
    files: list[AnnotationSet] = field(default_factory=list)  # annotation sets with image and depth roots
    episodes_dir: str = ""  # folder searched recursively for *.hdf5 episodes; "" = no episodes
    # "header" reads image sizes only (fast); "decode" also decodes every pixel (finds truncated files)
    check_images: Literal["header", "decode"] = "header"  # how hard prepare checks each image


def check_config(cfg: DataConfig) -> None:
    """Raise InputError for values a recipe loader might let through (ranges, multiples, cross-field rules)."""
    _check_ranges(cfg, "data")
    if cfg.objects_min > cfg.objects_max:
        raise InputError(
            f"data.objects_min ({cfg.objects_min}) is larger than data.objects_max ({cfg.objects_max}): "
            "make objects_min <= objects_max"
        )
    if cfg.source == "synth":
        if not cfg.cameras:
            raise InputError(f"data.cameras is empty: list one or two of {', '.join(CAMERA_NAMES)}")
        for name in cfg.cameras:
            if name not in CAMERA_NAMES:
                raise InputError(
                    f"data.cameras has unknown camera '{name}': use one of {', '.join(CAMERA_NAMES)}"
                )
        if len(set(cfg.cameras)) != len(cfg.cameras):
            raise InputError(f"data.cameras lists a camera twice ({cfg.cameras}): list each camera once")
        if cfg.num_scenes == 0 and cfg.num_episodes == 0:
            raise InputError(
                "data.num_scenes and data.num_episodes are both 0: set at least one of them above 0"
            )
    if cfg.source == "files" and not cfg.files and not cfg.episodes_dir:
        raise InputError(
            "data.source is 'files' but data.files is empty and data.episodes_dir is unset: "
            "list at least one annotation set or give an episodes directory"
        )


def _check_ranges(obj, prefix: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}"
        if is_dataclass(value):
            _check_ranges(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    _check_ranges(item, f"{key}[{i}]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi, step = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("multiple_of")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise InputError(f"{key} is {value}, outside [{lo}, {hi}]: set a value in that range")
            if step and value % step:
                raise InputError(
                    f"{key} is {value}, not a multiple of {step}: use e.g. {max(step, value // step * step)}"
                )
