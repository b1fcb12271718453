"""gem-synth scenes: coloured primitives on a table, rendered with exact depth and an object-id buffer.

World frame: metres, z up, the table top is the plane z = 0 centred on the origin, the robot/viewer side is -y.
A render gives RGB (Lambert shading with hard shadows), z-depth (distance along the optical axis, as depth maps
store it) and, per pixel, which surface was hit. Object statistics (box, point, mean depth, pixel count) come from
the id buffer, so questions asked about a render are answerable from that render alone.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .camera import Camera, look_at
from .raycast import Box, Cylinder, HorizontalRect, Sphere, dot3, hit_culled

# Id-buffer codes: objects are their index (>= 0) in the scene's object list; everything else is negative.
ID_TABLE, ID_FLOOR, ID_NOTHING, ID_GRIPPER = -1, -2, -3, -4

MAX_DEPTH_M = 4.0  # surfaces farther than this count as "no hit": depth 0 (invalid), like a sensor's range
TABLE_HALF = (0.30, 0.22)  # table top half extents in x, y (metres)
FLOOR_Z = -0.75  # the floor under the table
FOV_DEG = 50.0  # vertical field of view of every synthetic camera

COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.28, 0.85),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.55, 0.22, 0.70),
    "orange": (0.95, 0.50, 0.08),
    "white": (0.92, 0.92, 0.90),
}
SHAPES = ("cube", "ball", "cylinder", "plate")
SHAPE_WEIGHTS = (0.3, 0.25, 0.25, 0.2)
PICKABLE = ("cube", "ball", "cylinder")  # a plate is a place to put things, not a thing to pick
GRIPPER_RGB = (0.35, 0.35, 0.38)

# Fixed episode cameras: (eye, target). A policy needs the same viewpoint in every episode.
EPISODE_CAMERAS = {
    "front": ((0.0, -0.60, 0.50), (0.0, 0.02, 0.03)),
    "top": ((0.0, 0.0, 0.80), (0.0, 0.0, 0.0)),
    "side": ((0.65, 0.0, 0.45), (0.0, 0.0, 0.03)),
}


@dataclass(frozen=True)
class SceneObject:
    colour: str  # key of COLOURS
    shape: str  # one of SHAPES
    x: float  # centre of the bottom face (metres)
    y: float
    z: float  # 0 when standing on the table
    size: float  # cube edge / ball, cylinder or plate diameter (metres)
    height: float  # metres (cube and ball: equal to size)
    yaw: float = 0.0  # rotation about z (radians; only visible on cubes)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def footprint(self) -> float:
        """Radius of the object's bounding circle on the table (a cube's half diagonal)."""
        return self.size / 2 * (np.sqrt(2.0) if self.shape == "cube" else 1.0)

    @property
    def center(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z + self.height / 2])

    @property
    def top(self) -> float:
        return self.z + self.height

    def primitive(self):
        r = self.size / 2
        if self.shape == "ball":
            return Sphere(tuple(self.center), r)
        if self.shape == "cube":
            return Box(tuple(self.center), (r, r, r), self.yaw)
        return Cylinder((self.x, self.y, self.z), r, self.height)

    def moved_to(self, x: float, y: float, z: float) -> "SceneObject":
        return replace(self, x=float(x), y=float(y), z=float(z))


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres; 0 = nothing within MAX_DEPTH_M
    ids: np.ndarray  # (H, W) int16: object index, or ID_TABLE / ID_FLOOR / ID_NOTHING / ID_GRIPPER


@dataclass(frozen=True)
class ObjectView:
    pixels: int  # visible pixel count (0 = hidden or out of view)
    box: tuple[int, int, int, int] | None  # [x1, y1, x2, y2] pixel edges: x2, y2 one past the last pixel
    point: tuple[int, int] | None  # (x, y) column, row of the visible pixel nearest the centroid
    centroid: tuple[float, float] | None  # (x, y) mean of the visible pixels' centres, pixel-edge coords
    mean_depth: float  # mean z-depth of the visible pixels (metres); nan when hidden


def _sample_object(rng: np.random.Generator, colour: str, shape: str) -> SceneObject:
    if shape == "cube":
        size = rng.uniform(0.065, 0.095)
        return SceneObject(colour, shape, 0.0, 0.0, 0.0, size, size, rng.uniform(0, np.pi / 2))
    if shape == "ball":
        size = rng.uniform(0.065, 0.10)
        return SceneObject(colour, shape, 0.0, 0.0, 0.0, size, size)
    if shape == "cylinder":
        return SceneObject(colour, shape, 0.0, 0.0, 0.0, rng.uniform(0.055, 0.08), rng.uniform(0.08, 0.14))
    return SceneObject(colour, shape, 0.0, 0.0, 0.0, rng.uniform(0.13, 0.17), 0.012)


def sample_objects(
    rng: np.random.Generator,
    count: int,
    required: Sequence[tuple[str | None, str]] = (),
    region: tuple[float, float] = TABLE_HALF,
) -> list[SceneObject]:
    """`count` objects with distinct names, placed on the table without overlap.

    `required` lists (colour or None, shape) that must be among them (episodes need a plate and something to pick).
    Objects are kept inside `region` (half extents around the origin). An object that finds no free spot in 200
    tries is dropped, so a crowded table can hold fewer than `count`, deterministically.
    """
    kinds: list[tuple[str, str]] = []
    for colour, shape in required:
        options = [c for c in COLOURS if (c, shape) not in kinds] if colour is None else [colour]
        kinds.append((options[rng.integers(len(options))], shape))
    while len(kinds) < count:
        kind = (list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.choice(len(SHAPES), p=SHAPE_WEIGHTS)])
        if kind not in kinds:
            kinds.append(kind)
    placed: list[SceneObject] = []
    for colour, shape in kinds:
        obj = _sample_object(rng, colour, shape)
        span = np.array(region) - obj.footprint - 0.01
        for _ in range(200):
            x, y = rng.uniform(-span, span)
            if all(np.hypot(x - o.x, y - o.y) >= obj.footprint + o.footprint + 0.015 for o in placed):
                placed.append(obj.moved_to(x, y, 0.0))
                break
    return placed


def scene_camera(
    rng: np.random.Generator, width: int, height: int, azimuth_deg: float | None = None
) -> Camera:
    """A viewer in front of the table (the -y side) looking down at it from a random distance, height and angle."""
    azimuth = np.radians(rng.uniform(-35, 35) if azimuth_deg is None else azimuth_deg)
    elevation = np.radians(rng.uniform(40, 70))
    distance = rng.uniform(0.75, 0.95)
    eye = distance * np.array(
        [np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation), np.sin(elevation)]
    )
    target = np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), 0.03])
    return look_at(eye, target, width, height, FOV_DEG)


def episode_camera(name: str, width: int, height: int) -> Camera:
    eye, target = EPISODE_CAMERAS[name]
    return look_at(eye, target, width, height, FOV_DEG)


def _checker(x: np.ndarray, y: np.ndarray, tile: float) -> np.ndarray:
    return ((np.floor(x / tile) + np.floor(y / tile)) % 2).astype(np.float64)


def render(
    objects: Sequence[SceneObject],
    camera: Camera,
    extra: Sequence[tuple[object, tuple[float, float, float]]] = (),
) -> Render:
    """Ray-cast one image. `extra` are (primitive, rgb) drawn with id ID_GRIPPER (the robot gripper)."""
    surfaces = [(ID_TABLE, HorizontalRect(0.0, *TABLE_HALF), None), (ID_FLOOR, HorizontalRect(FLOOR_Z), None)]
    surfaces += [(i, o.primitive(), COLOURS[o.colour]) for i, o in enumerate(objects)]
    surfaces += [(ID_GRIPPER, prim, rgb) for prim, rgb in extra]

    origin, dirs = camera.position, camera.rays
    n = len(dirs)
    best = np.full(n, np.inf)
    which = np.full(n, -1)  # index into `surfaces`
    for k, (_, prim, _) in enumerate(surfaces):
        # Small primitives are tested only on the pixels their bounding sphere can cover (most rays miss them).
        cover = camera.pixels_covering(*prim.bounds()) if hasattr(prim, "bounds") else None
        if cover is None:
            t = hit_culled(prim, origin, dirs)
            closer = t < best
            best[closer], which[closer] = t[closer], k
        elif cover.size:
            t = prim.hit(origin, dirs[cover])
            closer = t < best[cover]
            best[cover[closer]], which[cover[closer]] = t[closer], k
    hit = best <= MAX_DEPTH_M
    which[~hit] = -1

    ids = np.full(n, ID_NOTHING, dtype=np.int16)
    albedo = np.zeros((n, 3))
    normals = np.zeros((n, 3))
    points = origin + np.where(hit, best, 0.0)[:, None] * dirs
    for k, (sid, prim, rgb) in enumerate(surfaces):
        mask = which == k
        if not mask.any():
            continue
        ids[mask] = sid
        normals[mask] = prim.normal(points[mask])
        p = points[mask]
        if sid == ID_TABLE:  # light wood with 5 cm tiles: texture gives the image perspective cues
            albedo[mask] = (
                np.array([0.62, 0.45, 0.28]) * (0.92 + 0.08 * _checker(p[:, 0], p[:, 1], 0.05))[:, None]
            )
        elif sid == ID_FLOOR:
            albedo[mask] = (
                np.array([0.45, 0.45, 0.47]) * (0.85 + 0.15 * _checker(p[:, 0], p[:, 1], 0.25))[:, None]
            )
        else:
            albedo[mask] = rgb

    # Lambert shading with hard shadows from one directional light; occluders are the objects and the gripper.
    light = np.array([0.35, -0.55, 1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(dot3(normals, light), 0.0, None)
    lit = np.ones(n, dtype=bool)
    lit_idx = np.flatnonzero(hit & (lambert > 0))
    if lit_idx.size:
        start = points[lit_idx] + normals[lit_idx] * 1e-4
        to_light = np.broadcast_to(light, start.shape)
        # All shadow rays are parallel: in the plane across the light, a bounding sphere is a disc to test against.
        across = np.cross(light, [1.0, 0.0, 0.0])
        across /= np.linalg.norm(across)
        basis = np.stack([across, np.cross(light, across), light], axis=1)
        su, sv, sw = (dot3(start, axis) for axis in basis.T)
        for sid, prim, _ in surfaces:
            if sid == ID_FLOOR:  # the table can shade the floor, but nothing lies under the floor
                continue
            if hasattr(prim, "bounds"):
                center, radius = prim.bounds()
                cu, cv, cw = (float(np.dot(center, axis)) for axis in basis.T)
                radius = radius * (1 + 1e-6) + 1e-9
                cand = np.flatnonzero(
                    ((su - cu) ** 2 + (sv - cv) ** 2 <= radius * radius) & (sw < cw + radius)
                )
            else:
                cand = np.arange(len(start))
            if cand.size:
                blocked = np.isfinite(prim.hit(start[cand], to_light[cand]))
                lit[lit_idx[cand[blocked]]] = False
    shade = 0.35 + 0.65 * lambert * lit
    colour = albedo * shade[:, None]
    rows = np.repeat(np.arange(camera.height), camera.width) / max(camera.height - 1, 1)
    sky = np.array([0.55, 0.62, 0.72])[None, :] * (1.0 - 0.25 * rows)[:, None]
    colour[~hit] = sky[~hit]

    shape2d = (camera.height, camera.width)
    rgb = np.round(np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8).reshape(*shape2d, 3)
    depth = np.where(hit, best, 0.0).astype(np.float32).reshape(shape2d)
    return Render(rgb, depth, ids.reshape(shape2d))


def object_views(result: Render, num_objects: int) -> list[ObjectView]:
    """Per object: visible pixels, box, a point on it and mean depth, all read off the id buffer."""
    views = []
    for index in range(num_objects):
        rows, cols = np.nonzero(result.ids == index)
        if rows.size == 0:
            views.append(ObjectView(0, None, None, None, float("nan")))
            continue
        cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
        nearest = int(np.argmin((rows + 0.5 - cy) ** 2 + (cols + 0.5 - cx) ** 2))
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        mean_depth = float(result.depth[rows, cols].astype(np.float64).mean())
        point = (int(cols[nearest]), int(rows[nearest]))
        views.append(ObjectView(int(rows.size), box, point, (float(cx), float(cy)), mean_depth))
    return views


def min_visible_pixels(height: int, width: int) -> int:
    """Objects with fewer visible pixels are too small to ask about (0.15% of the image, at least 6 pixels)."""
    return max(6, round(height * width * 0.0015))
