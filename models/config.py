"""Typed model configuration. These dataclasses become recipe keys (model.backbone.*, model.connector.*, ...).

Rules the recipe loader relies on: fields are int/float/str/bool/Literal/list[int]/list[str]/optional of
those or nested dataclasses; `Literal` fields are validated as choices; numeric ranges come from
`metadata={"min", "max"}`. No `from __future__ import annotations`: the annotations stay real types.

Defaults are paper scale (GEM-2B: Qwen3-VL-2B + SANA 1.5 1.6B + DC-AE f32c32). The "tiny" size fields are
only read when the matching `pretrained` field is None (random init, for laptops and tests); `tiny_config()`
gives the recommended tiny values.
"""

from dataclasses import dataclass, field
from typing import Literal


def _range(default, lo=None, hi=None, **kw):
    """A field with a default and a numeric range the recipe loader validates."""
    meta = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    return field(default=default, metadata=meta, **kw)


@dataclass
class BackboneConfig:
    # Qwen-VL generation; GEM is built on Qwen3-VL
    family: Literal["qwen3_vl", "qwen2_5_vl"] = "qwen3_vl"
    # local dir or hub id; None = tiny random init from the sizes below
    pretrained: str | None = "Qwen/Qwen3-VL-2B-Instruct"
    # --- tiny random-init sizes (ignored when `pretrained` is set) ---
    hidden_size: int = _range(64, 8)  # LLM width (a multiple of num_heads)
    num_layers: int = _range(2, 1)  # LLM decoder layers
    num_heads: int = _range(4, 1)  # LLM query heads
    num_kv_heads: int = _range(2, 1)  # LLM key/value heads (grouped-query attention)
    intermediate_size: int = _range(128, 1)  # LLM SwiGLU width
    vision_depth: int = _range(2, 1)  # ViT blocks
    vision_hidden_size: int = _range(32, 8)  # ViT width
    vision_heads: int = _range(2, 1)  # ViT heads
    patch_size: int = _range(16, 2)  # ViT patch side in pixels (Qwen3-VL 16, Qwen2.5-VL 14)
    spatial_merge_size: int = _range(2, 1)  # the merger folds merge x merge patches into one token
    vocab_size: int = _range(1024, 300)  # embedding rows; the tiny BPE is trained to at most this
    # --- processing (tiny and pretrained) ---
    min_pixels: int = _range(64 * 64, 1)  # image processor: lower bound on H*W after resizing
    max_pixels: int = _range(448 * 448, 1)  # upper bound; 448x448 -> 196 visual tokens
    max_length: int = _range(16384, 16)  # tokens per sample (the released script: 16384)

    def validate(self) -> None:
        if self.pretrained is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
            if self.vision_hidden_size % self.vision_heads:
                raise ValueError(f"vision_hidden_size {self.vision_hidden_size} is not divisible by vision_heads "
                                 f"{self.vision_heads}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is larger than max_pixels {self.max_pixels}")


@dataclass
class ConnectorConfig:
    width: int = _range(2304, 1)  # output width = the DiT's caption_channels (SANA: 2304)
    norm_eps: float = _range(1e-5, 0.0)  # RMSNorm epsilon (reference: 1e-5)


@dataclass
class DepthGeneratorConfig:
    # latent = SANA DC-AE latent space (paper); pixel = the DiT on the RGB depth image (tiny models)
    space: Literal["latent", "pixel"] = "latent"
    # local dir or hub id; "repo::subfolder" selects a diffusers subfolder; None = tiny random init
    pretrained_transformer: str | None = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::transformer"
    # DC-AE f32c32, frozen; None = tiny random init (latent space only)
    pretrained_vae: str | None = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::vae"
    # --- tiny random-init DiT (ignored when pretrained_transformer is set) ---
    num_layers: int = _range(2, 1)  # SANA transformer blocks
    num_heads: int = _range(4, 1)  # self-attention heads (linear attention)
    head_dim: int = _range(16, 1)  # inner width = num_heads * head_dim
    cross_heads: int = _range(4, 1)  # cross-attention heads
    cross_head_dim: int = _range(16, 1)  # cross_heads * cross_head_dim must equal the inner width
    patch_size: int = _range(4, 1)  # DiT patch side (latent or pixel units)
    mlp_ratio: float = _range(2.5, 0.5)  # GLUMBConv expansion
    # --- tiny random-init DC-AE (latent space without pretrained_vae) ---
    vae_latent_channels: int = _range(4, 1)  # latent channels (the real DC-AE: 32)
    vae_block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 16])  # 2**(len-1)x downsampling
    # --- targets and flow ---
    image_long_side: int = _range(448, 32)  # depth target long side (the VLA script: 256)
    multiple_of: int = _range(32, 1)  # both target sides are multiples of this
    cfg_dropout: float = _range(0.1, 0.0, 1.0)  # fraction of training conditions zeroed (for CFG)
    num_train_timesteps: int = _range(1000, 1)  # FlowMatchEulerDiscreteScheduler table size
    flow_shift: float = _range(1.0, 0.01)  # the scheduler's `shift`; 1.0 = plain rectified flow
    sample_steps: int = _range(30, 1)  # Euler steps at sampling
    guidance_scale: float = _range(5.0, 0.0)  # classifier-free guidance at sampling

    def validate(self) -> None:
        inner, cross = self.num_heads * self.head_dim, self.cross_heads * self.cross_head_dim
        if self.pretrained_transformer is None and inner != cross:
            raise ValueError(f"cross_heads x cross_head_dim ({self.cross_heads}x{self.cross_head_dim}) must equal "
                             f"num_heads x head_dim ({self.num_heads}x{self.head_dim})")
        if self.image_long_side % self.multiple_of:
            raise ValueError(f"image_long_side {self.image_long_side} is not a multiple of {self.multiple_of}")


@dataclass
class ActionExpertConfig:
    # flow = the released RDT-style expert; autoregressive = the paper page's; none = VLM only
    kind: Literal["none", "flow", "autoregressive"] = "none"
    action_dim: int = _range(7, 1)  # LIBERO: 6-DoF delta pose + gripper
    state_dim: int = _range(8, 1)  # LIBERO: eef position (3) + axis-angle (3) + gripper (2)
    chunk_size: int = _range(32, 1)  # actions predicted per observation
    normalization: Literal["mean_std", "min_max"] = "mean_std"  # how actions/states are scaled for the loss
    # --- transformer sizes (both kinds) ---
    hidden_size: int = _range(1024, 8)  # expert width
    num_layers: int = _range(14, 1)  # expert blocks
    num_heads: int = _range(8, 1)  # query heads
    num_kv_heads: int = _range(4, 1)  # key/value heads (grouped-query attention)
    mlp_ratio: float = _range(4.0, 0.5)  # MLP width = mlp_ratio * hidden_size
    # --- flow only ---
    num_registers: int = _range(4, 0)  # learned register tokens in the expert sequence
    # per expert layer, an index into the backbone's `hidden_states` (0 = embeddings, k = after decoder layer
    # k); empty = layer i reads hidden_states[i], clipped to the deepest one for small backbones
    vlm_layers: list[int] = field(default_factory=list)
    logit_normal_mean: float = 0.0  # training t = sigmoid(N(mean, std))
    logit_normal_std: float = _range(1.0, 0.0)  # see logit_normal_mean
    inference_steps: int = _range(5, 1)  # Euler steps at prediction
    # --- autoregressive only ---
    ar_loss: Literal["l1", "mse"] = "l1"  # teacher-forced regression loss on normalised actions

    def validate(self) -> None:
        if self.kind != "none":
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")


@dataclass
class GemModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # Qwen-VL
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)  # visual tokens -> DiT caption space
    depth: DepthGeneratorConfig = field(default_factory=DepthGeneratorConfig)  # SANA DiT (+ DC-AE)
    action: ActionExpertConfig = field(default_factory=ActionExpertConfig)  # GEM-VLA head (stage 4)


def tiny_config(family: str = "qwen3_vl", action: str = "none", space: str = "pixel") -> GemModelConfig:
    """The recommended tiny model: random init everywhere, 64x64 depth targets, ~20-40 ms forward+backward of
    2 samples on a CPU."""
    return GemModelConfig(
        backbone=BackboneConfig(
            family=family, pretrained=None, min_pixels=32 * 32, max_pixels=64 * 64, max_length=512
        ),
        connector=ConnectorConfig(width=64),
        depth=DepthGeneratorConfig(
            space=space,
            pretrained_transformer=None,
            pretrained_vae=None,
            patch_size=4 if space == "pixel" else 1,
            image_long_side=64,
            sample_steps=4,
        ),
        action=ActionExpertConfig(
            kind=action,
            chunk_size=8,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            mlp_ratio=2.0,
        ),
    )
