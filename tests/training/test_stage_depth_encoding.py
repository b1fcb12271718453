"""Issue 8 point 8: the VLA's depth target encoding is a stage setting; gem-2b's stage 4 uses the release's
(GEM-VLA train/dataset_joint.py: uint16 / 65535, flipped, INFERNO, --depth_image_size=256 square)."""

import json
from pathlib import Path

import pytest
import torch

from gem_models.depth_encoding import encode_inferno_linear
from gem_models.processor import SETTINGS_FILE, GemProcessor
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows
from gem_stages.train import EpisodeSamples, train_stage
from gemctl.recipe import resolve

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_gem_2b_stage4_uses_the_released_vla_encoding():
    g2 = resolve(RECIPES, "gem-2b")
    assert (g2.stages.stage4.depth_encoding, g2.stages.stage4.depth_long_side) == ("inferno_linear", 256)
    for stage in ("stage1", "stage2", "stage3"):
        assert getattr(g2.stages, stage).depth_encoding == "spectral_inverse"
    assert resolve(RECIPES, "tiny").stages.stage4.depth_encoding == "spectral_inverse"  # tiny keeps one encoding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stage4_trains_on_inferno_squares(tmp_path):
    """A tiny stage 4 with depth_encoding inferno_linear and long side 32: the checkpoint's processor keeps the
    encoding, and its targets for an episode window are the window's depth encoded by the release's VLA rule."""
    data = tmp_path / "data"
    prepare_dataset(DataConfig(num_scenes=2, num_episodes=1, episode_max_steps=10), data)
    recipe = resolve(RECIPES, "tiny", ["stages.stage4.steps=1", "stages.stage4.batch_size=2",
                                       "stages.stage4.depth_encoding=inferno_linear",
                                       "stages.stage4.depth_long_side=32", "stages.stage4.init=base"])
    out = tmp_path / "stage4"
    summary = train_stage("stage4", model_cfg=recipe.model, stage_cfg=recipe.stages.stage4, runtime=recipe.runtime,
                          seed=0, data_dir=data, init_dir=None, out_dir=out, work_dir=tmp_path / "w")
    assert summary["status"] == "completed" and "depth" in summary["losses"]
    settings = json.loads((out / "model" / "backbone" / SETTINGS_FILE).read_text())
    assert (settings["depth_encoding"], settings["depth_long_side"]) == ("inferno_linear", 32)
    processor = GemProcessor.from_pretrained(str(out / "model" / "backbone"))
    windows = EpisodeWindows(data, chunk_size=recipe.model.action.chunk_size)
    assert windows[3]["depth"] is not None
    batch = processor([EpisodeSamples(windows)[3]])
    (target,) = batch["depth_pixel_values"]
    assert target.shape == (3, 32, 32)
    assert torch.equal(target, encode_inferno_linear(windows[3]["depth"], 32))
