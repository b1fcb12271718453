"""Readers over the default gem-synth dataset: samples, action windows, statistics, text corpus."""

import pickle

import h5py
import numpy as np
import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.depth_png import load_depth_m
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows, GemSamples, action_statistics, text_corpus
from gem_stages.errors import InputError


def test_gem_samples_follow_the_annotations(synth_dir, synth_samples):
    samples = GemSamples(synth_dir)
    assert len(samples) == len(synth_samples)
    for i in (0, len(samples) - 1):
        item, record = samples[i], synth_samples[i]
        assert item["id"] == record["id"] and item["task"] == record["task"]
        assert item["conversations"] == record["conversations"]
        assert item["images"][0].mode == "RGB" and item["images"][0].size == (64, 64)
        expected = load_depth_m(synth_dir / "depth" / record["image"].split("/")[-1])
        assert item["depths"][0].dtype == np.float32 and (item["depths"][0] == expected).all()
    two = next(i for i, s in enumerate(synth_samples) if isinstance(s["image"], list))
    assert len(samples[two]["images"]) == 2 and all(d is not None for d in samples[two]["depths"])
    assert samples[-1]["id"] == synth_samples[-1]["id"]
    with pytest.raises(IndexError):
        samples[len(samples)]
    assert sum(1 for _ in samples) == len(samples)


def test_episode_windows_cover_every_step_with_padded_chunks(synth_dir):
    windows = EpisodeWindows(synth_dir, chunk_size=8)
    with h5py.File(synth_dir / "episodes" / "episode_000000.hdf5", "r") as f:
        action, state = f["action"][:], f["observations/state"][:]
        image, depth = f["observations/images/front"][3], f["observations/depth_images/front"][3]
        instruction = f.attrs["instruction"]
    n = len(action)
    first = windows[3]
    assert (np.asarray(first["image"]) == image).all() and first["image"].mode == "RGB"
    assert first["depth"].dtype == np.float32 and np.allclose(first["depth"], depth / 1000.0)
    assert (first["state"] == state[3]).all() and first["state"].dtype == np.float32
    assert (first["actions"] == action[3:11]).all() and first["actions"].dtype == np.float32
    assert first["action_mask"].all() and first["instruction"] == instruction
    end = windows[n - 2]  # two real actions left, six padded with the last action
    assert (end["actions"][:2] == action[n - 2 :]).all()
    assert (end["actions"][2:] == action[-1]).all()
    assert end["action_mask"].tolist() == [True, True] + [False] * 6
    assert windows[n]["episode"] == 1 and windows[n]["step"] == 0
    manifest_len = sum(
        len(h5py.File(p, "r")["action"]) for p in sorted((synth_dir / "episodes").glob("*.hdf5"))
    )
    assert len(windows) == manifest_len


def test_episode_windows_pick_a_camera_and_survive_pickling(synth_dir):
    top = EpisodeWindows(synth_dir, chunk_size=4, camera="top")
    with h5py.File(synth_dir / "episodes" / "episode_000000.hdf5", "r") as f:
        assert (np.asarray(top[0]["image"]) == f["observations/images/top"][0]).all()
    clone = pickle.loads(pickle.dumps(top))
    assert (clone[5]["actions"] == top[5]["actions"]).all()
    with pytest.raises(InputError, match="camera 'wrist' is not in the episodes: use one of front, top"):
        EpisodeWindows(synth_dir, chunk_size=4, camera="wrist")


def test_action_statistics(synth_dir):
    actions, states = [], []
    for p in sorted((synth_dir / "episodes").glob("*.hdf5")):
        with h5py.File(p, "r") as f:
            actions.append(f["action"][:])
            states.append(f["observations/state"][:])
    stats = action_statistics(synth_dir)
    a, s = np.concatenate(actions).astype(np.float64), np.concatenate(states).astype(np.float64)
    assert stats["count"] == len(a)
    for key, x in (("action", a), ("state", s)):
        for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            assert isinstance(stats[key][name], list) and len(stats[key][name]) == 4
            assert np.allclose(stats[key][name], fn(x, axis=0))
    assert stats["action"]["min"][3] == 0.0 and stats["action"]["max"][3] == 1.0  # the gripper command


def test_text_corpus_yields_every_turn_and_instruction(synth_dir, synth_samples):
    texts = list(text_corpus(synth_dir))
    turns = [t["value"] for s in synth_samples for t in s["conversations"]]
    assert texts[: len(turns)] == turns
    assert len(texts) == len(turns) + 8 and all(" on the " in t for t in texts[len(turns) :])


def test_missing_manifest_and_missing_episodes(tmp_path):
    with pytest.raises(InputError, match="has no dataset.json: prepare it first"):
        GemSamples(tmp_path)
    prepare_dataset(
        DataConfig(num_scenes=2, num_episodes=0, image_height=32, image_width=32), tmp_path / "qa"
    )
    with pytest.raises(InputError, match="has no episodes: set data.num_episodes > 0"):
        EpisodeWindows(tmp_path / "qa", chunk_size=4)
    with pytest.raises(InputError, match="has no episodes"):
        action_statistics(tmp_path / "qa")
