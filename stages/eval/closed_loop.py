"""Closed-loop evaluation: a policy acts in a simulated task, episode after episode, and the task's own goal test
says whether it succeeded.

    env = SynthPickPlace(ClosedLoopConfig(episodes=50))                  # or libero.LiberoSuite(...)
    run_shard(env, GemPolicy(model, samples_cfg), out_dir, shard=k, num_shards=K)   # one per SLURM array task
    results = merge(env, out_dir, num_shards=K)                          # results.json, predictions.jsonl

A policy maps an observation to an action chunk (`act(observation) -> [T, action_dim]`); the chunk runs open loop,
then the policy is asked again (GEM-VLA re-plans every `replan_every` steps, the scripted expert every step).
Episode i belongs to shard i % K and draws everything (scene, noise, sampling) from its own seed, so a sharded
run merges to exactly the single-process result. The built-in task is the gem-synth tabletop
(stages/data/synth_episodes.py) on a held-out seed stream: no evaluated scene was ever a training episode.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..data.synth_episodes import (
    INSTRUCTIONS,
    MAX_STEP_M,
    PickPlaceWorld,
    ScriptedExpert,
    make_world,
)
from ..data.synth_scene import episode_camera, render
from ..errors import InputError
from .benchmark import Benchmark, EvalItem, Graded, aggregate

EVAL_STREAM = 2  # synth_dataset's streams: 0 scenes, 1 training episodes; evaluation episodes draw from their own
POLICY_STREAM = 3  # per-episode randomness of the policy (expert noise, random actions, flow sampling)


@dataclass
class Observation:
    images: dict[str, np.ndarray]  # camera -> (H, W, 3) uint8, upright; empty when the policy does not look
    state: np.ndarray  # (state_dim,) float32, the units the policy was trained on
    instruction: str  # the task in words
    privileged: object = None  # the simulator's own state, for scripted policies only (never shown to a model)


class Task(Protocol):
    """One seeded episode of an environment."""

    name: str  # per-task scores are grouped by it
    instruction: str
    max_steps: int

    def observe(self, render_images: bool) -> Observation: ...

    def step(self, action: np.ndarray) -> None: ...

    def success(self) -> bool: ...

    def hold_action(self) -> np.ndarray: ...  # executed instead of a non-finite action: stay put


class Environment(Protocol):
    name: str  # the benchmark name in results.json
    cameras: list[str]

    def num_episodes(self) -> int: ...

    def task(self, episode: int) -> Task: ...


class Policy(Protocol):
    needs_images: bool  # False: observations skip rendering (scripted and random policies)

    def reset(self, episode: int) -> None: ...

    def observe(self, observation: Observation) -> None: ...  # every step's, acted on or not (image history)

    def act(self, observation: Observation) -> np.ndarray: ...


@dataclass
class ClosedLoopConfig:
    episodes: int = 50  # seeded episodes in all (over every shard)
    max_steps: int = 60  # a step limit per episode (the expert needs 15-30 on the built-in task)
    seed: int = 0  # episode i's scene and the policy's randomness come from (seed, i)
    cameras: tuple[str, ...] = ("front", "top")  # the cameras a policy sees, first one first (as in stage 4)
    image_height: int = 64  # rendered pixels; match the training data's
    image_width: int = 64
    videos: int = 2  # episodes 0..videos-1 are written as mp4 rollouts (all cameras side by side)


# --- the built-in task ---------------------------------------------------------------------------------------


class SynthTask:
    """One gem-synth pick-and-place episode: the action moves the gripper exactly as in the training episodes."""

    def __init__(self, world: PickPlaceWorld, instruction: str, cfg: ClosedLoopConfig):
        self.world, self.instruction, self.max_steps = world, instruction, cfg.max_steps
        self.name = f"pick-place-{world.objects[world.item].shape}"
        self.views = {c: episode_camera(c, cfg.image_width, cfg.image_height) for c in cfg.cameras}

    def observe(self, render_images: bool) -> Observation:
        images = {}
        if render_images:
            extra = self.world.gripper_parts()
            images = {c: render(self.world.objects, cam, extra=extra).rgb for c, cam in self.views.items()}
        return Observation(images, self.world.state(), self.instruction, privileged=self.world)

    def step(self, action: np.ndarray) -> None:
        self.world.step(np.asarray(action, dtype=np.float64))

    def success(self) -> bool:
        return self.world.success()

    def hold_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, self.world.opening], dtype=np.float32)


class SynthPickPlace:
    """The gem-synth tabletop on held-out seeds: each episode a new scene, object and plate, as in training."""

    name = "gem-synth-closed-loop"

    def __init__(self, cfg: ClosedLoopConfig):
        self.cfg = cfg
        self.cameras = list(cfg.cameras)

    def num_episodes(self) -> int:
        return self.cfg.episodes

    def task(self, episode: int) -> SynthTask:
        rng = np.random.default_rng([self.cfg.seed, EVAL_STREAM, episode])
        world = make_world(rng)  # the same draws, in the same order, as synth_episodes.run_episode
        item, target = world.objects[world.item].name, world.objects[world.target].name
        instruction = INSTRUCTIONS[rng.integers(len(INSTRUCTIONS))].format(item=item, target=target)
        return SynthTask(world, instruction, self.cfg)


# --- policies ------------------------------------------------------------------------------------------------


class ExpertPolicy:
    """The scripted expert that made the training episodes, closed loop (one action per observation)."""

    needs_images = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def reset(self, episode: int) -> None:
        self.expert = ScriptedExpert(np.random.default_rng([self.seed, POLICY_STREAM, episode]))

    def observe(self, observation: Observation) -> None:
        pass

    def act(self, observation: Observation) -> np.ndarray:
        return self.expert.act(observation.privileged)[None]


class RandomPolicy:
    """Uniform random actions in [low, high] per dimension: the floor a policy must beat. The defaults are the
    built-in task's: displacements up to the step limit, the gripper command 0 (close) or 1 (open)."""

    needs_images = False

    def __init__(self, seed: int = 0, chunk: int = 1, low=None, high=None):
        self.seed, self.chunk = seed, chunk
        self.low = np.array([-MAX_STEP_M] * 3 + [0.0] if low is None else low, dtype=np.float64)
        self.high = np.array([MAX_STEP_M] * 3 + [1.0] if high is None else high, dtype=np.float64)
        self.binary_gripper = low is None and high is None

    def reset(self, episode: int) -> None:
        self.rng = np.random.default_rng([self.seed, POLICY_STREAM, episode])

    def observe(self, observation: Observation) -> None:
        pass

    def act(self, observation: Observation) -> np.ndarray:
        actions = self.rng.uniform(self.low, self.high, (self.chunk, len(self.low)))
        if self.binary_gripper:
            actions[:, -1] = actions[:, -1].round()
        return actions.astype(np.float32)


class _Now:
    """The current step as a one-window EpisodeWindows, so stage 4's EpisodeSamples builds the prompt."""

    def __init__(self, cameras: list[str], window: dict):
        self.cameras, self.window = cameras, window

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return self.window


class GemPolicy:
    """GEM-VLA: the prompt stage 4 trained on (its cameras, history and prompt style, nothing left out), the
    predicted chunk's first `replan_every` actions run open loop."""

    needs_images = True

    def __init__(self, model, samples_cfg, replan_every: int = 4, seed: int = 0):
        from ..config import EpisodeSamplesConfig

        self.model, self.seed = model, seed
        self.samples_cfg = samples_cfg or EpisodeSamplesConfig()
        chunk = model.cfg.action.chunk_size
        if not 1 <= replan_every <= chunk:
            raise InputError(f"replan_every is {replan_every}: use 1 to the model's chunk size ({chunk})")
        self.replan_every = replan_every

    def reset(self, episode: int) -> None:
        import torch

        self.history: deque | None = None
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [self.seed, POLICY_STREAM, episode]).generate_state(1)[0]))

    def observe(self, observation: Observation) -> None:
        """Keep the last image_history frames of every step (training's history is consecutive steps)."""
        self.cameras = list(self.samples_cfg.cameras or list(observation.images)[:1])
        missing = [c for c in self.cameras if c not in observation.images]
        if missing:
            raise InputError(f"the policy was trained on cameras {self.cameras} but the task renders "
                             f"{list(observation.images)}: evaluate with cameras {self.cameras}")
        frame = [Image.fromarray(observation.images[c]) for c in self.cameras]
        if self.history is None:  # before the episode's start its first frame repeats, as in training
            self.history = deque([frame] * self.samples_cfg.image_history, maxlen=self.samples_cfg.image_history)
        else:
            self.history.append(frame)

    def act(self, observation: Observation) -> np.ndarray:
        """The chunk for `observation`, which must be the last one observed."""
        import torch

        from ..train import EpisodeSamples

        cameras = self.cameras
        window = {"images": [im for f in self.history for im in f], "depth": None, "state": observation.state,
                  "instruction": observation.instruction, "actions": None}
        # state_std is only read for state noise, which an unseeded draw never adds
        sample = EpisodeSamples(_Now(cameras, window), self.samples_cfg, state_std=np.ones_like(observation.state))[0]
        batch = self.model.processor([sample])
        batch["state"] = torch.as_tensor(observation.state, dtype=torch.float32)[None]
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            chunk = self.model.predict_actions(batch, generator=self._generator(device))
        return chunk[0, : self.replan_every].float().cpu().numpy()

    def _generator(self, device):
        if device.type == "cpu":
            return self.generator
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator(device).manual_seed(seed)


def load_policy(ckpt_dir: Path, model_cfg, samples_cfg, replan_every: int = 4, seed: int = 0,
                device: str = "cpu") -> GemPolicy:
    """The GEM-VLA policy of a checkpoint directory, prompted as `samples_cfg` (the recipe's stage 4 episodes)."""
    from gem_models.gem import CONFIG_FILE, GemModel

    if not (Path(ckpt_dir) / CONFIG_FILE).is_file():
        raise InputError(f"{ckpt_dir} is not a GEM checkpoint (no {CONFIG_FILE}): give a stage's checkpoint folder")
    try:
        model = GemModel.load(str(ckpt_dir), model_cfg)
    except ValueError as e:
        raise InputError(f"{e}: evaluate it with the recipe it was trained with") from None
    if model.action_expert is None:
        raise InputError(f"the model in {ckpt_dir} has no action expert: closed loop needs a stage-4 checkpoint")
    return GemPolicy(model.to(device).eval(), samples_cfg, replan_every, seed)


def synth_config(data_cfg, samples_cfg, **overrides) -> ClosedLoopConfig:
    """The built-in task rendered as the training episodes were: their image size and the cameras stage 4 showed
    (its `cameras`, else the data's first camera)."""
    cameras = tuple(samples_cfg.cameras or data_cfg.cameras[:1])
    return ClosedLoopConfig(**{"cameras": cameras, "image_height": data_cfg.image_height,
                               "image_width": data_cfg.image_width, **overrides})


# --- running, sharding, merging ------------------------------------------------------------------------------


@dataclass
class EpisodeResult:
    episode: int
    task: str
    instruction: str
    success: bool
    steps: int  # actions executed (the step limit when it never succeeded)
    nonfinite_actions: int  # actions with NaN/inf (executed as no-ops, counted so a broken policy shows)
    video: str | None = None  # mp4 path relative to the output folder


def run_episode(env: Environment, policy: Policy, episode: int, video: Path | None = None) -> EpisodeResult:
    task = env.task(episode)
    policy.reset(episode)
    look = policy.needs_images or video is not None
    frames, queue, steps, nonfinite = [], deque(), 0, 0
    observation = task.observe(look)
    while steps < task.max_steps and not task.success():
        policy.observe(observation)
        if video is not None:
            frames.append(np.concatenate([observation.images[c] for c in env.cameras], axis=1))
        if not queue:
            queue.extend(np.asarray(policy.act(observation), dtype=np.float32))
        action = queue.popleft()
        if not np.isfinite(action).all():
            nonfinite += 1
            action = task.hold_action()
        task.step(action)
        steps += 1
        observation = task.observe(look)
    if video is not None:
        frames.append(np.concatenate([observation.images[c] for c in env.cameras], axis=1))
        write_video(video, frames)
    return EpisodeResult(episode, task.name, task.instruction, task.success(), steps, nonfinite)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """H.264 mp4 (PyAV); odd sizes are padded by one pixel, as yuv420p needs even sides."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.pad(frame, pad, mode="edge"), format="rgb24")))
        container.mux(stream.encode())


def shard_file(out_dir: Path, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / "shards" / f"shard-{shard:03d}-of-{num_shards:03d}.jsonl"


def run_shard(env: Environment, policy: Policy, out_dir: Path, shard: int = 0, num_shards: int = 1,
              videos: int = 2) -> list[EpisodeResult]:
    """Episodes i with i % num_shards == shard; writes shards/shard-KKK-of-NNN.jsonl (whole, or not at all) and
    videos/episode-IIII.mp4 for episodes below `videos`."""
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} of {num_shards}: use 0 to {num_shards - 1}")
    out_dir = Path(out_dir)
    results = []
    for i in range(shard, env.num_episodes(), num_shards):
        video = out_dir / "videos" / f"episode-{i:04d}.mp4" if i < videos else None
        result = run_episode(env, policy, i, video)
        result.video = str(video.relative_to(out_dir)) if video else None
        results.append(result)
    path = shard_file(out_dir, shard, num_shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    tmp.replace(path)
    return results


class _Episodes(Benchmark):
    metric = "success_rate"


def merge(env: Environment, out_dir: Path, num_shards: int = 1) -> dict:
    """Every shard's episodes -> predictions.jsonl (one line per episode, in order) and results.json (success
    rate overall and per task). A missing shard or episode stops with one line; nothing is written then."""
    out_dir = Path(out_dir)
    results: dict[int, dict] = {}
    for shard in range(num_shards):
        path = shard_file(out_dir, shard, num_shards)
        if not path.is_file():
            raise InputError(f"shard {shard} of {num_shards} has no results ({path}): run that shard again")
        for line in path.read_text().splitlines():
            r = json.loads(line)
            results[r["episode"]] = r
    missing = sorted(set(range(env.num_episodes())) - set(results))
    if missing:
        raise InputError(f"episodes {missing[:5]} have no results in {out_dir / 'shards'}: run their shards again")
    rows = [results[i] for i in range(env.num_episodes())]
    bench = _Episodes(out_dir)
    bench.name = env.name
    items = [EvalItem(id=f"episode-{r['episode']:04d}", kind="episode", question=r["instruction"],
                      answer=True, category=r["task"]) for r in rows]
    graded = [Graded(id=item.id, parsed=r["success"], score=float(r["success"])) for item, r in zip(items, rows)]
    summary = aggregate(bench, items, graded)
    summary["counts"]["nonfinite_actions"] = sum(r["nonfinite_actions"] for r in rows)
    summary["counts"]["mean_steps"] = float(np.mean([r["steps"] for r in rows])) if rows else 0.0
    with open(out_dir / "predictions.jsonl", "w") as f:
        for item, r in zip(items, rows):
            f.write(json.dumps({"id": item.id, **r, "score": float(r["success"])}) + "\n")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
