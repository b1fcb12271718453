"""Typed model configuration. These dataclasses become recipe keys (model.backbone.*, model.connector.*, ...).

Rules the recipe loader relies on: fields are int/float/str/bool/Literal/list[int]/list[str]/Optional of those or
nested dataclasses; `Literal` fields are validated as choices; numeric ranges come from `metadata={"min", "max"}`.
No `from __future__ import annotations` here, so the annotations stay real types for introspection.

Defaults are paper scale (GEM-2B: Qwen3-VL-2B + SANA 1.5 1.6B + DC-AE f32c32). The "tiny" size fields are only read
when the matching `pretrained` field is None (random init, for laptops and tests); `tiny_config()` gives the
recommended tiny values.
"""

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class BackboneConfig:
    family: Literal["qwen3_vl", "qwen2_5_vl"] = "qwen3_vl"  # Qwen-VL generation; GEM is built on Qwen3-VL
    pretrained: Optional[str] = "Qwen/Qwen3-VL-2B-Instruct"  # local dir or hub id; None = tiny random init below
    # --- tiny random-init sizes (ignored when `pretrained` is set) ---
    hidden_size: int = field(default=64, metadata={"min": 8})  # LLM width (must be num_heads * head_dim)
    num_layers: int = field(default=2, metadata={"min": 1})  # LLM decoder layers
    num_heads: int = field(default=4, metadata={"min": 1})  # LLM query heads
    num_kv_heads: int = field(default=2, metadata={"min": 1})  # LLM key/value heads (grouped-query attention)
    intermediate_size: int = field(default=128, metadata={"min": 1})  # LLM SwiGLU width
    vision_depth: int = field(default=2, metadata={"min": 1})  # ViT blocks
    vision_hidden_size: int = field(default=32, metadata={"min": 8})  # ViT width
    vision_heads: int = field(default=2, metadata={"min": 1})  # ViT heads
    patch_size: int = field(default=16, metadata={"min": 2})  # ViT patch side in pixels (Qwen3-VL 16, Qwen2.5-VL 14)
    spatial_merge_size: int = field(default=2, metadata={"min": 1})  # merger folds merge x merge patches into 1 token
    vocab_size: int = field(default=1024, metadata={"min": 300})  # embedding rows; the BPE is trained to at most this
    # --- processing (applies to tiny and pretrained) ---
    min_pixels: int = field(default=64 * 64, metadata={"min": 1})  # image processor lower bound on H*W after resize
    max_pixels: int = field(default=448 * 448, metadata={"min": 1})  # upper bound; 448x448 -> 196 visual tokens
    max_length: int = field(default=16384, metadata={"min": 16})  # token budget per sample (reference script: 16384)


@dataclass
class ConnectorConfig:
    width: int = field(default=2304, metadata={"min": 1})  # output width = the DiT's caption_channels (SANA: 2304)
    norm_eps: float = field(default=1e-5, metadata={"min": 0.0})  # RMSNorm epsilon (reference: 1e-5)


@dataclass
class DepthGeneratorConfig:
    space: Literal["latent", "pixel"] = "latent"  # latent = SANA DC-AE latents (paper); pixel = DiT on RGB (tiny)
    # "repo::subfolder" selects a diffusers subfolder; a plain path/id loads the repository root.
    pretrained_transformer: Optional[str] = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::transformer"
    pretrained_vae: Optional[str] = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::vae"  # DC-AE f32c32
    # --- tiny random-init DiT (ignored when pretrained_transformer is set) ---
    num_layers: int = field(default=2, metadata={"min": 1})  # SANA transformer blocks
    num_heads: int = field(default=4, metadata={"min": 1})  # self-attention heads (linear attention)
    head_dim: int = field(default=16, metadata={"min": 1})  # inner width = num_heads * head_dim
    cross_heads: int = field(default=4, metadata={"min": 1})  # cross-attention heads
    cross_head_dim: int = field(default=16, metadata={"min": 1})  # cross heads * cross_head_dim must = inner width
    patch_size: int = field(default=4, metadata={"min": 1})  # DiT patch side (in latent or pixel units)
    mlp_ratio: float = field(default=2.5, metadata={"min": 0.5})  # GLUMBConv expansion
    # --- tiny random-init DC-AE (latent space without pretrained_vae) ---
    vae_latent_channels: int = field(default=4, metadata={"min": 1})  # latent channels (real DC-AE: 32)
    vae_block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 16])  # 2**(len-1) x downsampling
    # --- targets and flow ---
    image_long_side: int = field(default=448, metadata={"min": 32})  # depth target long side (VLA script: 256)
    multiple_of: int = field(default=32, metadata={"min": 1})  # both target sides are multiples of this
    cfg_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})  # fraction of zeroed conditions
    num_train_timesteps: int = field(default=1000, metadata={"min": 1})  # FlowMatchEulerDiscreteScheduler table size
    flow_shift: float = field(default=1.0, metadata={"min": 0.01})  # scheduler `shift`; 1.0 = plain rectified flow
    sample_steps: int = field(default=30, metadata={"min": 1})  # Euler steps at sampling
    guidance_scale: float = field(default=5.0, metadata={"min": 0.0})  # classifier-free guidance at sampling


@dataclass
class ActionExpertConfig:
    kind: Literal["none", "flow", "autoregressive"] = "none"  # flow = released RDT-style; autoregressive = paper page
    action_dim: int = field(default=7, metadata={"min": 1})  # LIBERO: 6-DoF delta pose + gripper
    state_dim: int = field(default=8, metadata={"min": 1})  # LIBERO: eef pos (3) + axis-angle (3) + gripper (2)
    chunk_size: int = field(default=32, metadata={"min": 1})  # actions predicted per observation
    normalization: Literal["mean_std", "min_max"] = "mean_std"  # how actions/states are scaled for the loss
    # --- transformer sizes (used by both kinds) ---
    hidden_size: int = field(default=1024, metadata={"min": 8})  # expert width
    num_layers: int = field(default=14, metadata={"min": 1})  # expert blocks
    num_heads: int = field(default=8, metadata={"min": 1})  # query heads
    num_kv_heads: int = field(default=4, metadata={"min": 1})  # key/value heads (grouped-query attention)
    mlp_ratio: float = field(default=4.0, metadata={"min": 0.5})  # MLP width = mlp_ratio * hidden_size
    # --- flow only ---
    num_registers: int = field(default=4, metadata={"min": 0})  # learned register tokens in the expert sequence
    # index into the backbone's `hidden_states` tuple (0 = embeddings, k = after decoder layer k) per expert layer;
    # empty = layer i reads hidden_states[i], clipped to the deepest available for small backbones
    vlm_layers: list[int] = field(default_factory=list)
    logit_normal_mean: float = 0.0  # t = sigmoid(N(mean, std)) during training
    logit_normal_std: float = field(default=1.0, metadata={"min": 0.0})  # see logit_normal_mean
    inference_steps: int = field(default=5, metadata={"min": 1})  # Euler steps at prediction
    # --- autoregressive only ---
    ar_loss: Literal["l1", "mse"] = "l1"  # teacher-forced regression loss on normalised actions


@dataclass
class GemModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # Qwen-VL
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)  # visual tokens -> DiT caption space
    depth: DepthGeneratorConfig = field(default_factory=DepthGeneratorConfig)  # SANA DiT (+ DC-AE)
    action: ActionExpertConfig = field(default_factory=ActionExpertConfig)  # GEM-VLA head (stage 4)


def tiny_config(family: str = "qwen3_vl", action: str = "none", space: str = "pixel") -> GemModelConfig:
    """The recommended tiny model: random init everywhere, 64x64 depth targets, < 0.5 s forward+backward on CPU."""
    return GemModelConfig(
        backbone=BackboneConfig(family=family, pretrained=None, min_pixels=32 * 32, max_pixels=64 * 64,
                                max_length=512),
        connector=ConnectorConfig(width=64),
        depth=DepthGeneratorConfig(space=space, pretrained_transformer=None, pretrained_vae=None,
                                   patch_size=4 if space == "pixel" else 1, image_long_side=64,
                                   sample_steps=4),
        action=ActionExpertConfig(kind=action, chunk_size=8, hidden_size=64, num_layers=2, num_heads=4,
                                  num_kv_heads=2, mlp_ratio=2.0),
    )
