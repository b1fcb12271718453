"""LeRobot datasets read from a local folder in the v2.1 and v3.0 layouts (parquet + mp4), as stage-4 episodes."""

import json

import numpy as np
import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows
from gem_stages.errors import InputError

from .episode_writers import actions_of, shade, states_of, write_lerobot_v2, write_lerobot_v3

LENGTHS = [6, 4, 5]
TASKS = ["pick up the cube", "open the drawer", "pick up the cube"]
WRITERS = {"v2.1": write_lerobot_v2, "v3.0": write_lerobot_v3}


@pytest.fixture(scope="module", params=list(WRITERS))
def lerobot(request, tmp_path_factory):
    """(version, dataset folder, prepared dataset) for each layout."""
    root = tmp_path_factory.mktemp(request.param) / "ds"
    WRITERS[request.param](root, LENGTHS, TASKS)
    out = root.parent / "out"
    prepare_dataset(DataConfig(source="files", episodes_dir=str(root)), out)
    return request.param, root, out


def grey(image) -> float:
    return float(np.asarray(image, dtype=np.float64).mean())


def test_the_folder_is_detected_and_indexed(lerobot):
    _, root, out = lerobot
    episodes = json.loads((out / "dataset.json").read_text())["episodes"]
    assert episodes["format"] == "lerobot"
    assert episodes["lengths"] == LENGTHS and episodes["instructions"] == TASKS
    assert episodes["cameras"] == ["top", "wrist"]  # observation.images.<name>
    assert (episodes["state_dim"], episodes["action_dim"]) == (4, 4)
    assert episodes["image_size"] == [32, 32]
    listed = (out / "files.md5").read_text()
    assert listed.count(".mp4") == (2 * len(LENGTHS) if "v2" in str(root.parent) else 2)
    assert "info.json" in listed


def test_windows_hold_the_right_rows_and_video_frames(lerobot):
    _, _, out = lerobot
    windows = EpisodeWindows(out, chunk_size=3, cameras=["wrist", "top"], history=2)
    assert len(windows) == sum(LENGTHS)
    w = windows[6 + 2]  # episode 1, step 2 of 4: two real actions, then the last repeated
    assert (w["episode"], w["step"]) == (1, 2)
    expected = actions_of(1, 4, 4)
    assert np.allclose(w["actions"], np.concatenate([expected[2:4], expected[[3]]]))
    assert w["action_mask"].tolist() == [True, True, False]
    assert np.allclose(w["state"], states_of(1, 4, 4)[2])
    assert w["instruction"] == "open the drawer" and w["depth"] is None
    # frames of steps 1 and 2, wrist then top; in v3.0 episode 1 starts 6 frames into the shared mp4
    want = [shade(1, t, c) for t in (1, 2) for c in (1, 0)]
    assert [im.size for im in w["images"]] == [(32, 32)] * 4
    assert all(abs(grey(im) - v) < 4 for im, v in zip(w["images"], want, strict=True)), \
        [(grey(im), v) for im, v in zip(w["images"], want)]
    last = windows[len(windows) - 1]  # the last frame of the last episode (the end of the v3.0 file)
    assert abs(grey(last["image"]) - shade(2, 4, 1)) < 4


def test_every_step_of_every_episode_finds_its_frame(lerobot):
    _, _, out = lerobot
    windows = EpisodeWindows(out, chunk_size=1, cameras=["top"])
    got = [grey(windows[i]["image"]) for i in range(len(windows))]
    want = [shade(e, t, 0) for e, n in enumerate(LENGTHS) for t in range(n)]
    assert np.abs(np.array(got) - np.array(want)).max() < 4


def test_statistics_cover_every_row(lerobot):
    _, _, out = lerobot
    stats = json.loads((out / "dataset.json").read_text())["episodes"]["statistics"]
    actions = np.concatenate([actions_of(e, n, 4) for e, n in enumerate(LENGTHS)]).astype(np.float64)
    assert stats["count"] == sum(LENGTHS)
    assert np.allclose(stats["action"]["mean"], actions.mean(0), atol=1e-6)
    assert np.allclose(stats["action"]["std"], actions.std(0), atol=1e-6)
    states = np.concatenate([states_of(e, n, 4) for e, n in enumerate(LENGTHS)]).astype(np.float64)
    assert np.allclose(stats["state"]["max"], states.max(0), atol=1e-5)


def test_camera_and_key_mapping(tmp_path):
    write_lerobot_v2(tmp_path / "ds", [3, 3], ["a", "b"])
    prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds"), episode_format="lerobot",
                               episode_cameras=[{"name": "ego", "key": "observation.images.wrist"}],
                               episode_state_keys=["observation.state", "action"]), tmp_path / "out")
    w = EpisodeWindows(tmp_path / "out", chunk_size=1, cameras=["ego"])[4]
    assert abs(grey(w["image"]) - shade(1, 1, 1)) < 4
    assert np.allclose(w["state"], np.concatenate([states_of(1, 3, 4)[1], actions_of(1, 3, 4)[1]]))
    with pytest.raises(InputError, match="'observation.images.side', which is not a video or image feature"):
        cameras = [{"name": "side", "key": "observation.images.side"}]
        prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds"), episode_cameras=cameras),
                        tmp_path / "bad")


def test_missing_and_truncated_files_name_the_file_and_episode(tmp_path):
    write_lerobot_v2(tmp_path / "ds", [3, 3], ["a", "b"])
    video = tmp_path / "ds/videos/chunk-000/observation.images.top/episode_000001.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"LeRobot episode 1: video '.*episode_000001.mp4'.*cannot be read"):
        prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    video.write_bytes(data)
    prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")
    windows = EpisodeWindows(tmp_path / "out", chunk_size=1)
    (tmp_path / "ds/data/chunk-000/episode_000000.parquet").write_bytes(b"PAR1 cut")
    with pytest.raises(InputError, match=r"episode_000000.parquet' episode 0.*cannot be read as parquet"):
        windows[0]
    video.unlink()  # removed after prepare: the window read says which video
    with pytest.raises(InputError, match=r"episode 1: video '.*episode_000001.mp4' cannot be decoded"):
        windows[4]


def test_unknown_versions_are_refused(tmp_path):
    write_lerobot_v2(tmp_path / "ds", [2], ["a"])
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    (tmp_path / "ds/meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(InputError, match="codebase_version 'v1.6': this reads LeRobot v2.x and v3.0"):
        prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")


def test_av1_videos_as_lerobot_encodes_them(tmp_path):
    """LeRobot's default encoder is SVT-AV1; its timestamps are not whole frames of the stream's time base."""
    write_lerobot_v3(tmp_path / "ds", [4, 5], ["a", "b"], size=(64, 64), codec="av1")
    prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")
    windows = EpisodeWindows(tmp_path / "out", chunk_size=1, cameras=["top"])
    got = [grey(windows[i]["image"]) for i in range(len(windows))]
    want = [shade(e, t, 0) for e, n in enumerate([4, 5]) for t in range(n)]
    assert np.abs(np.array(got) - np.array(want)).max() < 6, (got, want)


def test_image_features_are_decoded_from_the_parquet(tmp_path):
    from .episode_writers import ramp_frame

    write_lerobot_v2(tmp_path / "ds", [3, 4], ["a", "b"], images=True)
    manifest = prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")
    assert manifest["episodes"]["cameras"] == ["top", "wrist"] and manifest["episodes"]["image_size"] == [32, 32]
    w = EpisodeWindows(tmp_path / "out", chunk_size=2, cameras=["wrist", "top"], history=2)[3 + 2]
    want = [ramp_frame(1, t, c, (32, 32)) for t in (1, 2) for c in (1, 0)]  # exact: PNG is lossless
    assert all(np.array_equal(np.asarray(im), exp) for im, exp in zip(w["images"], want, strict=True))


def test_v3_metadata_without_a_needed_column_is_one_line(tmp_path):
    import pyarrow.parquet as pq

    write_lerobot_v3(tmp_path / "ds", [3], ["a"])
    path = tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["videos/observation.images.top/from_timestamp"]), path)
    with pytest.raises(InputError, match=r"LeRobot metadata '.*file-000.parquet' has no "
                                         r"videos/observation.images.top/from_timestamp: restore"):
        prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "ds")), tmp_path / "out")
