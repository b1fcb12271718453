"""Unreadable episodes at ingest: stop with one line naming file and episode, or (on_error "skip") leave them out,
count them, and fail when more than max_skipped of the episodes are bad."""

import numpy as np
import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.episode_format import write_episode
from gem_stages.data.episode_sources import scan_episodes
from gem_stages.errors import InputError

from .episode_writers import actions_of, ramp_frame, states_of, write_lerobot_v2, write_libero


def cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def rdt_folder(folder, n: int):
    folder.mkdir()
    for e in range(n):
        frames = np.stack([ramp_frame(e, t, 0, (32, 32)) for t in range(4)])
        write_episode(folder / f"episode_{e}.hdf5", {"front": frames}, {}, states_of(e, 4, 4), actions_of(e, 4, 4),
                      "stack the cups", True)


def cfg_for(folder) -> DataConfig:
    return DataConfig(source="files", episodes_dir=str(folder))


def test_rdt_bad_file_stops_by_default_and_is_counted_when_skipping(tmp_path, capsys):
    rdt_folder(tmp_path / "eps", 4)
    cut(tmp_path / "eps" / "episode_2.hdf5")
    with pytest.raises(InputError, match=r"episode '.*episode_2.hdf5' cannot be opened as HDF5"):
        scan_episodes(cfg_for(tmp_path / "eps"), tmp_path / "eps")
    meta, _ = scan_episodes(cfg_for(tmp_path / "eps"), tmp_path / "eps", on_error="skip", max_skipped=0.25)
    assert [p.rsplit("/", 1)[1] for p in meta["files"]] == ["episode_0.hdf5", "episode_1.hdf5", "episode_3.hdf5"]
    assert meta["skipped"] == 1 and "episode_2.hdf5" in meta["first_skipped"]
    # the statistics cover the kept episodes only
    kept = np.concatenate([actions_of(e, 4, 4) for e in (0, 1, 3)]).astype(np.float64)
    assert np.allclose(meta["statistics"]["action"]["mean"], kept.mean(0))
    assert "1 of 4 skipped (data.on_error: skip)" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"1 of 4 episodes cannot be read \(more than data.max_skipped 20.0%\); "
                                         r"the first: episode '.*episode_2.hdf5'"):
        scan_episodes(cfg_for(tmp_path / "eps"), tmp_path / "eps", on_error="skip", max_skipped=0.2)


def test_lerobot_episode_with_a_truncated_video_is_skipped(tmp_path):
    write_lerobot_v2(tmp_path / "ds", [3, 4, 5], ["a", "b", "c"])
    cut(tmp_path / "ds/videos/chunk-000/observation.images.wrist/episode_000001.mp4", 0.3)
    with pytest.raises(InputError, match=r"LeRobot episode 1: video '.*episode_000001.mp4' cannot be read"):
        scan_episodes(cfg_for(tmp_path / "ds"), tmp_path / "ds")
    meta, files = scan_episodes(cfg_for(tmp_path / "ds"), tmp_path / "ds", on_error="skip", max_skipped=0.5)
    assert meta["lengths"] == [3, 5] and meta["instructions"] == ["a", "c"] and meta["skipped"] == 1
    assert [loc["episode_index"] for loc in meta["locators"]] == [0, 2]
    assert not any("episode_000001" in str(f) for f in files)


def test_lerobot_rows_missing_from_the_data_file_are_a_bad_episode(tmp_path):
    import pyarrow.parquet as pq

    write_lerobot_v2(tmp_path / "ds", [3, 4], ["a", "b"])
    path = tmp_path / "ds/data/chunk-000/episode_000000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 2), path)  # 2 of its 3 rows
    with pytest.raises(InputError, match=r"LeRobot episode 0: its data file '.*' has 2 rows but the metadata says 3"):
        scan_episodes(cfg_for(tmp_path / "ds"), tmp_path / "ds")


def test_robomimic_truncated_file_is_skipped_and_the_good_file_kept(tmp_path):
    eps = tmp_path / "eps"
    eps.mkdir()
    write_libero(eps / "a_good.hdf5", [4, 5])
    write_libero(eps / "b_cut.hdf5", [6, 6, 6], first_episode=2)
    cut(eps / "b_cut.hdf5", 0.4)
    with pytest.raises(InputError, match=r"b_cut.hdf5'.*cannot be"):
        scan_episodes(cfg_for(eps), eps)
    meta, _ = scan_episodes(cfg_for(eps), eps, on_error="skip", max_skipped=0.9)
    assert meta["lengths"] == [4, 5] and meta["skipped"] >= 1 and "b_cut.hdf5" in meta["first_skipped"]


def test_an_episode_whose_actions_cannot_be_read_is_left_out_of_the_file_list(tmp_path):
    import h5py

    rdt_folder(tmp_path / "eps", 3)
    with h5py.File(tmp_path / "eps" / "episode_1.hdf5", "a") as f:  # the layout holds, the data does not
        del f["action"]
        f.create_dataset("action", shape=(4, 4), dtype=np.float32, compression="gzip", chunks=(1, 4))
        f["action"][:] = 1.0
        offset = f["action"].id.get_chunk_info(2).byte_offset
    with open(tmp_path / "eps" / "episode_1.hdf5", "r+b") as raw:  # corrupt one compressed chunk
        raw.seek(offset)
        raw.write(b"\xff" * 8)
    with pytest.raises(InputError, match=r"episode '.*episode_1.hdf5': 'action' cannot be read"):
        scan_episodes(cfg_for(tmp_path / "eps"), tmp_path / "eps")
    meta, files = scan_episodes(cfg_for(tmp_path / "eps"), tmp_path / "eps", on_error="skip", max_skipped=0.5)
    assert meta["skipped"] == 1 and len(meta["files"]) == 2
    assert sorted(f.name for f in files) == ["episode_0.hdf5", "episode_2.hdf5"]


def test_a_window_that_cannot_be_read_stops_or_is_skipped_by_the_datasets_policy(tmp_path, capsys):
    """A video cut after ingest: training's read stops naming the episode, or under on_error "skip" (kept in the
    dataset's manifest) reads the next window, until more than max_skipped of the windows failed."""
    import json

    from gem_stages.data.generate import prepare_dataset
    from gem_stages.data.reader import EpisodeWindows

    write_lerobot_v2(tmp_path / "ds", [3, 3], ["a", "b"])
    prepare_dataset(cfg_for(tmp_path / "ds"), tmp_path / "out")
    cut(tmp_path / "ds/videos/chunk-000/observation.images.top/episode_000001.mp4", 0.3)
    with pytest.raises(InputError, match=r"episode 1: video '.*episode_000001.mp4' cannot be decoded"):
        EpisodeWindows(tmp_path / "out", chunk_size=1, cameras=["top"])[4]
    manifest_path = tmp_path / "out" / "dataset.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"].update(on_error="skip", max_skipped=0.5)
    manifest_path.write_text(json.dumps(manifest))
    windows = EpisodeWindows(tmp_path / "out", chunk_size=1, cameras=["top"])
    w = windows[4]  # episode 1 steps 1 and 2 fail; the next window is episode 0's first
    assert (w["episode"], w["step"]) == (0, 0) and windows.policy.skipped == 2
    assert "skipped an episode window (data.on_error: skip)" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"4 of the 6 episode windows could not be read \(more than "
                                         r"data.max_skipped 50.0%\)"):
        windows[3]  # episode 1 step 0, then step 1 again: past half of the windows
