"""gem-synth action episodes: a floating gripper picks one object and puts it on a plate.

Kinematics, deliberately simple (a point gripper, no dynamics):
  state  = [x, y, z, opening]     gripper fingertip centre in world metres; opening 0 (closed) .. 1 (open)
  action = [dx, dy, dz, command]  displacement in metres for this step (norm <= MAX_STEP_M; larger is scaled
                                  down), command 0 = close, 1 = open
The opening moves toward the command by OPENING_RATE per step. The gripper grasps the nearest pickable object
whose centre is within GRASP_RADIUS_M of the fingertips at the step where the opening falls to 0.5 or below; a
held object follows the fingertips. When the opening rises back to 0.5 or above the object is released and drops
onto the plate under it (if its centre is within the plate's radius) or onto the table. Success: the instructed
object rests on the instructed plate, released.

A scripted expert drives the gripper through the plan of synth_questions.plan_steps with small seeded noise on
every displacement, closed-loop (each waypoint is re-aimed from the current state), so noise never breaks it.
"""

from dataclasses import dataclass

import numpy as np

from .depth_png import depth_to_mm
from .raycast import Box, Cylinder
from .synth_scene import (
    FLOOR_Z,
    GRIPPER_RGB,
    PICKABLE,
    TABLE_HALF,
    SceneObject,
    episode_camera,
    render,
    sample_objects,
)

MAX_STEP_M = 0.05  # longest gripper displacement per step
OPENING_RATE = 0.5  # opening change per step
GRASP_RADIUS_M = 0.025  # fingertips this close to an object's centre can grasp it
NOISE_M = 0.002  # expert noise: std of each displacement component
SAFE_CLEARANCE_M = 0.08  # height above an object/plate at which the expert travels
WAYPOINT_TOL_M = 0.01  # the expert moves on once this close to a waypoint
WORKSPACE = ((-0.35, 0.35), (-0.30, 0.30), (0.005, 0.45))  # reachable fingertip box (metres)

STATE_NAMES = ["x", "y", "z", "gripper_opening"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper_command"]
UNITS = {
    "state": "x, y, z: fingertip position in metres (world frame: table top z = 0, viewer at -y); "
    "gripper_opening: 0 closed .. 1 open",
    "action": "dx, dy, dz: displacement in metres this step (norm <= 0.05); gripper_command: 0 close, 1 open",
    "depth": "uint16 millimetres along the camera axis, 0 = invalid",
}


@dataclass
class PickPlaceWorld:
    objects: list[SceneObject]  # scene objects; moved in place as the held one travels
    item: int  # index of the object to move
    target: int  # index of the plate to put it on
    gripper: np.ndarray  # (3,) fingertip position
    opening: float = 1.0  # 0 closed .. 1 open
    held: int | None = None  # index of the object in the gripper

    def state(self) -> np.ndarray:
        return np.array([*self.gripper, self.opening], dtype=np.float32)

    def step(self, action: np.ndarray) -> None:
        delta = np.array(action[:3], dtype=np.float64)  # a copy: the caller's action stays as recorded
        norm = np.linalg.norm(delta)
        if norm > MAX_STEP_M:
            delta *= MAX_STEP_M / norm
        lo, hi = np.array(WORKSPACE).T
        self.gripper = np.clip(self.gripper + delta, lo, hi)
        before = self.opening
        command = float(np.clip(action[3], 0.0, 1.0))
        self.opening = float(np.clip(command, before - OPENING_RATE, before + OPENING_RATE))

        if self.held is not None:
            obj = self.objects[self.held]
            self.objects[self.held] = obj.moved_to(*self.gripper[:2], self.gripper[2] - obj.height / 2)
            if self.opening >= 0.5:
                self._drop(self.held)
                self.held = None
        elif before > 0.5 >= self.opening:
            near = [
                (np.linalg.norm(o.center - self.gripper), i)
                for i, o in enumerate(self.objects)
                if o.shape in PICKABLE and np.linalg.norm(o.center - self.gripper) <= GRASP_RADIUS_M
            ]
            if near:
                self.held = min(near)[1]

    def _drop(self, index: int) -> None:
        obj = self.objects[index]
        support = 0.0 if abs(obj.x) <= TABLE_HALF[0] and abs(obj.y) <= TABLE_HALF[1] else FLOOR_Z
        for o in self.objects:
            if o.shape == "plate" and o is not obj and np.hypot(obj.x - o.x, obj.y - o.y) <= o.size / 2:
                support = max(support, o.top)
        self.objects[index] = obj.moved_to(obj.x, obj.y, support)

    def success(self) -> bool:
        item, plate = self.objects[self.item], self.objects[self.target]
        on_plate = np.hypot(item.x - plate.x, item.y - plate.y) <= plate.size / 2
        return self.held is None and bool(on_plate) and abs(item.z - plate.top) < 1e-9

    def gripper_parts(self) -> list[tuple[object, tuple[float, float, float]]]:
        """Palm, two fingers (their gap shows the opening) and a wrist rod, for rendering."""
        x, y, z = self.gripper
        gap = 0.02 + 0.07 * self.opening
        if self.held is not None:
            gap = max(gap, self.objects[self.held].size)
        finger = (0.008, 0.005, 0.028)
        light = tuple(min(1.0, c + 0.25) for c in GRIPPER_RGB)
        return [
            (Box((x, y, z + 0.052), (0.012, gap / 2 + 0.012, 0.008)), GRIPPER_RGB),
            (Box((x, y - gap / 2 - 0.005, z + 0.018), finger), light),
            (Box((x, y + gap / 2 + 0.005, z + 0.018), finger), light),
            (Cylinder((x, y, z + 0.06), 0.01, 0.15), GRIPPER_RGB),
        ]


class ScriptedExpert:
    """Waypoint follower over the plan: above item, down, close, lift, above plate, down, open, retract."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.phase = 0
        self.retract_steps = 0

    def done(self) -> bool:
        return self.phase == 7 and self.retract_steps >= 2

    def _carry_z(self, world: PickPlaceWorld) -> float:
        item, plate = world.objects[world.item], world.objects[world.target]
        tallest = max(o.top for i, o in enumerate(world.objects) if i != world.item)
        return max(plate.top + item.height / 2 + 0.01, tallest + item.height / 2) + SAFE_CLEARANCE_M

    def act(self, world: PickPlaceWorld) -> np.ndarray:
        item, plate = world.objects[world.item], world.objects[world.target]
        grasp = item.center
        above_item = grasp + [0.0, 0.0, SAFE_CLEARANCE_M]
        carry = np.array([plate.x, plate.y, self._carry_z(world)])
        place = np.array([plate.x, plate.y, plate.top + item.height / 2 + 0.01])
        pos = world.gripper
        command = 1.0
        if self.phase == 0:  # above the item
            goal = above_item
            if np.linalg.norm(goal - pos) < WAYPOINT_TOL_M:
                self.phase = 1
        if self.phase == 1:  # down to the grasp point
            goal = grasp
            if np.linalg.norm(goal - pos) < WAYPOINT_TOL_M:
                self.phase = 2
        if self.phase == 2:  # close; the world grasps when the opening drops through 0.5
            goal, command = pos, 0.0
            if world.held == world.item:
                self.phase = 3
            elif world.opening <= 0.0:  # closed on nothing: open and re-approach
                self.phase, command = 0, 1.0
        if self.phase == 3:  # lift
            goal, command = np.array([pos[0], pos[1], carry[2]]), 0.0
            if abs(carry[2] - pos[2]) < WAYPOINT_TOL_M:
                self.phase = 4
        if self.phase == 4:  # above the plate
            goal, command = carry, 0.0
            if np.linalg.norm(goal - pos) < WAYPOINT_TOL_M:
                self.phase = 5
        if self.phase == 5:  # down onto the plate
            goal, command = place, 0.0
            if np.linalg.norm(goal - pos) < WAYPOINT_TOL_M:
                self.phase = 6
        if self.phase == 6:  # open: the world releases when the opening rises through 0.5
            goal, command = pos, 1.0
            if world.held is None:
                self.phase = 7
        if self.phase == 7:  # retract
            goal = pos + [0.0, 0.0, MAX_STEP_M]
            self.retract_steps += 1
        delta = goal - pos
        norm = np.linalg.norm(delta)
        if norm > MAX_STEP_M:
            delta *= MAX_STEP_M / norm
        delta = delta + self.rng.normal(0.0, NOISE_M, 3)
        norm = np.linalg.norm(delta)
        if norm > MAX_STEP_M:  # record exactly what the world executes
            delta *= MAX_STEP_M / norm
        return np.array([*delta, command], dtype=np.float32)


@dataclass
class Episode:
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    depths: dict[str, np.ndarray]  # camera -> (N, H, W) uint16 mm
    state: np.ndarray  # (N, 4) float32
    action: np.ndarray  # (N, 4) float32
    instruction: str
    success: bool


INSTRUCTIONS = (
    "put the {item} on the {target}",
    "place the {item} on the {target}",
    "pick up the {item} and put it on the {target}",
)


def make_world(rng: np.random.Generator) -> PickPlaceWorld:
    shape = PICKABLE[rng.integers(len(PICKABLE))]
    count = int(rng.integers(3, 5))
    # Objects stay in the middle of the table so every camera sees the whole task.
    objects = sample_objects(rng, count, required=[(None, "plate"), (None, shape)], region=(0.22, 0.16))
    start = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.12, 0.0), rng.uniform(0.22, 0.28)])
    return PickPlaceWorld(objects=objects, item=1, target=0, gripper=start)


def run_episode(
    rng: np.random.Generator, cameras: list[str], height: int, width: int, max_steps: int
) -> Episode:
    """Roll the expert out for at most `max_steps`, rendering every camera before each action."""
    world = make_world(rng)
    item, target = world.objects[world.item].name, world.objects[world.target].name
    instruction = INSTRUCTIONS[rng.integers(len(INSTRUCTIONS))].format(item=item, target=target)
    expert = ScriptedExpert(rng)
    views = {name: episode_camera(name, width, height) for name in cameras}
    images = {name: [] for name in cameras}
    depths = {name: [] for name in cameras}
    states, actions = [], []
    for _ in range(max_steps):
        for name, camera in views.items():
            frame = render(world.objects, camera, extra=world.gripper_parts())
            images[name].append(frame.rgb)
            depths[name].append(depth_to_mm(frame.depth))
        states.append(world.state())
        action = expert.act(world)
        actions.append(action)
        world.step(action)
        if expert.done():
            break
    return Episode(
        images={k: np.stack(v) for k, v in images.items()},
        depths={k: np.stack(v) for k, v in depths.items()},
        state=np.stack(states),
        action=np.stack(actions),
        instruction=instruction,
        success=world.success(),
    )
