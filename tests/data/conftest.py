"""Shared fixtures for the data tests: one default gem-synth dataset per session (about 2 s)."""

import json
from pathlib import Path

import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset


@pytest.fixture(autouse=True)
def digest_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own digest cache, so no test reads or writes the user's (~/.cache/gemctl)."""
    path = tmp_path_factory.mktemp("digests") / "digests.sqlite"
    monkeypatch.setenv("GEMCTL_DIGEST_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def synth_cfg() -> DataConfig:
    return DataConfig()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory, synth_cfg) -> Path:
    out = tmp_path_factory.mktemp("synth") / "dataset"
    prepare_dataset(synth_cfg, out)
    return out


@pytest.fixture(scope="session")
def synth_samples(synth_dir) -> list[dict]:
    return [json.loads(line) for line in (synth_dir / "annotations.jsonl").read_text().splitlines()]
