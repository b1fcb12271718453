"""The model-FLOP counter of bench/gpu_step.py: hand-computed cases, and its per-token terms against the real gem-2b
modules (built on the meta device), so a formula that misses or invents a projection fails here, not in an MFU."""

import importlib.util
import sys
from pathlib import Path

import pytest
from torch import nn

from gem_models.presets import meta_parts
from gemctl.recipe import resolve

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
gpu_step = sys.modules["gpu_step"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_step)


def weights(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Weight entries of the Linear and Conv layers of `module` (biases and norms excluded), but those named in skip."""
    return sum(m.weight.numel() for name, m in module.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)) and name not in skip)


def test_llm_by_hand():
    # seq 4, hidden 8, MLP 16, 2 layers, 2 heads / 1 KV head of 4: q 8 wide, k and v 4 wide.
    # per layer: linears 2*4*(8*8 + 2*8*4 + 8*8 + 3*8*16) = 4608; causal attention 2*2*4*4*8/2 = 256
    assert gpu_step.llm_forward_flops(4, 8, 16, 2, 2, 1, 4) == 2 * (4608 + 256)


def test_vit_by_hand():
    # 4 patches of 12 values, width 8, MLP 32, 1 block: embed 2*4*12*8 = 768,
    # linears 2*4*(3*64 + 64 + 2*8*32) = 6144, attention 2*2*4*4*8 = 512
    assert gpu_step.vit_forward_flops(4, 8, 32, 1, 12) == 768 + 6144 + 512


def test_dit_by_hand():
    # N = 4 latent tokens of 2 channels, L = 2 condition tokens; D = 2 heads x 2 = 4, C = 1 x 4, cross_dim 4,
    # caption 6, F = 2.0 x 4 = 8, 1 block, patch 1.
    io = 2 * 4 * 2 * 4 * 2  # patch embedding and output projection: 128
    caption = 2 * 2 * (6 * 4 + 4 * 4)  # 160
    self_attn = 2 * 4 * 4 * 4 * 4 + 2 * 2 * 2 * 4 * 3 * 2  # q k v out, then V'K and (V'K)Q per head: 704
    cross = 2 * 4 * 2 * 4 * 4 + 2 * 2 * 2 * 4 * 4 + 2 * 2 * 4 * 2 * 4  # q out on N, k v on L, softmax attention: 512
    glu = 2 * 4 * (4 * 16 + 9 * 16 + 8 * 4)  # 1920
    got = gpu_step.dit_forward_flops(4, 2, in_channels=2, heads=2, head_dim=2, cross_heads=1, cross_head_dim=4,
                                     cross_dim=4, caption_channels=6, mlp_ratio=2.0, layers=1)
    assert got == io + caption + self_attn + cross + glu == 3424


@pytest.fixture(scope="module")
def parts():
    return meta_parts(resolve(ROOT / "recipes", "gem-2b").model)


def test_per_token_terms_match_the_gem_2b_modules(parts):
    backbone = parts["backbone"]
    text, vision = backbone.config.text_config, backbone.config.vision_config
    # One token through one decoder layer: 2 FLOPs per weight, plus its causal attention to itself (2 x q width).
    layer = backbone.model.language_model.layers[0]
    q = text.num_attention_heads * text.head_dim
    assert gpu_step.llm_forward_flops(1, text.hidden_size, text.intermediate_size, 1, text.num_attention_heads,
                                      text.num_key_value_heads, text.head_dim) == 2 * weights(layer) + 2 * q

    visual = backbone.model.visual
    in_patch = 3 * vision.temporal_patch_size * vision.patch_size**2
    assert weights(visual.patch_embed) == in_patch * vision.hidden_size
    assert gpu_step.vit_forward_flops(1, vision.hidden_size, vision.intermediate_size, 1, in_patch) == (
        2 * weights(visual.patch_embed) + 2 * weights(visual.blocks[0]) + 4 * vision.hidden_size)
    mergers = 1 + len(vision.deepstack_visual_indexes)
    assert gpu_step.merger_forward_flops(1, vision.hidden_size, vision.spatial_merge_size, vision.out_hidden_size,
                                         mergers) == 2 * (weights(visual.merger)
                                                          + weights(visual.deepstack_merger_list))
    connector = parts["connector"]
    assert gpu_step.connector_forward_flops(1, text.hidden_size, connector.fc2.out_features) == 2 * weights(
        connector)

    dit = parts["depth_generator"].transformer
    c = dit.config
    kwargs = dict(in_channels=c.in_channels, heads=c.num_attention_heads, head_dim=c.attention_head_dim,
                  cross_heads=c.num_cross_attention_heads, cross_head_dim=c.cross_attention_head_dim,
                  cross_dim=c.cross_attention_dim, caption_channels=c.caption_channels, mlp_ratio=c.mlp_ratio,
                  layers=1, patch=c.patch_size)
    block = dit.transformer_blocks[0]
    on_condition = ("attn2.to_k", "attn2.to_v")
    linear_attention = c.num_attention_heads * 4 * (c.attention_head_dim + 1) * c.attention_head_dim
    # A latent token: patch embedding, output projection, the block's projections (the depthwise conv counted as
    # its 9 weights a channel) and the linear attention's per-token products; no condition token.
    assert gpu_step.dit_forward_flops(1, 0, **kwargs) == (
        2 * (weights(dit.patch_embed) + weights(dit.proj_out) + weights(block, skip=on_condition)) + linear_attention)
    # A condition token with no latent tokens: the caption projection and the cross-attention's k and v.
    assert gpu_step.dit_forward_flops(0, 1, **kwargs) == 2 * (
        weights(dit.caption_projection) + weights(block.attn2.to_k) + weights(block.attn2.to_v))


def test_a_step_counts_three_forwards_for_trained_parts_and_one_for_the_frozen_vit(parts):
    one = gpu_step.step_flops(parts, gpu_step.Shapes(1, (896, 672), 512, 256, (448, 320)))
    two = gpu_step.step_flops(parts, gpu_step.Shapes(2, (896, 672), 512, 256, (448, 320)))
    assert two == {k: 2 * v for k, v in one.items()}
    # 56 x 42 patches -> 588 image tokens; 1102 tokens a sample; DC-AE f32: a 14 x 10 latent
    text, vision = parts["backbone"].config.text_config, parts["backbone"].config.vision_config
    assert one["vit"] == gpu_step.vit_forward_flops(56 * 42, 1024, 4096, 24, 1536)
    assert one["llm"] == 3 * gpu_step.llm_forward_flops(1102, 2048, 6144, 28, 16, 8, 128)
    assert one["lm_head"] == 3 * 2 * 255 * 2048 * text.vocab_size
    assert one["mergers"] == 3 * gpu_step.merger_forward_flops(588, 1024, 2, 2048, 4)
    assert one["dit"] == 3 * gpu_step.dit_forward_flops(
        140, 588, in_channels=32, heads=70, head_dim=32, cross_heads=20, cross_head_dim=112, cross_dim=2240,
        caption_channels=2304, mlp_ratio=2.5, layers=20)
    assert vision.deepstack_visual_indexes == [5, 11, 17]
