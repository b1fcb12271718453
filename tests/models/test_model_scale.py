"""gem-2b and gem-8b built on the meta device (no download, no memory) have the published architectures.

Each expected count is worked out by hand from the published dims below, layer by layer; the totals are checked
against the checkpoints' sizes where known (Qwen3-VL-2B-Instruct: 4.26 GB in bf16 = 2.13 B parameters).
Dims (source: the models' config.json, transcribed; SANA's as quoted in the GEM release's sana_transformer.py):
- Qwen3-VL-2B-Instruct: LLM vocab 151,936, hidden 2048, MLP 6144, 28 layers, 16 heads / 8 KV heads of 128, tied
  embeddings; ViT depth 24, width 1024, MLP 4096, patch 16 x 16 x 2 frames, 2304 positions, 2x2 merge to 2048,
  deepstack taps [5, 11, 17].
- Qwen3-VL-8B-Instruct: LLM hidden 4096, MLP 12288, 36 layers, 32 heads / 8 KV heads of 128, untied lm_head; ViT
  depth 27, width 1152, MLP 4304, merge to 4096, deepstack [8, 16, 24].
- SANA 1.5 1.6B transformer: 20 blocks of width 70 x 32 = 2240, cross-attention 20 x 112, caption 2304, GLUMBConv
  ratio 2.5, qk RMSNorm across heads, no attention bias, latent 32 channels, patch 1.
- DC-AE f32c32 (SANA's vae): 32 latent channels, 32x spatial compression.
"""

from pathlib import Path

import pytest

from gem_models.backbone import backbone_module_groups
from gem_models.presets import backbone_config, check_backbone_config, meta_parts
from gemctl.recipe import resolve

ROOT = Path(__file__).resolve().parents[2]


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def vision_tower(d: int, mlp: int, depth: int) -> int:
    """Qwen3-VL ViT without mergers: Conv3d patch embedding + learned positions + pre-norm blocks."""
    patch = 3 * 2 * 16 * 16 * d + d
    positions = 2304 * d
    block = 2 * (2 * d) + linear(d, 3 * d) + linear(d, d) + linear(d, mlp) + linear(mlp, d)  # 2 LayerNorms, qkv, proj
    return patch + positions + depth * block


def merger(d: int, out: int, norm_width: int) -> int:
    """2x2 patches (4d) -> Linear(4d, 4d) -> GELU -> Linear(4d, out); LayerNorm before (d) or after the shuffle (4d)."""
    return 2 * norm_width + linear(4 * d, 4 * d) + linear(4 * d, out)


def language_model(hidden: int, mlp: int, layers: int, heads: int, kv_heads: int, head_dim: int = 128) -> int:
    """Embeddings + decoder layers (no biases; q/k RMSNorm per head; 2 RMSNorms) + final RMSNorm."""
    attention = linear(hidden, heads * head_dim, False) + 2 * linear(hidden, kv_heads * head_dim, False)
    attention += linear(heads * head_dim, hidden, False) + 2 * head_dim
    layer = attention + 3 * hidden * mlp + 2 * hidden
    return 151936 * hidden + layers * layer + hidden


def connector(hidden: int) -> int:
    """Linear(H, 2304) -> GELU -> Linear(2304, 2304) -> RMSNorm(2304)."""
    return linear(hidden, 2304) + linear(2304, 2304) + 2304


def sana_dit() -> int:
    d, latent, ff = 2240, 32, int(2.5 * 2240)
    patch_embed = latent * d + d  # 1x1 conv
    time_embed = linear(256, d) + linear(d, d) + linear(d, 6 * d)  # sinusoid -> MLP -> 6 modulation vectors
    caption = linear(2304, d) + linear(d, d) + d  # projection MLP + RMSNorm
    self_attention = 3 * d * d + linear(d, d) + 2 * d  # q, k, v without bias, out, q/k RMSNorm across heads
    cross_attention = 3 * linear(d, d) + linear(d, d) + 2 * d  # 20 x 112 = 2240 wide, with biases
    glumbconv = linear(d, 2 * ff) + (2 * ff * 9 + 2 * ff) + ff * d  # 1x1 up (gated), 3x3 depthwise, 1x1 down
    block = self_attention + cross_attention + glumbconv + 6 * d  # + scale_shift_table
    return patch_embed + time_embed + caption + 20 * block + 2 * d + linear(d, latent)


# Per part, by hand (the formulas above) and as figures: a regression in either shows.
EXPECTED = {
    "gem-2b": {
        "vision": (vision_tower(1024, 4096, 24), 306_242_560),
        "merger": (merger(1024, 2048, 1024), 25_174_016),
        "deepstack_merger": (3 * merger(1024, 2048, 4096), 75_540_480),
        "language": (language_model(2048, 6144, 28, 16, 8), 1_720_574_976),  # lm_head tied to the embeddings
        "connector": (connector(2048), 10_033_920),
        "dit": (sana_dit(), 1_604_641_952),
    },
    "gem-8b": {
        "vision": (vision_tower(1152, 4304, 27), 415_891_440),
        "merger": (merger(1152, 4096, 1152), 40_119_040),
        "deepstack_merger": (3 * merger(1152, 4096, 4 * 1152), 120_377_856),
        "language": (language_model(4096, 12288, 36, 32, 8) + 151936 * 4096, 8_190_735_360),  # + untied lm_head
        "connector": (connector(4096), 14_752_512),
        "dit": (sana_dit(), 1_604_641_952),
    },
}
BACKBONE_TOTAL = {"gem-2b": 2_127_532_032, "gem-8b": 8_767_123_696}
# DC-AE f32c32: counted from diffusers' AutoencoderDC with the repository's vae config (encoder 153,027,104 +
# decoder 159,223,171); the DC-AE paper's figure is ~0.3 B. Frozen, in no trainable group.
VAE_TOTAL = 312_250_275


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) parameters once


@pytest.fixture(scope="module", params=["gem-2b", "gem-8b"])
def built(request):
    return request.param, meta_parts(resolve(ROOT / "recipes", request.param).model)


def test_each_part_has_the_published_parameter_count(built):
    name, parts = built
    groups = backbone_module_groups(parts["backbone"])
    got = {k: count(m) for k, m in groups.items()} | {
        "connector": count(parts["connector"]),
        "dit": count(parts["depth_generator"].transformer),
    }
    for part, (by_hand, figure) in EXPECTED[name].items():
        assert by_hand == figure, f"{name} {part}: the hand formula gives {by_hand:,}, the stated figure {figure:,}"
        assert got[part] == figure, f"{name} {part}: built {got[part]:,}, published {figure:,}"
    assert count(parts["backbone"]) == BACKBONE_TOTAL[name] == sum(
        EXPECTED[name][k][1] for k in ("vision", "merger", "deepstack_merger", "language"))
    assert count(parts["depth_generator"].vae) == VAE_TOTAL
    assert all(p.device.type == "meta" for m in parts.values() for p in m.parameters())


def test_the_parts_fit_together_as_published(built):
    name, parts = built
    text = parts["backbone"].config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == {"gem-2b": (2048, 28), "gem-8b": (4096, 36)}[name]
    assert parts["connector"].fc1.in_features == text.hidden_size and parts["connector"].fc2.out_features == 2304
    depth = parts["depth_generator"]
    assert depth.transformer.config.caption_channels == 2304
    assert (depth.spatial_factor, depth.latent_channels) == (32, 32)  # DC-AE f32c32


def test_stage3_trainable_parameters_of_the_paper_and_the_released_script():
    parts = meta_parts(resolve(ROOT / "recipes", "gem-2b").model)
    groups = backbone_module_groups(parts["backbone"]) | {
        "connector": parts["connector"], "depth_generator": parts["depth_generator"].transformer}

    def trainable(recipe: str) -> int:
        return sum(count(groups[g]) for g in resolve(ROOT / "recipes", recipe).stages.stage3.trainable)

    # released script: final merger 25,174,016 + LLM 1,720,574,976; the paper adds the deepstack mergers
    # 75,540,480, the connector 10,033,920 and the DiT 1,604,641,952
    assert trainable("gem-2b-release") == 1_745_748_992
    assert trainable("gem-2b") == 3_435_965_344


def test_a_downloaded_config_is_checked_against_the_preset():
    ref = "Qwen/Qwen3-VL-2B-Instruct"
    assert check_backbone_config(ref, backbone_config(ref)) is None  # agrees with itself
    wrong = backbone_config(ref)
    wrong.text_config.num_key_value_heads = 4
    assert check_backbone_config(ref, wrong) == (
        "Qwen/Qwen3-VL-2B-Instruct has another architecture than gemctl's preset: "
        "text_config.num_key_value_heads: 4 (preset 8)")
    assert check_backbone_config("/my/cluster/qwen", wrong) is None  # not a preset: nothing to compare


def test_a_reference_without_preset_is_named():
    cfg = resolve(ROOT / "recipes", "gem-2b", ["model.backbone.pretrained=/my/cluster/qwen"]).model
    with pytest.raises(ValueError, match="model.backbone.pretrained = '/my/cluster/qwen' has no built-in architecture"):
        meta_parts(cfg)
