"""The published architectures of GEM's pretrained parts, keyed by the reference a recipe names.

With them a paper-scale model is built without downloading anything: `meta_parts` instantiates every part on the
meta device (shapes and parameter counts, no memory), and `check_backbone_config` compares a downloaded config with
the preset (load_backbone warns on a difference: the downloaded model is used, the preset needs fixing). Sources, transcribed:
- Qwen/Qwen3-VL-2B-Instruct and -8B-Instruct: the models' config.json (Qwen's own file is not mirrored here; the
  figures agree across independent copies and with the checkpoints' sizes: 2B = 4.26 GB in bf16).
- Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers transformer/config.json: quoted in the GEM release
  (GEM-VLM/qwen-vl-finetune/qwen3_vl/sana_transformer.py).
- The same repository's vae/config.json (DC-AE f32c32, as pinned by loaders of that revision).
"""

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from .config import GemModelConfig
from .connector import Connector
from .depth_generator import DepthGenerator

# Special tokens of the Qwen3-VL tokenizer: <|image_pad|>, <|video_pad|>, <|vision_start|>, <|vision_end|>.
QWEN3_VL_TOKEN_IDS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}


def _qwen3_vl(text: dict, vision: dict, tied: bool) -> dict:
    return {
        "text_config": {
            "vocab_size": 151936,
            "head_dim": 128,
            "num_key_value_heads": 8,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 262144,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_interleaved": True,
                "mrope_section": [24, 20, 20],
            },
            **text,
        },
        "vision_config": {
            "hidden_act": "gelu_pytorch_tanh",
            "num_heads": 16,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "num_position_embeddings": 2304,
            **vision,
        },
        "tie_word_embeddings": tied,
        **QWEN3_VL_TOKEN_IDS,
    }


BACKBONES = {
    "Qwen/Qwen3-VL-2B-Instruct": _qwen3_vl(
        text={"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16},
        vision={"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "out_hidden_size": 2048,
                "deepstack_visual_indexes": [5, 11, 17]},
        tied=True,
    ),
    "Qwen/Qwen3-VL-8B-Instruct": _qwen3_vl(
        text={"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32},
        vision={"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "out_hidden_size": 4096,
                "deepstack_visual_indexes": [8, 16, 24]},
        tied=False,
    ),
}

SANA_1_5_1_6B = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"

DEPTH_TRANSFORMERS = {
    f"{SANA_1_5_1_6B}::transformer": {
        "in_channels": 32,
        "out_channels": 32,
        "num_attention_heads": 70,
        "attention_head_dim": 32,
        "num_layers": 20,
        "num_cross_attention_heads": 20,
        "cross_attention_head_dim": 112,
        "cross_attention_dim": 2240,
        "caption_channels": 2304,
        "mlp_ratio": 2.5,
        "attention_bias": False,
        "sample_size": 32,
        "patch_size": 1,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": None,
        "guidance_embeds": False,
        "qk_norm": "rms_norm_across_heads",
    },
}

VAES = {
    f"{SANA_1_5_1_6B}::vae": {
        "in_channels": 3,
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
        "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "upsample_block_type": "interpolate",
        "downsample_block_type": "Conv",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "encoder_out_shortcut": True,
        "decoder_in_shortcut": True,
        "decoder_conv_act_fn": "relu",
        "scaling_factor": 0.41407,
    },
}


def _preset(table: dict, ref: str | None, key: str) -> dict:
    if ref not in table:
        raise ValueError(f"{key} = {ref!r} has no built-in architecture (known: {', '.join(sorted(table))})")
    return table[ref]


def backbone_config(ref: str) -> Qwen3VLConfig:
    return Qwen3VLConfig(**_preset(BACKBONES, ref, "model.backbone.pretrained"))


def meta_parts(cfg: GemModelConfig) -> dict[str, nn.Module]:
    """The paper-scale parts a recipe names, on the meta device: {"backbone", "connector", "depth_generator"}.

    Every pretrained reference must be a known preset (ValueError otherwise). The action expert is left out: it is
    gemctl's own module, built from the recipe's sizes by GemModel.build.
    """
    if cfg.backbone.family != "qwen3_vl" or cfg.depth.space != "latent":
        raise ValueError("paper-scale presets exist for family qwen3_vl in the latent space only")
    backbone_cfg = backbone_config(cfg.backbone.pretrained)
    dit = _preset(DEPTH_TRANSFORMERS, cfg.depth.pretrained_transformer, "model.depth.pretrained_transformer")
    vae = _preset(VAES, cfg.depth.pretrained_vae, "model.depth.pretrained_vae")
    with torch.device("meta"):
        backbone = Qwen3VLForConditionalGeneration(backbone_cfg)
        connector = Connector(backbone_cfg.text_config.hidden_size, cfg.connector)
        transformer = SanaTransformer2DModel(**dit)
        autoencoder = AutoencoderDC(**vae)
    if transformer.config.caption_channels != cfg.connector.width:
        raise ValueError(f"the DiT's caption_channels {transformer.config.caption_channels} != model.connector.width "
                         f"{cfg.connector.width}")
    return {"backbone": backbone, "connector": connector,
            "depth_generator": DepthGenerator(cfg.depth, transformer, autoencoder)}


# Fields that decide a backbone's shapes: a downloaded config must agree with the preset on each.
_SHAPE_FIELDS = {
    "text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim"),
    "vision_config": ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "temporal_patch_size",
                      "spatial_merge_size", "out_hidden_size", "num_position_embeddings",
                      "deepstack_visual_indexes"),
}


def check_backbone_config(ref: str, config) -> str | None:
    """For a preset `ref`: a line naming each shape field where the loaded `config` differs from the preset (None when
    they agree or `ref` is no preset)."""
    if ref not in BACKBONES:
        return None
    expected = backbone_config(ref)
    diff = [
        f"{part}.{name}: {getattr(getattr(config, part), name, None)!r} (preset {getattr(getattr(expected, part), name)!r})"
        for part, names in _SHAPE_FIELDS.items()
        for name in names
        if getattr(getattr(config, part), name, None) != getattr(getattr(expected, part), name)
    ]
    if config.tie_word_embeddings != expected.tie_word_embeddings:
        diff.append(f"tie_word_embeddings: {config.tie_word_embeddings!r} (preset {expected.tie_word_embeddings!r})")
    return f"{ref} has another architecture than gemctl's preset: {', '.join(diff)}" if diff else None
