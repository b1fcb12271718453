"""Analytic ray-primitive intersection, vectorised over rays.

Every primitive has `hit(origins, dirs) -> t` (np.inf where the ray misses; origins (3,) or (N, 3), dirs (N, 3),
not necessarily unit length, so t is in units of |dir|) and `normal(points) -> unit normals`. Exact analytic hits
are what make the synthetic depth maps ground truth rather than an approximation.
"""

from dataclasses import dataclass

import numpy as np

T_MIN = 1e-7  # hits closer than this are the ray's own surface (shadow rays start on a surface)


def dot3(vectors: np.ndarray, v) -> np.ndarray:
    """(N, 3) . (3,) with plain elementwise arithmetic. `@` would call BLAS, whose threads oversubscribe the
    cores (and whose kernels may round differently across machines); this is deterministic and single-threaded."""
    return vectors[:, 0] * v[0] + vectors[:, 1] * v[1] + vectors[:, 2] * v[2]


def hit_culled(prim, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """prim.hit, evaluated only on rays that pass through the primitive's bounding sphere.

    Most rays miss a small object; the sphere test costs a few operations per ray where the exact tests cost
    dozens. `hit` is elementwise, so the result is bit-identical to prim.hit(origins, dirs).
    """
    if not hasattr(prim, "bounds"):  # planes: already cheap
        return prim.hit(origins, dirs)
    center, radius = prim.bounds()
    radius = radius * (1 + 1e-6) + 1e-9  # conservative against rounding
    oc = center - origins
    if oc.ndim == 1:
        along = dot3(dirs, oc)
        oc2 = float(oc[0] * oc[0] + oc[1] * oc[1] + oc[2] * oc[2])
    else:
        along = np.einsum("ij,ij->i", dirs, oc)
        oc2 = np.einsum("ij,ij->i", oc, oc)
    dd = np.einsum("ij,ij->i", dirs, dirs)
    # squared distance from the centre to the ray's line, and the sphere not entirely behind the origin
    near = (oc2 * dd - along * along <= radius * radius * dd) & (along > -radius * np.sqrt(dd))
    t = np.full(len(dirs), np.inf)
    index = np.flatnonzero(near)
    if index.size:
        t[index] = prim.hit(origins if origins.ndim == 1 else origins[index], dirs[index])
    return t


def _nearest_positive(*candidates: np.ndarray) -> np.ndarray:
    t = np.stack(candidates)
    t = np.where(t > T_MIN, t, np.inf)
    return t.min(axis=0)


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]  # metres
    radius: float  # metres

    def hit(self, origins, dirs):
        oc = origins - np.asarray(self.center)
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = (oc * dirs).sum(axis=-1)
        c = (oc * oc).sum(axis=-1) - self.radius**2
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        near, far = (-b - root) / a, (-b + root) / a
        t = _nearest_positive(near, far)
        return np.where(disc >= 0, t, np.inf)

    def normal(self, points):
        return (points - np.asarray(self.center)) / self.radius

    def bounds(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center), self.radius


@dataclass(frozen=True)
class Box:
    center: tuple[float, float, float]  # metres
    half: tuple[float, float, float]  # half extents along the box's own x, y, z (metres)
    yaw: float = 0.0  # rotation about world z (radians)

    def _to_local(self, vectors):
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        x, y = vectors[..., 0], vectors[..., 1]
        return np.stack([c * x + s * y, -s * x + c * y, vectors[..., 2]], axis=-1)

    def hit(self, origins, dirs):
        o = self._to_local(np.broadcast_to(origins - np.asarray(self.center), dirs.shape))
        d = self._to_local(dirs)
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)  # a ray parallel to a slab: inf/nan-free slab test
        half = np.asarray(self.half)
        t1, t2 = (-half - o) / d, (half - o) / d
        t_near = np.minimum(t1, t2).max(axis=-1)
        t_far = np.maximum(t1, t2).min(axis=-1)
        t = np.where(t_near > T_MIN, t_near, t_far)  # origin inside the box (never for cameras): exit point
        return np.where((t_far >= t_near) & (t > T_MIN), t, np.inf)

    def normal(self, points):
        local = self._to_local(points - np.asarray(self.center)) / np.asarray(self.half)
        axis = np.abs(local).argmax(axis=-1)
        n_local = np.zeros_like(local)
        n_local[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        x, y = n_local[:, 0], n_local[:, 1]
        return np.stack([c * x - s * y, s * x + c * y, n_local[:, 2]], axis=-1)

    def bounds(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center), float(np.linalg.norm(self.half))


@dataclass(frozen=True)
class Cylinder:
    base: tuple[float, float, float]  # centre of the bottom disc (metres); the axis is world z
    radius: float  # metres
    height: float  # metres

    def hit(self, origins, dirs):
        o = np.broadcast_to(origins - np.asarray(self.base), dirs.shape)
        # side: the infinite vertical tube, kept where the hit lies between the caps
        a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
        b = o[:, 0] * dirs[:, 0] + o[:, 1] * dirs[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - self.radius**2
        disc = b * b - a * c
        safe_a = np.where(a > 1e-18, a, 1.0)
        root = np.sqrt(np.maximum(disc, 0.0))
        sides = []
        for t in ((-b - root) / safe_a, (-b + root) / safe_a):
            z = o[:, 2] + t * dirs[:, 2]
            sides.append(np.where((disc >= 0) & (a > 1e-18) & (z >= 0) & (z <= self.height), t, np.inf))
        # caps: the discs z = 0 and z = height
        caps = []
        dz = np.where(np.abs(dirs[:, 2]) < 1e-12, 1e-12, dirs[:, 2])
        for level in (0.0, self.height):
            t = (level - o[:, 2]) / dz
            x, y = o[:, 0] + t * dirs[:, 0], o[:, 1] + t * dirs[:, 1]
            caps.append(np.where(x * x + y * y <= self.radius**2, t, np.inf))
        return _nearest_positive(*sides, *caps)

    def normal(self, points):
        p = points - np.asarray(self.base)
        side = np.stack([p[:, 0], p[:, 1], np.zeros(len(p))], axis=-1) / self.radius
        tol = 1e-6
        top = np.broadcast_to([0.0, 0.0, 1.0], p.shape)
        bottom = np.broadcast_to([0.0, 0.0, -1.0], p.shape)
        # A cap hit lies on the cap plane strictly inside the rim; on the rim either normal is fine.
        radial = np.hypot(p[:, 0], p[:, 1])
        on_top = (np.abs(p[:, 2] - self.height) < tol) & (radial < self.radius - tol)
        on_bottom = (np.abs(p[:, 2]) < tol) & (radial < self.radius - tol)
        return np.where(on_top[:, None], top, np.where(on_bottom[:, None], bottom, side))

    def bounds(self) -> tuple[np.ndarray, float]:
        center = np.asarray(self.base) + [0.0, 0.0, self.height / 2]
        return center, float(np.hypot(self.radius, self.height / 2))


@dataclass(frozen=True)
class HorizontalRect:
    z: float  # height of the plane (metres)
    half_x: float = np.inf  # half extent in x around the origin (inf = infinite plane)
    half_y: float = np.inf  # half extent in y around the origin

    def hit(self, origins, dirs):
        o = np.broadcast_to(origins, dirs.shape)
        dz = np.where(np.abs(dirs[:, 2]) < 1e-12, 1e-12, dirs[:, 2])
        t = (self.z - o[:, 2]) / dz
        x, y = o[:, 0] + t * dirs[:, 0], o[:, 1] + t * dirs[:, 1]
        inside = (np.abs(x) <= self.half_x) & (np.abs(y) <= self.half_y)
        return np.where(inside & (t > T_MIN), t, np.inf)

    def normal(self, points):
        return np.broadcast_to([0.0, 0.0, 1.0], points.shape).copy()
