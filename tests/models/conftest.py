"""Shared tiny fixtures for the model tests: everything random-init, 64x64 images, CPU.

Helpers are fixtures (not imports) so the tests work under any pytest import mode.
"""

import numpy as np
import pytest
from PIL import Image

from gem_models.config import tiny_config
from gem_models.gem import GemModel


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every model test runs with one torch thread (tests/conftest.py says why)."""


def _image(h: int = 64, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _depth(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).uniform(0.5, 5.0, (h, w))


def _sample_a() -> dict:
    """One image, short text."""
    return {
        "images": [_image(seed=1)],
        "conversations": [
            {"from": "human", "value": "<image>\nHow far is the cube?"},
            {"from": "gpt", "value": "About 1.5 meters."},
        ],
        "depths": [_depth(seed=1)],
    }


def _sample_b() -> dict:
    """Two images (different sizes), longer text."""
    return {
        "images": [_image(seed=2), _image(32, 64, seed=3)],
        "conversations": [
            {
                "from": "human",
                "value": "<image> and <image>: compare the two views. Which one shows the bowl closer?",
            },
            {"from": "gpt", "value": "The first view, by about 20 centimeters."},
        ],
        "depths": [_depth(seed=2), _depth(32, 64, seed=3)],
    }


@pytest.fixture
def image():
    return _image


@pytest.fixture
def depth():
    return _depth


@pytest.fixture
def sample_a():
    return _sample_a


@pytest.fixture
def sample_b():
    return _sample_b


@pytest.fixture(scope="module")
def qwen3_model() -> GemModel:
    return GemModel.build(tiny_config("qwen3_vl", action="flow"), seed=0)
