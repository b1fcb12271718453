"""The `data:` section of a recipe: where the samples and episodes come from, and how big the built-in set is."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from gem_models.config import Float, Int, Str, setting

from ..config import settings

# Cameras the synthetic world knows (positions in synth_scene.EPISODE_CAMERAS).
CAMERA_NAMES = ("front", "top", "side")


@settings
class AnnotationSet:
    name: Str = setting("gem", 'Set name; a "%NN" suffix keeps NN% of its samples, chosen by seed ("gem%50").')
    annotations: Str = setting("", "JSONL file, one LLaVA/Qwen-style sample per line.")
    data_path: Str = setting("", 'Image root the sample paths are relative to; "" = the JSONL file\'s folder.')
    depth_root: Str = setting(
        "", 'Depth of image p: <depth_root>/depth/<basename of p>, else that name with .png (16-bit mm PNG); '
        '"" = none.')
    depth_model: Str = setting(
        "", 'Local folder of a transformers depth estimator (Depth Anything, DPT, ...): the label_depth stage labels '
        'the set\'s images with it into runs/<recipe>/depth/<set index>, the set\'s depth root (instead of '
        'depth_root); a changed model or image tree labels again. "" = no labelling.')
    weight: Float = setting(
        1.0, "Mixture weight: each kept sample is listed this many times per epoch (2.0 doubles the set; 0.5 keeps "
        "a seeded half, after the %NN share).", gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _one_depth_source(self):
        if self.depth_root and self.depth_model:
            raise ValueError(f"set {self.name!r} has both depth_root and depth_model: give depth_root for depth you "
                             "have, or depth_model to label it, not both")
        return self


@settings
class EpisodeCamera:
    name: Str = setting("", "The camera's name in stage 4's episodes.cameras and in the LIBERO evaluator.")
    key: Str = setting(
        "", 'Where its frames are: a robomimic obs key ("agentview_rgb") or a LeRobot feature '
        '("observation.images.top").')


def _side(default: int, description: str):
    # image sides: the depth VAE downsamples by 32
    return setting(default, description, ge=32, le=1024, multiple_of=32)


def _count(default: int, description: str):
    return setting(default, description, ge=0, le=1_000_000)


@settings
class DataConfig:
    source: Literal["synth", "files"] = setting(
        "synth", "Built-in procedural tabletop data (synth), or the user's own files.")
    seed: Int = setting(0, "Every random choice: same seed -> byte-identical synth files and the same %-sampling.")

    # --- gem-synth (source: synth) ---
    num_scenes: Int = _count(50, "Tabletop scenes that get questions.")
    image_height: Int = _side(64, "Pixels, scenes and episodes alike.")
    image_width: Int = _side(64, "Pixels, scenes and episodes alike.")
    questions_per_scene: Int = setting(4, "Distinct question kinds per scene.", ge=1, le=9)
    two_view_fraction: Float = setting(0.15, "Fraction of scenes with 2 images.", ge=0.0, le=1.0)
    objects_min: Int = setting(3, "Fewest objects on a table.", ge=2, le=8)
    objects_max: Int = setting(5, "Most objects on a table.", ge=2, le=8)
    num_episodes: Int = _count(8, "Scripted pick-and-place episodes.")
    episode_max_steps: Int = setting(40, "Step limit of an episode (the expert needs 15-30).", ge=10, le=1000)
    cameras: list[Str] = setting(lambda: ["front", "top"], "Episode cameras: front, top, side.",
                                 json_schema_extra={"items": {"enum": list(CAMERA_NAMES)}})

    # --- user files (source: files) ---
    files: list[AnnotationSet] = setting(list, "Annotation sets with image and depth roots.")
    episodes_dir: Str = setting(
        "", 'Folder of action episodes: *.hdf5 files anywhere below it (rdt, robomimic) or a LeRobot dataset '
        '(meta/info.json at its top); "" = no episodes.')
    episode_format: Literal["auto", "rdt", "robomimic", "lerobot"] = setting(
        "auto", "How the episodes are stored: rdt (GEM-VLA/RDT HDF5, one episode per file), robomimic (LIBERO/"
        "robomimic HDF5, data/demo_N per file), lerobot (LeRobot v2.x/v3.0 parquet + mp4 folder); auto: "
        "lerobot when meta/info.json exists, else robomimic when the HDF5 files have a 'data' group, else rdt.")
    episode_cameras: list[EpisodeCamera] = setting(
        list, 'Cameras to read and their names, e.g. [{name: wrist, key: eye_in_hand_rgb}]; [] = every camera in '
        'the files, named by its key without the "_rgb"/"_image" suffix (robomimic) or the "observation.images." '
        "prefix (lerobot). rdt: unused.")
    episode_state_keys: list[Str] = setting(
        list, "Keys concatenated, in this order, into the state (robomimic: obs keys; lerobot: features); [] = "
        "the format's default: rdt observations/state; robomimic LIBERO's ee_pos, ee_ori, gripper_states, else "
        "robomimic's robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos; lerobot observation.state.")
    episode_action_key: Str = setting(
        "", 'The actions\' key; "" = the format\'s: "action" (rdt, lerobot), "actions" (robomimic).')
    episode_filter: Str = setting(
        "", 'robomimic: train only on the demos listed under mask/<episode_filter> (e.g. "train"); "" = all.')
    episode_image_flip: Literal["none", "vertical", "rotate180"] = setting(
        "none", "Turn every episode frame: robosuite (LIBERO, robomimic) stores images bottom row first, so "
        "vertical shows them upright as the LIBERO evaluator does (rotate180: OpenVLA's regenerated LIBERO).")
    depth_shards: Int = setting(
        1, "Jobs the label_depth stage splits each set that names a depth_model into: one job array on the stage's "
        "executor (SLURM: `stage_resources.label_depth`, one process and at most one GPU per job).", ge=1, le=10000)
    check_images: Literal["stat", "header", "decode"] = setting(
        "stat", 'How hard prepare checks each image: "stat" only that it is a non-empty file inside its root '
        '(millions of records in seconds; read errors are met when training reads the sample); "header" also '
        'reads image and depth headers (unreadable images, depth of the wrong size or mode); "decode" also decodes '
        "every pixel (truncated files).")
    on_error: Literal["stop", "skip"] = setting(
        "stop", 'A bad record (missing or unreadable image, wrong field type, path outside its root): "stop" with '
        'one line naming file and line; "skip" it and count it, at prepare and when training reads it.')
    max_skipped: Float = setting(
        0.01, "With on_error: skip, the largest share of a set's records that may be skipped; more fails the "
        "stage.", ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self):
        if self.objects_min > self.objects_max:
            raise ValueError(f"objects_min ({self.objects_min}) is larger than objects_max ({self.objects_max}): "
                             "make objects_min <= objects_max")
        if self.source == "synth":
            if not self.cameras:
                raise ValueError(f"cameras is empty: list one or two of {', '.join(CAMERA_NAMES)}")
            for name in self.cameras:
                if name not in CAMERA_NAMES:
                    raise ValueError(f"cameras has unknown camera {name!r}: use one of {', '.join(CAMERA_NAMES)}")
            if len(set(self.cameras)) != len(self.cameras):
                raise ValueError(f"cameras lists a camera twice ({self.cameras}): list each camera once")
            if self.num_scenes == 0 and self.num_episodes == 0:
                raise ValueError("num_scenes and num_episodes are both 0: set at least one of them above 0")
        names = [c.name for c in self.episode_cameras]
        if any(not c.name or not c.key for c in self.episode_cameras) or len(set(names)) != len(names):
            raise ValueError(f"episode_cameras {[(c.name, c.key) for c in self.episode_cameras]} needs a name and a "
                             "key for each camera, each name once")
        if self.source == "files" and not self.files and not self.episodes_dir:
            raise ValueError("source is 'files' but files is empty and episodes_dir is unset: "
                             "list at least one annotation set or give an episodes directory")
        return self


def check_config(cfg: DataConfig) -> None:
    """Raise InputError when `cfg` breaks a rule of DataConfig. Building a DataConfig already checks them all;
    this re-checks an object whose fields were assigned after it was built."""
    DataConfig(**{name: getattr(cfg, name) for name in cfg.__dataclass_fields__})
