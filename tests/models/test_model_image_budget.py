"""The backbone's image budget (issue 8 point 2) and the depth target size taken from the processed image (point 3).

Release: GEM-VLM scripts/train.sh passes --max_pixels 2359296 --min_pixels 25088; qwenvl/data/vision_process.py
smart-resizes every image with factor patch 16 x merge 2 = 32 (sides rounded to multiples of 32; scaled down by
sqrt(h*w / max) with sides floored, or up by sqrt(min / (h*w)) with sides ceiled, when out of budget). The depth
target is sized from that processed image (data_processor.py: `rgbs[0].size` after preprocess_qwen_visual).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_models.config import BackboneConfig
from gem_models.processor import GemProcessor, make_image_processor
from gem_models.tokenizer import train_tiny_tokenizer
from gemctl.recipe import resolve

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RELEASE = {"min_pixels": 25088, "max_pixels": 2359296}  # 32 x 28 x 28 and 1536 x 1536


def test_gem_recipes_use_the_released_budget_apart_from_the_depth_size():
    for name in ("gem-2b", "gem-8b"):  # gem-8b extends gem-2b; the release has one VLM script for both
        backbone, depth = resolve(RECIPES, name).model.backbone, resolve(RECIPES, name).model.depth
        assert (backbone.min_pixels, backbone.max_pixels) == (25088, 2359296)
        assert (depth.image_long_side, depth.multiple_of) == (448, 32)  # a separate setting, unchanged
        assert backbone.max_length == 16384 >= 2359296 // 32**2  # one image at the cap: 2304 tokens


@pytest.mark.parametrize(
    "budget, hw, processed",
    [
        (RELEASE, (480, 640), (480, 640)),  # within budget: 15 x 20 = 300 tokens
        ({"min_pixels": 4096, "max_pixels": 200704}, (480, 640), (384, 512)),  # gemctl's old budget: beta =
        # sqrt(307200 / 200704) = 1.2372 -> floor(387.97 / 32) * 32 = 384, floor(517.3 / 32) * 32 = 512
        (RELEASE, (100, 100), (160, 160)),  # beta = sqrt(25088 / 10000) = 1.5839 -> ceil(158.4 / 32) * 32 = 160
        ({"min_pixels": 4096, "max_pixels": 200704}, (100, 100), (96, 96)),  # round(3.125) * 32 = 96
        (RELEASE, (2048, 2048), (1536, 1536)),  # the cap: 48 x 48 = 2304 tokens
        (RELEASE, (460, 640), (448, 640)),  # round(14.375) * 32 = 448
    ],
)
def test_smart_resize_under_a_budget(budget, hw, processed):
    ip = make_image_processor(BackboneConfig(pretrained=None, **budget))
    grid = ip(images=[Image.new("RGB", (hw[1], hw[0]))], return_tensors="np")["image_grid_thw"][0]
    assert (grid[1] * 16, grid[2] * 16) == processed


@pytest.fixture(scope="module")
def release_processor() -> GemProcessor:
    tokenizer = train_tiny_tokenizer(["how far is it", "two meters"] * 5, 400)
    ip = make_image_processor(BackboneConfig(pretrained=None, **RELEASE))
    return GemProcessor(tokenizer, ip, max_length=4096, depth_long_side=448)


def sample(h, w, depth):
    return {"images": [Image.new("RGB", (w, h))], "depths": [depth],
            "conversations": [{"from": "human", "value": "<image>\nhow far is it"}, {"from": "gpt", "value": "two"}]}


@pytest.mark.parametrize(
    "hw, target",
    [
        ((480, 640), (320, 448)),  # processed 480x640: 480 * 0.7 = 336 -> 320
        ((460, 640), (288, 448)),  # processed 448x640: 448 * 0.7 = 313.6 -> 288 (the original size gives 320)
        ((100, 100), (448, 448)),  # processed 160x160, upscaled to the long side
    ],
)
def test_depth_target_is_sized_from_the_processed_image(release_processor, hw, target):
    batch = release_processor([sample(*hw, np.full(hw, 2.0))])
    assert tuple(batch["depth_pixel_values"][0].shape) == (3, *target)
    assert batch["depth_sizes"].tolist() == [list(target)]
    no_depth = release_processor([sample(*hw, None)])  # sampling sizes follow the same rule
    assert no_depth["depth_sizes"].tolist() == [list(target)]
