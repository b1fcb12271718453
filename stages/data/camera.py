"""Pinhole camera (OpenCV convention: x right, y down, z forward) for the synthetic renderer.

Rays are NOT normalised: each has forward component 1 in camera space, so the ray parameter t at a hit IS the
z-depth (distance along the optical axis), which is what depth maps store.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Camera:
    position: np.ndarray  # (3,) eye in world metres
    rotation: np.ndarray  # (3, 3) world-from-camera: columns are the camera's right, down, forward axes
    width: int  # pixels
    height: int  # pixels
    focal: float  # pixels (square pixels: fx = fy)

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.height / 2.0

    @cached_property
    def rays(self) -> np.ndarray:
        """ray_directions(), computed once per camera (episode cameras render every step)."""
        rays = self.ray_directions()
        rays.flags.writeable = False
        return rays

    def ray_directions(self) -> np.ndarray:
        """(H*W, 3) world directions through pixel centres, row-major; camera-space forward component is 1."""
        u = (np.arange(self.width) + 0.5 - self.cx) / self.focal
        v = (np.arange(self.height) + 0.5 - self.cy) / self.focal
        uu, vv = np.meshgrid(u, v)
        right, down, forward = self.rotation.T
        # u * right + v * down + forward, elementwise (a BLAS matmul would start threads; see raycast.dot3)
        return uu.ravel()[:, None] * right + vv.ravel()[:, None] * down + forward

    def pixels_covering(self, center, radius: float) -> np.ndarray | None:
        """Row-major indices of the pixels whose rays may meet the sphere (center, radius), from a conservative
        screen rectangle; None when the sphere reaches behind the camera (then test every ray)."""
        x, y, z = (np.asarray(center, dtype=np.float64) - self.position) @ self.rotation
        near, far = z - radius, z + radius
        if near <= 1e-3:
            return None
        # x/z over the sphere's camera-space bounding box is extreme at its corners
        xs = [(x - radius) / near, (x - radius) / far, (x + radius) / near, (x + radius) / far]
        ys = [(y - radius) / near, (y - radius) / far, (y + radius) / near, (y + radius) / far]
        u0, u1 = min(xs) * self.focal + self.cx, max(xs) * self.focal + self.cx
        v0, v1 = min(ys) * self.focal + self.cy, max(ys) * self.focal + self.cy
        # pixel i's ray passes through u = i + 0.5; one pixel of margin against rounding
        c0, c1 = max(int(np.ceil(u0 - 0.5)) - 1, 0), min(int(np.floor(u1 - 0.5)) + 1, self.width - 1)
        r0, r1 = max(int(np.ceil(v0 - 0.5)) - 1, 0), min(int(np.floor(v1 - 0.5)) + 1, self.height - 1)
        if c0 > c1 or r0 > r1:
            return np.empty(0, dtype=np.int64)
        return (np.arange(r0, r1 + 1)[:, None] * self.width + np.arange(c0, c1 + 1)[None, :]).ravel()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> (pixel coordinates (N, 2) as continuous x, y; z-depth (N,))."""
        cam = (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation
        z = cam[:, 2]
        xy = cam[:, :2] / z[:, None] * self.focal + np.array([self.cx, self.cy])
        return xy, z


def look_at(eye, target, width: int, height: int, fov_deg: float) -> Camera:
    """Camera at `eye` looking at `target` with world +z as up; `fov_deg` is the vertical field of view."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:  # looking straight down: image "up" is then world +y
        right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    focal = (height / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return Camera(eye, np.stack([right, down, forward], axis=1), width, height, float(focal))
