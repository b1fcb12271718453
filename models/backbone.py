"""The Qwen-VL backbone: Qwen3-VL (GEM's) or Qwen2.5-VL, tiny random-init from a config or from_pretrained."""

import warnings

import torch
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from .config import BackboneConfig
from .presets import check_backbone_config

BACKBONE_CLASSES = {
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


def _mrope_section(head_dim: int, family: str) -> list[int]:
    """Split the rotary half-dim into (t, h, w) sections in the released models' proportions.

    Qwen3-VL-2B/8B use [24, 20, 20] of 64, Qwen2.5-VL [16, 24, 24] of 64; tiny heads scale them down.
    """
    half = head_dim // 2
    if family == "qwen3_vl":
        hw = half * 20 // 64
        return [half - 2 * hw, hw, hw]
    hw = half * 24 // 64
    return [half - 2 * hw, hw, hw]


def tiny_backbone_config(cfg: BackboneConfig, tokenizer: PreTrainedTokenizerBase):
    """A transformers config for a small random-init backbone, special-token ids from `tokenizer`."""
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(
            f"backbone hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}"
        )
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but backbone vocab_size is {cfg.vocab_size}")
    head_dim = cfg.hidden_size // cfg.num_heads
    tid = tokenizer.convert_tokens_to_ids
    token_ids = {
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
    }
    text = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": 32768,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "intermediate_size": 4 * cfg.vision_hidden_size,
        "num_heads": cfg.vision_heads,
        "patch_size": cfg.patch_size,
        "spatial_merge_size": cfg.spatial_merge_size,
        "temporal_patch_size": 2,
        "out_hidden_size": cfg.hidden_size,
    }
    if cfg.family == "qwen3_vl":
        text.update(
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_interleaved": True,
                "mrope_section": _mrope_section(head_dim, cfg.family),
            },
        )
        # Deepstack taps at ~1/4, 1/2, 3/4 depth: [5, 11, 17] for the real 24-block ViT, [0] for 2 blocks.
        deepstack = sorted({max(0, cfg.vision_depth * k // 4 - 1) for k in (1, 2, 3)})
        # 256 learned positions (a 16x16 patch grid), interpolated for other sizes; the real model has 2304.
        vision.update(num_position_embeddings=256, deepstack_visual_indexes=deepstack)
        # Tied input/output embeddings, as in Qwen3-VL-2B.
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **token_ids)
    text.update(
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(head_dim, cfg.family),
        },
    )
    # Window attention over 4x4 merged tokens (112 px at patch 14, as released); full attention every 8th
    # block and in the last one.
    vision.update(
        window_size=4 * cfg.patch_size * cfg.spatial_merge_size,
        fullatt_block_indexes=[
            k for k in range(cfg.vision_depth) if (k + 1) % 8 == 0 or k == cfg.vision_depth - 1
        ],
        hidden_act="silu",
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **token_ids)


def build_backbone(cfg: BackboneConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """Tiny random init (seeded, without touching the global RNG) or `from_pretrained(cfg.pretrained)`."""
    cls = BACKBONE_CLASSES[cfg.family]
    if cfg.pretrained is not None:
        return load_backbone(cfg.pretrained, cfg.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(tiny_backbone_config(cfg, tokenizer))
    return model.float()


def load_backbone(path: str, family: str) -> PreTrainedModel:
    """Local directory or hub id; float32 master weights (mixed precision is the trainer's autocast)."""
    model = BACKBONE_CLASSES[family].from_pretrained(path, dtype=torch.float32)
    expected = {"qwen3_vl": "qwen3_vl", "qwen2_5_vl": "qwen2_5_vl"}[family]
    if model.config.model_type != expected:
        raise ValueError(f"{path} is a {model.config.model_type} checkpoint, the config says family={family}")
    difference = check_backbone_config(path, model.config)
    if difference:  # the checkpoint is right by definition; the preset (paper-scale shapes, no download) is stale
        warnings.warn(f"{difference}: fix models/presets.py", stacklevel=2)
    return model


def packed_position_ids(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Position ids [4, 1, T] of a packed sequence [1, T] (samples back to back, sample k = tokens
    cu_seqlens[k]:cu_seqlens[k+1]): row 0 is each token's index within its sample, rows 1-3 its M-RoPE (t, h, w)
    positions, exactly those the sample gets in a padded batch.

    Row 0 restarting at 0 is how transformers sees the sample boundaries when there is no attention_mask: a
    block-diagonal causal mask for SDPA and eager (masking_utils.find_packed_sequence_indices), variable-length
    kernels for flash-attention (modeling_flash_attention_utils._is_packed_sequence, one sequence per row).
    """
    lengths = cu_seqlens.diff().long()
    width = int(lengths.max())
    # The padded batch these samples would make: the backbone's own get_rope_index computes their M-RoPE there.
    mask = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
    padded_ids = input_ids.new_zeros(mask.shape).masked_scatter_(mask, input_ids[0])
    padded_types = mm_token_type_ids.new_zeros(mask.shape).masked_scatter_(mask, mm_token_type_ids[0])
    rope, _ = model.model.get_rope_index(
        padded_ids, padded_types, image_grid_thw=image_grid_thw, attention_mask=mask.long()
    )
    text = mask.long().cumsum(-1) - 1
    return torch.cat([text[mask][None], rope[:, mask]])[:, None, :]


def vision_token_ids(model: PreTrainedModel) -> dict[str, int]:
    """Ids of <|vision_start|>, <|vision_end|>, <|image_pad|> as the backbone's config knows them."""
    c = model.config
    return {
        "vision_start": c.vision_start_token_id,
        "vision_end": c.vision_end_token_id,
        "image_pad": c.image_token_id,
    }


def backbone_module_groups(model: PreTrainedModel) -> dict[str, nn.Module]:
    """vision = ViT without mergers; merger = the final patch merger; deepstack_merger = Qwen3-VL's mergers of
    intermediate ViT features (empty for Qwen2.5-VL); language = LLM (embeddings, decoder, lm_head).

    The deepstack mergers are their own group because the two published choices differ on them: the paper's table
    trains every merger, the released script (train_qwen.py set_model) unfreezes `visual.merger` only.
    """
    visual = model.model.visual
    merger_names = ("merger", "deepstack_merger_list")
    vision = nn.ModuleDict({n: m for n, m in visual.named_children() if n not in merger_names})
    deepstack = nn.ModuleDict({"deepstack_merger_list": visual.deepstack_merger_list}
                              if hasattr(visual, "deepstack_merger_list") else {})
    language = nn.ModuleDict({"language_model": model.model.language_model, "lm_head": model.lm_head})
    return {"vision": vision, "merger": visual.merger, "deepstack_merger": deepstack, "language": language}
