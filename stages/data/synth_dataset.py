"""Write the gem-synth dataset (QA samples, images, depth, episodes) into a directory and return its manifest.

Every scene and episode draws from its own generator seeded by (seed, stream, index), so a file depends only on
the seed and its index: same seed -> byte-identical files, and growing num_scenes keeps the earlier scenes.
"""

import json
import multiprocessing as mp
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .config import DataConfig
from .depth_png import save_depth_mm
from .episode_format import write_episode
from .manifest import FORMAT, md5_file, write_file_list
from .synth_episodes import ACTION_NAMES, STATE_NAMES, UNITS, run_episode
from .synth_questions import Question, SceneFacts, scene_questions, to_sample
from .synth_scene import (
    Render,
    SceneObject,
    min_visible_pixels,
    object_views,
    render,
    sample_objects,
    scene_camera,
)

SCENE_STREAM, EPISODE_STREAM = 0, 1
HELDOUT_SCENE_STREAM = 2  # evaluation scenes (gem_stages.eval.gem_synth): never a training scene
NAME = "gem-synth"


@dataclass
class SynthScene:
    objects: list[SceneObject]  # index = id-buffer value
    renders: list[Render]  # view 0, and view 1 for two-view scenes
    stems: list[str]  # file stems: images/<stem>.png and depth/<stem>.png
    questions: list[tuple[str, Question]]  # (kind, question)


def build_scene(cfg: DataConfig, index: int, stream: int = SCENE_STREAM) -> SynthScene:
    """Scene `index` of the dataset with `cfg.seed`, rendered and questioned, without writing anything; another
    `stream` draws scenes from a generator no training scene uses (HELDOUT_SCENE_STREAM)."""
    rng = np.random.default_rng([cfg.seed, stream, index])
    h, w = cfg.image_height, cfg.image_width
    objects = sample_objects(rng, int(rng.integers(cfg.objects_min, cfg.objects_max + 1)))
    azimuth = rng.uniform(-35, 35)
    cameras = [scene_camera(rng, w, h, azimuth)]
    if rng.random() < cfg.two_view_fraction:
        # The second viewpoint swings 45-80 degrees round the table, toward the other side, so depths differ.
        cameras.append(scene_camera(rng, w, h, azimuth - np.sign(azimuth or 1) * rng.uniform(45, 80)))
    renders = [render(objects, camera) for camera in cameras]
    stems = [f"{index:06d}" if view == 0 else f"{index:06d}_{view}" for view in range(len(cameras))]
    facts = SceneFacts(objects, [object_views(r, len(objects)) for r in renders], w, min_visible_pixels(h, w))
    return SynthScene(objects, renders, stems, scene_questions(rng, facts, cfg.questions_per_scene))


def _write_scene(cfg: DataConfig, index: int, root: Path) -> list[dict]:
    scene = build_scene(cfg, index)
    for stem, result in zip(scene.stems, scene.renders):
        Image.fromarray(result.rgb).save(root / "images" / f"{stem}.png", format="PNG")
        save_depth_mm(root / "depth" / f"{stem}.png", result.depth)
    paths = [f"images/{stem}.png" for stem in scene.stems]
    samples = []
    for q, (kind, question) in enumerate(scene.questions):
        sample = to_sample(f"synth-{index:06d}-{q}", paths, question)
        sample["kind"] = kind  # which question template (synth_questions.QUESTION_KINDS)
        sample["scene"] = index  # build_scene(cfg, scene) re-creates the scene to re-check the answer
        samples.append(sample)
    return samples


def _write_episode(cfg: DataConfig, index: int, root: Path) -> tuple[str, int, str, bool]:
    rng = np.random.default_rng([cfg.seed, EPISODE_STREAM, index])
    ep = run_episode(rng, cfg.cameras, cfg.image_height, cfg.image_width, cfg.episode_max_steps)
    rel = f"episodes/episode_{index:06d}.hdf5"
    write_episode(root / rel, ep.images, ep.depths, ep.state, ep.action, ep.instruction, ep.success)
    return rel, len(ep.action), ep.instruction, ep.success


WORKERS_ENV = "GEMCTL_DATA_WORKERS"  # force the number of worker processes (1 = serial)


@contextmanager
def _mapper(num_items: int, pixels_per_item: int):
    """An ordered map over scene/episode indices: serial for small jobs, a process pool for large ones.

    Items are independent (own seeded generator, own files), so the output does not depend on the worker count.
    Threads do not help (rendering is GIL-bound numpy on small arrays). The pool forks: spawn/forkserver would
    re-import the caller's main script, which breaks callers without an `if __name__ == "__main__"` guard.
    """
    forced = os.environ.get(WORKERS_ENV)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = int(forced) if forced else cores
    if not forced and num_items * pixels_per_item < 4_000_000:  # ~1-2 s of rendering: not worth a pool
        workers = 1
    if workers <= 1 or num_items < 2 or "fork" not in mp.get_all_start_methods():
        yield map
        return
    with mp.get_context("fork").Pool(min(workers, num_items)) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=2)


def write_synth(cfg: DataConfig, root: Path) -> dict:
    """Generate into `root` (an empty directory) and return the manifest (dataset.json is written by the caller)."""
    samples = []
    if cfg.num_scenes:
        (root / "images").mkdir()
        (root / "depth").mkdir()
        with _mapper(cfg.num_scenes, cfg.image_height * cfg.image_width) as map_:
            for scene_samples in map_(partial(_write_scene, cfg, root=root), range(cfg.num_scenes)):
                samples += scene_samples
        with open(root / "annotations.jsonl", "w") as f:
            f.writelines(json.dumps(sample) + "\n" for sample in samples)

    episodes, lengths, instructions, successes = [], [], [], 0
    if cfg.num_episodes:
        (root / "episodes").mkdir()
    pixels_per_episode = 25 * len(cfg.cameras) * cfg.image_height * cfg.image_width  # ~25 steps
    with _mapper(cfg.num_episodes, pixels_per_episode) as map_:
        for rel, length, instruction, success in map_(
            partial(_write_episode, cfg, root=root), range(cfg.num_episodes)
        ):
            episodes.append(rel)
            lengths.append(length)
            instructions.append(instruction)
            successes += success

    md5s = {p.relative_to(root).as_posix(): md5_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    digest = write_file_list(root, md5s)
    return {
        "format": FORMAT,
        "name": NAME,
        "source": "synth",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {
            "samples": len(samples),
            "images": sum(p.startswith("images/") for p in md5s),
            "tasks": dict(sorted(Counter(s["task"] for s in samples).items())),
            "kinds": dict(sorted(Counter(s["kind"] for s in samples).items())),
            "episodes": len(episodes),
            "episode_steps": int(sum(lengths)),
            "episode_successes": int(successes),
        },
        "annotation_sets": [
            {
                "name": NAME,
                "rate": 100,
                "annotations": "annotations.jsonl",
                "data_path": ".",
                "depth_root": ".",
                "lines": len(samples),
                "selected": len(samples),
                "md5": md5s["annotations.jsonl"],
            }
        ]
        if samples
        else [],
        "episodes": {
            "files": episodes,
            "lengths": lengths,
            "instructions": instructions,
            "cameras": list(cfg.cameras),
            "depth_cameras": list(cfg.cameras),
            "state_dim": len(STATE_NAMES),
            "action_dim": len(ACTION_NAMES),
            "state_names": STATE_NAMES,
            "action_names": ACTION_NAMES,
            "units": UNITS,
            "image_size": [cfg.image_height, cfg.image_width],
        }
        if episodes
        else None,
        "files": "files.md5",
        "digest": digest,
    }
