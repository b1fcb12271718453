"""Shared fixtures for the data tests: one default gem-synth dataset per session (about 2 s)."""

import json
from pathlib import Path

import pytest

from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset


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
