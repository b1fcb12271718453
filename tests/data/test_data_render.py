"""The ray caster: exact depth against closed-form values, id buffer, 16-bit depth PNG round trip, determinism."""

import math

import numpy as np
import pytest
from PIL import Image

from gem_stages.data.camera import look_at
from gem_stages.data.depth_png import depth_to_mm, load_depth_m, save_depth_mm
from gem_stages.data.synth_scene import (
    ID_FLOOR,
    ID_NOTHING,
    ID_TABLE,
    SceneObject,
    object_views,
    render,
    sample_objects,
    scene_camera,
)

HEIGHT = 1.0  # camera height above the table in the straight-down tests


def _down_camera(size=64):
    return look_at((0.0, 0.0, HEIGHT), (0.0, 0.0, 0.0), size, size, 50.0)


def _sphere_depth_closed_form(camera, u, v, center, radius):
    """z-depth where the ray through pixel (u, v) first meets the sphere, with plain scalar algebra."""
    x = (u + 0.5 - camera.width / 2) / camera.focal
    y = (v + 0.5 - camera.height / 2) / camera.focal
    d = camera.rotation @ np.array([x, y, 1.0])  # forward component 1: the ray parameter is the z-depth
    c = np.asarray(center) - camera.position
    a, b, k = d @ d, d @ c, c @ c - radius**2
    return (b - math.sqrt(b * b - a * k)) / a


def test_sphere_depth_at_its_centre_pixel_is_the_analytic_value():
    ball = SceneObject("red", "ball", 0.03, -0.02, 0.0, 0.10, 0.10)
    camera = _down_camera()
    result = render([ball], camera)
    xy, _ = camera.project(ball.center[None])
    u, v = int(xy[0, 0]), int(xy[0, 1])
    assert result.ids[v, u] == 0
    expected = _sphere_depth_closed_form(camera, u, v, ball.center, 0.05)
    assert result.depth[v, u] == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(HEIGHT - 0.10, abs=2e-3)  # the ball's top, seen from straight above


def test_sphere_depth_from_an_oblique_camera_matches_closed_form_on_every_ball_pixel():
    ball = SceneObject("blue", "ball", 0.0, 0.0, 0.0, 0.12, 0.12)
    camera = look_at((0.3, -0.6, 0.5), (0.0, 0.0, 0.05), 64, 48, 50.0)
    result = render([ball], camera)
    rows, cols = np.nonzero(result.ids == 0)
    assert rows.size > 30
    for v, u in zip(rows, cols):
        assert result.depth[v, u] == pytest.approx(
            _sphere_depth_closed_form(camera, u, v, ball.center, 0.06), rel=1e-6
        )


def test_flat_tops_seen_straight_down_have_constant_exact_depth():
    cube = SceneObject("green", "cube", -0.1, 0.05, 0.0, 0.08, 0.08, yaw=0.3)
    can = SceneObject("yellow", "cylinder", 0.1, -0.05, 0.0, 0.06, 0.12)
    result = render([cube, can], _down_camera(128))
    # A plane facing the camera has one z-depth everywhere: the camera height minus the plane's height.
    assert np.allclose(result.depth[result.ids == ID_TABLE], HEIGHT, atol=1e-6)
    cube_top = result.depth[result.ids == 0]
    can_top = result.depth[result.ids == 1]
    # Off-axis, perspective shows a little of the sides too; the top faces dominate and are the nearest points.
    assert np.mean(np.isclose(cube_top, HEIGHT - 0.08, atol=1e-6)) > 0.8
    assert cube_top.min() == pytest.approx(HEIGHT - 0.08, abs=1e-6)
    assert np.mean(np.isclose(can_top, HEIGHT - 0.12, atol=1e-6)) > 0.8
    assert can_top.min() == pytest.approx(HEIGHT - 0.12, abs=1e-6)


def test_id_buffer_and_invalid_depth_agree_and_nearer_objects_occlude():
    ball = SceneObject("red", "ball", 0.0, -0.15, 0.0, 0.10, 0.10)  # in front of the cube, from the viewer
    cube = SceneObject("blue", "cube", 0.0, 0.0, 0.0, 0.09, 0.09)
    camera = look_at((0.0, -0.9, 0.25), (0.0, 0.0, 0.05), 64, 64, 50.0)
    result = render([ball, cube], camera)
    assert ((result.depth == 0) == (result.ids == ID_NOTHING)).all()
    xy, _ = camera.project(cube.center[None])
    assert result.ids[int(xy[0, 1]), int(xy[0, 0])] == 0  # the ball hides the cube's centre
    views = object_views(result, 2)
    assert views[0].mean_depth < views[1].mean_depth
    assert {ID_TABLE, ID_FLOOR} <= set(np.unique(result.ids).tolist())


def test_object_views_are_read_off_the_id_buffer():
    rng = np.random.default_rng(3)
    objects = sample_objects(rng, 5)
    result = render(objects, scene_camera(rng, 96, 64))
    for index, view in enumerate(object_views(result, len(objects))):
        mask = result.ids == index
        assert view.pixels == mask.sum()
        if view.pixels:
            rows, cols = np.nonzero(mask)
            assert view.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert mask[view.point[1], view.point[0]]
            assert view.centroid == pytest.approx((cols.mean() + 0.5, rows.mean() + 0.5))
            assert view.mean_depth == pytest.approx(result.depth[mask].mean(), rel=1e-6)


def test_objects_are_placed_without_overlap_and_with_distinct_names():
    for seed in range(20):
        objects = sample_objects(np.random.default_rng(seed), 6)
        assert len({o.name for o in objects}) == len(objects)
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert math.hypot(a.x - b.x, a.y - b.y) >= a.footprint + b.footprint


def test_depth_png_is_16_bit_millimetres_and_round_trips(tmp_path):
    depth = np.array([[0.0, 0.0004, 0.7071234], [1.25, 65.535, 80.0]], dtype=np.float32)
    save_depth_mm(tmp_path / "d.png", depth)
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode == "I;16"
        mm = np.asarray(image)
    assert mm.tolist() == [[0, 1, 707], [1250, 65535, 65535]]  # 0 stays invalid; valid never rounds to 0
    back = load_depth_m(tmp_path / "d.png")
    assert back.dtype == np.float32
    assert back[1, 0] == pytest.approx(1.25) and back[0, 2] == pytest.approx(0.707)
    assert (depth_to_mm(depth) == mm).all()


def test_rendered_depth_survives_the_png_to_the_millimetre(tmp_path):
    rng = np.random.default_rng(0)
    result = render(sample_objects(rng, 4), scene_camera(rng, 64, 64))
    save_depth_mm(tmp_path / "d.png", result.depth)
    back = load_depth_m(tmp_path / "d.png")
    assert np.abs(back - result.depth).max() <= 0.0005 + 1e-6
    assert ((back == 0) == (result.depth == 0)).all()


def test_rendering_is_deterministic():
    def once():
        rng = np.random.default_rng(7)
        return render(sample_objects(rng, 5), scene_camera(rng, 64, 64))

    a, b = once(), once()
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert a.rgb.dtype == np.uint8 and a.depth.dtype == np.float32 and a.ids.dtype == np.int16
