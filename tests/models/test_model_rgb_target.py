"""model.depth.target = rgb: the generator is trained to draw the image itself (the paper's 'RGB supervision instead
of depth' ablation), for the same images and at the same sizes as the depth targets; the setting survives save/load."""

import dataclasses

import numpy as np
import pytest
import torch

from gem_models.config import DepthGeneratorConfig, tiny_config
from gem_models.gem import GemModel
from gem_models.processor import GemProcessor


def _rgb_model(seed: int = 0) -> GemModel:
    cfg = tiny_config("qwen3_vl")
    return GemModel.build(dataclasses.replace(cfg, depth=dataclasses.replace(cfg.depth, target="rgb")), seed=seed)


def test_rgb_target_is_the_image_at_the_depth_targets_size(sample_a, sample_b):
    model = _rgb_model()
    b = model.processor([sample_a(), sample_b()])
    depth_b = GemModel.build(tiny_config("qwen3_vl"), seed=0).processor([sample_a(), sample_b()])
    # same images supervised, same sizes: only what is drawn changes
    assert b["depth_image_index"].tolist() == depth_b["depth_image_index"].tolist()
    assert [t.shape for t in b["depth_pixel_values"]] == [t.shape for t in depth_b["depth_pixel_values"]]
    assert b["depth_sizes"].tolist() == depth_b["depth_sizes"].tolist()
    # sample_a's 64x64 image at its 64x64 target: the image's own pixels mapped to [-1, 1], exactly
    image = np.asarray(sample_a()["images"][0].convert("RGB"), dtype=np.float32)
    expected = torch.from_numpy(image / 127.5 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(b["depth_pixel_values"][0], expected, atol=1e-6, rtol=0)
    assert not torch.equal(b["depth_pixel_values"][0], depth_b["depth_pixel_values"][0])


def test_rgb_target_trains_and_survives_save_load(tmp_path, sample_a):
    model = _rgb_model()
    out = model(model.processor([sample_a()]), {"depth": 1.0}, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["depth"]) and out["depth"] > 0
    model.save(str(tmp_path / "m"))
    loaded = GemModel.load(str(tmp_path / "m"))
    assert loaded.cfg.depth.target == "rgb" and loaded.processor.target == "rgb"
    assert GemProcessor.from_pretrained(str(tmp_path / "m" / "backbone")).target == "rgb"


def test_unknown_target_is_refused(sample_a):
    with pytest.raises(ValueError, match="target"):
        DepthGeneratorConfig(target="normals")
    p = GemModel.build(tiny_config("qwen3_vl"), seed=0).processor
    with pytest.raises(ValueError, match="unknown generator target 'normals'"):
        GemProcessor(p.tokenizer, p.image_processor, target="normals")
