"""prepare_dataset for gem-synth: layout, manifest, digest determinism, all-or-nothing writes."""

import hashlib
import json
import socket
from dataclasses import asdict

import pytest

from gem_stages.data import generate, synth_dataset
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.errors import InputError

SMALL = {"num_scenes": 6, "num_episodes": 2, "image_height": 32, "image_width": 64}


def test_layout_and_manifest(synth_dir, synth_samples, synth_cfg):
    manifest = json.loads((synth_dir / "dataset.json").read_text())
    assert manifest["name"] == "gem-synth" and manifest["source"] == "synth" and manifest["seed"] == 0
    counts = manifest["counts"]
    assert counts["samples"] == len(synth_samples) == 200
    assert counts["episodes"] == 8 and counts["episode_successes"] == 8
    assert sum(counts["tasks"].values()) == 200 and sum(counts["kinds"].values()) == 200
    images = sorted(p.name for p in (synth_dir / "images").iterdir())
    assert images == sorted(p.name for p in (synth_dir / "depth").iterdir())  # depth/<basename of the image>
    assert counts["images"] == len(images) >= 50
    (ann,) = manifest["annotation_sets"]
    assert (ann["annotations"], ann["data_path"], ann["depth_root"], ann["rate"]) == (
        "annotations.jsonl",
        ".",
        ".",
        100,
    )
    episodes = manifest["episodes"]
    assert episodes["files"] == [f"episodes/episode_{i:06d}.hdf5" for i in range(8)]
    assert counts["episode_steps"] == sum(episodes["lengths"])
    assert (episodes["state_dim"], episodes["action_dim"], episodes["cameras"]) == (4, 4, ["front", "top"])
    assert manifest["config"] == json.loads(json.dumps(asdict(synth_cfg)))


def test_files_md5_lists_every_data_file_and_the_digest_is_its_md5(synth_dir):
    text = (synth_dir / "files.md5").read_text()
    listed = dict(reversed(line.split("  ", 1)) for line in text.splitlines())
    on_disk = sorted(
        p.relative_to(synth_dir).as_posix()
        for p in synth_dir.rglob("*")
        if p.is_file() and p.name not in ("dataset.json", "files.md5")
    )
    assert sorted(listed) == on_disk
    for rel, md5 in listed.items():
        assert hashlib.md5((synth_dir / rel).read_bytes()).hexdigest() == md5
    manifest = json.loads((synth_dir / "dataset.json").read_text())
    assert manifest["digest"] == hashlib.md5(text.encode()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_digest(tmp_path):
    a = prepare_dataset(DataConfig(**SMALL), tmp_path / "a")
    b = prepare_dataset(DataConfig(**SMALL), tmp_path / "b")
    c = prepare_dataset(DataConfig(**SMALL, seed=1), tmp_path / "c")
    assert a["digest"] == b["digest"] != c["digest"]
    assert (tmp_path / "a" / "files.md5").read_bytes() == (tmp_path / "b" / "files.md5").read_bytes()
    assert (tmp_path / "a" / "dataset.json").read_bytes() == (tmp_path / "b" / "dataset.json").read_bytes()


def test_growing_the_dataset_keeps_earlier_scenes(tmp_path):
    small = prepare_dataset(DataConfig(**{**SMALL, "num_episodes": 0}), tmp_path / "s")
    big = prepare_dataset(DataConfig(**{**SMALL, "num_episodes": 0, "num_scenes": 8}), tmp_path / "b")
    assert small["counts"]["samples"] < big["counts"]["samples"]
    for name in ("000000.png", "000005.png"):
        assert (tmp_path / "s" / "images" / name).read_bytes() == (
            tmp_path / "b" / "images" / name
        ).read_bytes()


def test_default_tiny_dataset_sizes(tmp_path):
    manifest = prepare_dataset(DataConfig(), tmp_path / "d")
    assert manifest["counts"]["samples"] == 200  # 50 scenes x 4 questions
    assert len(list((tmp_path / "d" / "episodes").glob("*.hdf5"))) == 8


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth_dataset, "write_episode", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(DataConfig(**SMALL), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_dataset_and_success_replaces_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = prepare_dataset(DataConfig(**SMALL), out)
    (out / "stale.txt").write_text("from an older run")
    monkeypatch.setattr(
        synth_dataset, "write_episode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
    )
    with pytest.raises(RuntimeError):
        prepare_dataset(DataConfig(**SMALL, seed=5), out)
    assert json.loads((out / "dataset.json").read_text())["digest"] == first["digest"]
    monkeypatch.undo()
    prepare_dataset(DataConfig(**SMALL, seed=5), out)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or previous-copy leftovers


def test_bad_config_fails_before_writing(tmp_path):
    with pytest.raises(InputError, match="multiple of 32"):
        prepare_dataset(DataConfig(image_height=40), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    assert generate.prepare_dataset is prepare_dataset


def test_scenes_only_and_episodes_only(tmp_path):
    only_qa = prepare_dataset(DataConfig(**{**SMALL, "num_episodes": 0}), tmp_path / "qa")
    assert only_qa["episodes"] is None and not (tmp_path / "qa" / "episodes").exists()
    only_ep = prepare_dataset(DataConfig(**{**SMALL, "num_scenes": 0}), tmp_path / "ep")
    assert only_ep["annotation_sets"] == [] and only_ep["counts"]["samples"] == 0
    assert only_ep["counts"]["episodes"] == 2


def test_leftovers_of_a_killed_run_are_removed_next_time(tmp_path):
    dead = tmp_path / f".out.staging-{socket.gethostname()}-999999999"
    other_host = tmp_path / ".out.staging-othernode-1"
    dead.mkdir()
    other_host.mkdir()
    prepare_dataset(DataConfig(**SMALL), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.staging-othernode-1", "out"]


def test_worker_processes_give_identical_output(tmp_path, monkeypatch):
    serial = prepare_dataset(DataConfig(**SMALL), tmp_path / "serial")
    monkeypatch.setenv(synth_dataset.WORKERS_ENV, "2")
    parallel = prepare_dataset(DataConfig(**SMALL), tmp_path / "parallel")
    assert serial["digest"] == parallel["digest"]
