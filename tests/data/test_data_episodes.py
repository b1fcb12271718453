"""Action episodes: the HDF5 layout and dtypes, the kinematics, and an expert that actually succeeds."""

import h5py
import numpy as np
import pytest

from gem_stages.data.synth_episodes import (
    GRASP_RADIUS_M,
    MAX_STEP_M,
    PickPlaceWorld,
    ScriptedExpert,
    make_world,
    run_episode,
)
from gem_stages.data.synth_scene import ID_GRIPPER, SceneObject, episode_camera, render


def test_episode_files_have_the_reference_layout(synth_dir, synth_cfg):
    files = sorted((synth_dir / "episodes").glob("*.hdf5"))
    assert [f.name for f in files] == [f"episode_{i:06d}.hdf5" for i in range(synth_cfg.num_episodes)]
    h, w = synth_cfg.image_height, synth_cfg.image_width
    for path in files:
        with h5py.File(path, "r") as f:
            n = f["action"].shape[0]
            assert 1 <= n <= synth_cfg.episode_max_steps
            assert f["action"].dtype == np.float32 and f["action"].shape == (n, 4)
            assert f["observations/state"].dtype == np.float32 and f["observations/state"].shape == (n, 4)
            assert sorted(f["observations/images"]) == sorted(synth_cfg.cameras)
            assert sorted(f["observations/depth_images"]) == sorted(synth_cfg.cameras)
            for cam in synth_cfg.cameras:
                assert f[f"observations/images/{cam}"].dtype == np.uint8
                assert f[f"observations/images/{cam}"].shape == (n, h, w, 3)
                assert f[f"observations/depth_images/{cam}"].dtype == np.uint16
                assert f[f"observations/depth_images/{cam}"].shape == (n, h, w)
                assert (
                    f[f"observations/depth_images/{cam}"][:] > 0
                ).mean() > 0.5  # millimetres, mostly valid
            assert isinstance(f.attrs["instruction"], str) and " on the " in f.attrs["instruction"]
            assert bool(f.attrs["success"]) is True


def test_recorded_states_follow_the_recorded_actions(synth_dir):
    with h5py.File(synth_dir / "episodes" / "episode_000000.hdf5", "r") as f:
        state, action = f["observations/state"][:], f["action"][:]
    assert np.all(np.linalg.norm(action[:, :3], axis=1) <= MAX_STEP_M + 1e-6)
    assert set(np.unique(action[:, 3]).tolist()) <= {0.0, 1.0}
    step = state[1:, :3] - state[:-1, :3]
    assert np.allclose(step, action[:-1, :3], atol=1e-6)  # the workspace limits are never reached
    # opening moves toward the command by 0.5 per step
    assert np.allclose(state[1:, 3], np.clip(action[:-1, 3], state[:-1, 3] - 0.5, state[:-1, 3] + 0.5))


def test_scripted_expert_succeeds_within_the_default_step_cap():
    lengths = []
    for seed in range(60):
        rng = np.random.default_rng([seed, 1, seed])
        world = make_world(rng)
        expert = ScriptedExpert(rng)
        for t in range(40):  # noqa: B007 - t is read after the loop
            world.step(expert.act(world))
            if expert.done():
                break
        assert world.success(), f"seed {seed}"
        lengths.append(t + 1)
    assert max(lengths) <= 40


def test_a_short_step_cap_is_recorded_as_failure():
    ep = run_episode(np.random.default_rng(0), ["top"], 32, 32, max_steps=10)
    assert len(ep.action) == 10 and ep.success is False


def _world_with_ball_and_plate():
    plate = SceneObject("blue", "plate", 0.1, 0.0, 0.0, 0.15, 0.012)
    ball = SceneObject("red", "ball", -0.1, 0.0, 0.0, 0.08, 0.08)
    return PickPlaceWorld(objects=[plate, ball], item=1, target=0, gripper=np.array([-0.1, 0.0, 0.2]))


def test_grasp_needs_closing_near_the_object_and_release_drops_onto_the_plate():
    world = _world_with_ball_and_plate()
    world.step(np.array([0.0, 0.0, 0.0, 0.0]))  # closing far above the ball grasps nothing
    assert world.held is None and world.opening == 0.5
    world.step(np.array([0.0, 0.0, 0.0, 1.0]))
    world.gripper = world.objects[1].center + [GRASP_RADIUS_M * 0.9, 0.0, 0.0]
    world.step(np.array([0.0, 0.0, 0.0, 0.0]))
    assert world.held == 1
    for _ in range(5):  # carry: the ball follows the fingertips
        world.step(np.array([0.04, 0.0, 0.0, 0.0]))
    assert world.objects[1].center == pytest.approx(world.gripper)
    world.step(np.array([0.0, 0.0, 0.0, 1.0]))  # open over the plate
    assert world.held is None
    assert world.objects[1].z == pytest.approx(0.012)  # resting on the plate's top
    assert world.success()


def test_steps_longer_than_the_limit_are_scaled_down():
    world = _world_with_ball_and_plate()
    start = world.gripper.copy()
    world.step(np.array([0.3, 0.0, 0.4, 1.0]))
    assert np.linalg.norm(world.gripper - start) == pytest.approx(MAX_STEP_M)


def test_the_gripper_is_visible_in_every_camera():
    world = _world_with_ball_and_plate()
    for name in ("front", "top", "side"):
        result = render(world.objects, episode_camera(name, 64, 64), extra=world.gripper_parts())
        assert (result.ids == ID_GRIPPER).sum() > 5, name


def test_windows_show_every_camera_and_the_image_history_oldest_first(synth_dir):
    from gem_stages.data.reader import EpisodeWindows
    from gem_stages.errors import InputError

    windows = EpisodeWindows(synth_dir, chunk_size=4, cameras=["top", "front"], history=3)
    with h5py.File(synth_dir / "episodes" / "episode_000000.hdf5", "r") as f:
        top, front = f["observations/images/top"][:4], f["observations/images/front"][:4]
        depth_top = f["observations/depth_images/top"][1]
    # step 1 with 3 frames: steps 0 (the first frame repeated before the start), 0, 1; each frame top then front
    w = windows[1]
    expected = [top[0], front[0], top[0], front[0], top[1], front[1]]
    assert len(w["images"]) == 6
    for got, want in zip(w["images"], expected):
        assert (np.asarray(got) == want).all()
    assert (np.asarray(w["image"]) == top[1]).all()
    assert np.allclose(w["depth"], depth_top / 1000.0)  # the first camera's depth at this step
    w3 = windows[3]
    for got, want in zip(w3["images"], [top[1], front[1], top[2], front[2], top[3], front[3]]):
        assert (np.asarray(got) == want).all()
    with pytest.raises(InputError, match="camera 'wrist' is not in the episodes"):
        EpisodeWindows(synth_dir, chunk_size=4, cameras=["top", "wrist"])
    with pytest.raises(InputError, match=r"cameras \['top', 'top'\] name a camera twice: list each camera once"):
        EpisodeWindows(synth_dir, chunk_size=4, cameras=["top", "top"])
