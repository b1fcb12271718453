"""LIBERO / robomimic demonstration files (data/demo_N/{actions, obs/...}, mask/<split>) as stage-4 episodes."""

import h5py
import numpy as np
import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows, action_statistics
from gem_stages.errors import InputError

from .episode_writers import actions_of, ramp_frame, states_of, write_libero


@pytest.fixture
def libero_dir(tmp_path):
    """Two LIBERO task files: bowl (demos of 5 and 7 steps: episodes 0, 1), drawer (6 steps: episode 2)."""
    eps = tmp_path / "libero"
    eps.mkdir()
    write_libero(eps / "bowl_demo.hdf5", [5, 7], masks={"train": [1], "valid": [0]})
    write_libero(eps / "drawer_demo.hdf5", [6], instruction="open the top drawer", first_episode=2)
    return eps


def prepare(eps, out, **kw):
    return prepare_dataset(DataConfig(source="files", episodes_dir=str(eps), **kw), out)


def test_libero_files_are_detected_and_indexed_per_demo(libero_dir, tmp_path):
    manifest = prepare(libero_dir, tmp_path / "out")
    episodes = manifest["episodes"]
    assert episodes["format"] == "robomimic"
    assert episodes["lengths"] == [5, 7, 6]
    assert [loc["name"] for loc in episodes["locators"]] == ["demo_0", "demo_1", "demo_0"]
    assert episodes["instructions"] == ["put the bowl on the plate"] * 2 + ["open the top drawer"]
    assert episodes["cameras"] == ["agentview", "eye_in_hand"]
    assert (episodes["state_dim"], episodes["action_dim"]) == (8, 7)  # LIBERO's ee_pos + ee_ori + gripper_states
    assert episodes["image_size"] == [32, 32]
    assert manifest["counts"]["episodes"] == 3 and manifest["counts"]["episode_steps"] == 18
    assert manifest["counts"]["episodes_skipped"] == 0
    listed = (tmp_path / "out" / "files.md5").read_text()
    assert "bowl_demo.hdf5" in listed and "drawer_demo.hdf5" in listed


def test_windows_hold_the_demo_steps_frames_and_state(libero_dir, tmp_path):
    prepare(libero_dir, tmp_path / "out")
    windows = EpisodeWindows(tmp_path / "out", chunk_size=4, cameras=["eye_in_hand", "agentview"], history=2)
    assert len(windows) == 18
    w = windows[5 + 5]  # episode 1 (bowl demo_1), step 5 of 7: two real actions, then the last one repeated
    assert (w["episode"], w["step"]) == (1, 5)
    expected = actions_of(1, 7, 7)
    assert np.array_equal(w["actions"], np.concatenate([expected[5:7], expected[[6, 6]]]))
    assert w["action_mask"].tolist() == [True, True, False, False]
    assert np.array_equal(w["state"], states_of(1, 7, 8)[5])
    # history 2, camera by camera within a frame: step 4 (eye_in_hand, agentview), then step 5
    want = [ramp_frame(1, t, c, (32, 32)) for t in (4, 5) for c in (1, 0)]
    assert all(np.array_equal(np.asarray(im), exp) for im, exp in zip(w["images"], want, strict=True))
    assert w["depth"] is None and w["instruction"] == "put the bowl on the plate"
    first = windows[12]  # episode 2 (the drawer file), step 0: its first frame repeats before the start
    assert first["instruction"] == "open the top drawer"
    assert np.array_equal(np.asarray(first["images"][0]), ramp_frame(2, 0, 1, (32, 32)))
    assert np.array_equal(first["actions"][0], actions_of(2, 6, 7)[0])


def test_statistics_are_computed_at_ingest_over_every_step(libero_dir, tmp_path):
    manifest = prepare(libero_dir, tmp_path / "out")
    actions = np.concatenate([actions_of(0, 5, 7), actions_of(1, 7, 7), actions_of(2, 6, 7)]).astype(np.float64)
    states = np.concatenate([states_of(0, 5, 8), states_of(1, 7, 8), states_of(2, 6, 8)]).astype(np.float64)
    stats = manifest["episodes"]["statistics"]
    assert stats["count"] == 18
    assert np.allclose(stats["action"]["mean"], actions.mean(0)) and np.allclose(stats["action"]["std"], actions.std(0))
    assert np.allclose(stats["state"]["min"], states.min(0)) and np.allclose(stats["state"]["max"], states.max(0))
    for f in libero_dir.glob("*.hdf5"):  # stage 4 reads them from the manifest, not from the files again
        f.unlink()
    assert action_statistics(tmp_path / "out") == stats


def test_camera_names_state_keys_mask_and_flip_are_settings(libero_dir, tmp_path):
    with h5py.File(libero_dir / "drawer_demo.hdf5", "a") as f:
        f.create_dataset("mask/train", data=np.array([], dtype="S8"))  # no training demo in this file
    prepare(libero_dir, tmp_path / "out", episode_cameras=[{"name": "wrist", "key": "eye_in_hand_rgb"}],
            episode_state_keys=["ee_pos", "gripper_states"], episode_filter="train", episode_image_flip="vertical")
    windows = EpisodeWindows(tmp_path / "out", chunk_size=2, cameras=["wrist"])
    assert windows.meta["lengths"] == [7]  # mask/train lists bowl demo_1 only
    w = windows[3]
    assert np.array_equal(w["state"], states_of(1, 7, 8)[3][[0, 1, 2, 6, 7]])
    assert np.array_equal(np.asarray(w["image"]), ramp_frame(1, 3, 1, (32, 32))[::-1])


def test_a_file_without_the_mask_is_refused(libero_dir, tmp_path):
    with pytest.raises(InputError, match=r"drawer_demo.hdf5' has no mask/train \(data.episode_filter\)"):
        prepare(libero_dir, tmp_path / "out", episode_filter="train")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["data/demo_1/obs"].__delitem__("gripper_states"),
     "bowl_demo.hdf5' demo_1 has none of the default state keys"),
    (lambda f: f["data"].attrs.__delitem__("problem_info"), "bowl_demo.hdf5' demo_0 has no instruction"),
    (lambda f: f["data/demo_0"].__delitem__("actions"), "bowl_demo.hdf5' demo_0 has no 'actions'"),
])
def test_layout_problems_name_the_file_and_demo(libero_dir, tmp_path, edit, message):
    with h5py.File(libero_dir / "bowl_demo.hdf5", "a") as f:
        edit(f)
    with pytest.raises(InputError, match=message):
        prepare(libero_dir, tmp_path / "out")


def test_truncated_file_at_ingest_and_after_it(libero_dir, tmp_path):
    path = libero_dir / "bowl_demo.hdf5"
    prepare(libero_dir, tmp_path / "out")
    windows = EpisodeWindows(tmp_path / "out", chunk_size=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut after prepare: the window read names file and demo
    with pytest.raises(InputError, match=r"bowl_demo.hdf5' demo_1.*(cannot be opened|cannot be read)"):
        windows[6]
    with pytest.raises(InputError, match=r"bowl_demo.hdf5'.*cannot be (opened|read)"):
        prepare(libero_dir, tmp_path / "again")


def test_robomimic_naming_and_an_instructions_file(tmp_path):
    """robomimic's own keys (<camera>_image, robot0_eef_pos/quat, robot0_gripper_qpos), no language in the file."""
    eps = tmp_path / "lift"
    eps.mkdir()
    with h5py.File(eps / "low_dim.hdf5", "w") as f:
        demo = f.create_group("data/demo_0")
        demo.create_dataset("actions", data=actions_of(0, 4, 7))
        obs = demo.create_group("obs")
        obs.create_dataset("agentview_image", data=np.stack([ramp_frame(0, t, 0, (32, 32)) for t in range(4)]))
        obs.create_dataset("robot0_eye_in_hand_image", data=np.zeros((4, 32, 32, 3), np.uint8))
        state = states_of(0, 4, 9)
        for key, (a, b) in {"robot0_eef_pos": (0, 3), "robot0_eef_quat": (3, 7), "robot0_gripper_qpos": (7, 9)}.items():
            obs.create_dataset(key, data=state[:, a:b])
        obs.create_dataset("object", data=np.zeros((4, 10)))
    (eps / "instructions.json").write_text('["lift the cube"]')
    manifest = prepare(eps, tmp_path / "out")
    episodes = manifest["episodes"]
    assert episodes["cameras"] == ["agentview", "robot0_eye_in_hand"] and episodes["state_dim"] == 9
    assert episodes["instructions"] == ["lift the cube"]
    w = EpisodeWindows(tmp_path / "out", chunk_size=2)[2]
    assert np.array_equal(w["state"], state[2]) and np.array_equal(np.asarray(w["image"]), ramp_frame(0, 2, 0, (32, 32)))


@pytest.mark.parametrize("changes, message", [
    ({"episode_format": "rdt", "episode_filter": "train"}, "do not apply to rdt episodes"),
    ({"episode_cameras": [{"name": "a", "key": "x_rgb"}, {"name": "a", "key": "y_rgb"}]}, "each name once"),
    ({"episode_format": "lerobot"}, "has no meta/info.json, so it is not a LeRobot dataset"),
])
def test_settings_that_do_not_fit_are_one_line(libero_dir, tmp_path, changes, message):
    with pytest.raises(InputError, match=message):
        prepare(libero_dir, tmp_path / "out", **changes)


def test_libero_instruction_stored_split_up_and_quoted(tmp_path):
    import json

    eps = tmp_path / "eps"
    eps.mkdir()
    write_libero(eps / "a.hdf5", [3])
    with h5py.File(eps / "a.hdf5", "a") as f:
        f["data"].attrs["problem_info"] = json.dumps({"language_instruction": list('"open the drawer"')})
    assert prepare(eps, tmp_path / "out")["episodes"]["instructions"] == ["open the drawer"]
