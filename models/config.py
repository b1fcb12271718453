"""Typed model configuration. These dataclasses become recipe keys (model.backbone.*, model.connector.*, ...).

They are pydantic dataclasses: building one validates it (types, ranges and choices declared on the fields,
cross-field rules in `model_validator`s), and `dataclasses.replace/asdict/fields` work as on any dataclass. Each
field's description is the text a user sees in `gemctl recipe schema` and in an editor.

Defaults are paper scale (GEM-2B: Qwen3-VL-2B + SANA 1.5 1.6B + DC-AE f32c32). The "tiny" size fields are
only read when the matching `pretrained` field is None (random init, for laptops and tests); `tiny_config()`
gives the recommended tiny values.
"""

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

# Every settings class (models, stages, recipe) shares this: unknown keys are errors, and NaN/inf are not numbers.
SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)

# Scalars are taken only as themselves: "3" is not an int, true is not an int, 3 is not a string. A float field
# takes ints too (lr: 1 is 1.0).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


def setting(default, description: str, **constraints):
    """A field with its default, the description users see, and its constraints (ge, le, multiple_of, ...)."""
    if callable(default):
        return Field(default_factory=default, description=description, **constraints)
    return Field(default, description=description, **constraints)


@dataclass(config=SETTINGS)
class BackboneConfig:
    family: Literal["qwen3_vl", "qwen2_5_vl"] = setting("qwen3_vl", "Qwen-VL generation; GEM is built on Qwen3-VL.")
    pretrained: Str | None = setting(
        "Qwen/Qwen3-VL-2B-Instruct", "Local dir or hub id; null = tiny random init from the sizes below.")
    # --- tiny random-init sizes (ignored when `pretrained` is set) ---
    hidden_size: Int = setting(64, "LLM width (a multiple of num_heads).", ge=8)
    num_layers: Int = setting(2, "LLM decoder layers.", ge=1)
    num_heads: Int = setting(4, "LLM query heads.", ge=1)
    num_kv_heads: Int = setting(2, "LLM key/value heads (grouped-query attention).", ge=1)
    intermediate_size: Int = setting(128, "LLM SwiGLU width.", ge=1)
    vision_depth: Int = setting(2, "ViT blocks.", ge=1)
    vision_hidden_size: Int = setting(32, "ViT width.", ge=8)
    vision_heads: Int = setting(2, "ViT heads.", ge=1)
    patch_size: Int = setting(16, "ViT patch side in pixels (Qwen3-VL 16, Qwen2.5-VL 14).", ge=2)
    spatial_merge_size: Int = setting(2, "The merger folds merge x merge patches into one token.", ge=1)
    vocab_size: Int = setting(1024, "Embedding rows; the tiny BPE is trained to at most this.", ge=300)
    # --- processing (tiny and pretrained) ---
    min_pixels: Int = setting(
        25_088, "Image processor: lower bound on H*W after resizing (the released script's 25,088 = 32 x 28 x 28).",
        ge=1)
    max_pixels: Int = setting(
        2_359_296, "Image processor: upper bound on H*W (the released script's 2,359,296 = 1536 x 1536: at most "
        "2304 visual tokens with 16-pixel patches). The depth target's size is model.depth.image_long_side.", ge=1)
    max_length: Int = setting(16384, "Tokens per sample (the released script: 16384).", ge=16)

    @model_validator(mode="after")
    def _sizes_fit(self):
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
        return self


@dataclass(config=SETTINGS)
class ConnectorConfig:
    width: Int = setting(2304, "Output width = the DiT's caption_channels (SANA: 2304).", ge=1)
    norm_eps: Float = setting(1e-5, "RMSNorm epsilon (reference: 1e-5).", ge=0.0)


@dataclass(config=SETTINGS)
class DepthGeneratorConfig:
    space: Literal["latent", "pixel"] = setting(
        "latent", "latent = SANA DC-AE latent space (paper); pixel = the DiT on the RGB depth image (tiny models).")
    pretrained_transformer: Str | None = setting(
        "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::transformer",
        "Local dir or hub id; 'repo::subfolder' selects a diffusers subfolder; null = tiny random init.")
    pretrained_vae: Str | None = setting(
        "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers::vae",
        "DC-AE f32c32, frozen; null = tiny random init (latent space only).")
    # --- tiny random-init DiT (ignored when pretrained_transformer is set) ---
    num_layers: Int = setting(2, "SANA transformer blocks.", ge=1)
    num_heads: Int = setting(4, "Self-attention heads (linear attention).", ge=1)
    head_dim: Int = setting(16, "Inner width = num_heads * head_dim.", ge=1)
    cross_heads: Int = setting(4, "Cross-attention heads.", ge=1)
    cross_head_dim: Int = setting(16, "cross_heads * cross_head_dim must equal the inner width.", ge=1)
    patch_size: Int = setting(4, "DiT patch side (latent or pixel units).", ge=1)
    mlp_ratio: Float = setting(2.5, "GLUMBConv expansion.", ge=0.5)
    # --- tiny random-init DC-AE (latent space without pretrained_vae) ---
    vae_latent_channels: Int = setting(4, "Latent channels (the real DC-AE: 32).", ge=1)
    vae_block_out_channels: list[Int] = setting(
        lambda: [8, 16, 16], "Encoder block widths; 2**(len-1)x downsampling.", min_length=1)
    # --- targets and flow ---
    target: Literal["depth", "rgb"] = setting(
        "depth", "What the generator learns to draw for each image with a depth map: depth = its colour-mapped "
        "depth (GEM); rgb = the image itself at the same size (the paper's 'RGB supervision instead of depth' "
        "ablation).")
    image_long_side: Int = setting(448, "Depth target long side (the VLA script: 256).", ge=32)
    multiple_of: Int = setting(32, "Both target sides are multiples of this.", ge=1)
    cfg_dropout: Float = setting(0.1, "Fraction of training conditions zeroed (for CFG).", ge=0.0, le=1.0)
    num_train_timesteps: Int = setting(1000, "FlowMatchEulerDiscreteScheduler table size.", ge=1)
    flow_shift: Float = setting(1.0, "The scheduler's `shift`; 1.0 = plain rectified flow.", ge=0.01)
    sample_steps: Int = setting(30, "Euler steps at sampling.", ge=1)
    guidance_scale: Float = setting(5.0, "Classifier-free guidance at sampling.", ge=0.0)

    @model_validator(mode="after")
    def _sizes_fit(self):
        inner, cross = self.num_heads * self.head_dim, self.cross_heads * self.cross_head_dim
        if self.pretrained_transformer is None and inner != cross:
            raise ValueError(f"cross_heads x cross_head_dim ({self.cross_heads}x{self.cross_head_dim}) must equal "
                             f"num_heads x head_dim ({self.num_heads}x{self.head_dim})")
        if self.image_long_side % self.multiple_of:
            raise ValueError(f"image_long_side {self.image_long_side} is not a multiple of {self.multiple_of}")
        return self


@dataclass(config=SETTINGS)
class ActionExpertConfig:
    kind: Literal["none", "flow", "autoregressive"] = setting(
        "none", "flow = the released RDT-style expert; autoregressive = the paper page's; none = VLM only.")
    action_dim: Int = setting(7, "LIBERO: 6-DoF delta pose + gripper.", ge=1)
    state_dim: Int = setting(8, "LIBERO: eef position (3) + axis-angle (3) + gripper (2).", ge=1)
    chunk_size: Int = setting(32, "Actions predicted per observation.", ge=1)
    normalization: Literal["mean_std", "min_max"] = setting(
        "mean_std", "How actions and states are scaled for the loss: mean_std standardises both; min_max is the "
        "released GEM-VLA's: actions to [-1, 1] with the range floored at 1e-3, states raw.")
    # --- transformer sizes (both kinds) ---
    hidden_size: Int = setting(1024, "Expert width.", ge=8)
    num_layers: Int = setting(14, "Expert blocks.", ge=1)
    num_heads: Int = setting(8, "Query heads.", ge=1)
    num_kv_heads: Int = setting(4, "Key/value heads (grouped-query attention).", ge=1)
    mlp_ratio: Float = setting(
        4.0, "MLP width = mlp_ratio * hidden_size (flow: the SwiGLU width is 2/3 of it, rounded up to "
        "ffn_multiple_of, as llama and the release's RDT).", ge=0.5)
    # --- flow only (the release's RDT, GEM-VLA/configs/demo.yaml) ---
    num_registers: Int = setting(4, "Learned register tokens appended after the action tokens.", ge=0)
    ffn_multiple_of: Int = setting(256, "SwiGLU hidden width is rounded up to a multiple of this.", ge=1)
    ffn_dim_multiplier: Float | None = setting(
        None, "Optional factor on the SwiGLU hidden width before rounding (llama's; the release: null).", gt=0.0)
    norm_eps: Float = setting(1e-5, "Epsilon of every RMSNorm in the expert (blocks, q/k per head, output).", gt=0.0)
    time_embed_dim: Int = setting(
        256, "Sinusoid features of the timestep before its MLP (DiT's frequency_embedding_size).", ge=2)
    lang_adaptor_depth: Int = setting(
        2, "Linear layers (SiLU between) of the ONE adaptor shared by every expert layer: VLM width -> "
        "hidden_size (the release's mlp2x_silu).", ge=1)
    action_adaptor_depth: Int = setting(3, "Linear layers of the noisy-action adaptor (mlp3x_silu).", ge=1)
    state_adaptor_depth: Int = setting(3, "Linear layers of the proprioceptive-state adaptor (mlp3x_silu).", ge=1)
    vlm_layers: list[Int] = setting(
        list, "Per expert layer, an index into the backbone's hidden_states (0 = embeddings, k = after decoder "
        "layer k); empty = layer i reads hidden_states[i], clipped to the deepest one for small backbones.")
    logit_normal_mean: Float = setting(
        0.0, "Training t = sigmoid(N(mean, std)); the release: LogisticNormal(0, 1), i.e. mean 0, std 1.")
    logit_normal_std: Float = setting(1.0, "See logit_normal_mean.", ge=0.0)
    inference_steps: Int = setting(
        5, "Euler steps from noise (t = 0) to the action chunk (t = 1) at prediction.", ge=1)
    # --- autoregressive only ---
    ar_loss: Literal["l1", "mse"] = setting("l1", "Teacher-forced regression loss on normalised actions.")

    @model_validator(mode="after")
    def _sizes_fit(self):
        if self.kind != "none":
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


@dataclass(config=SETTINGS)
class GemModelConfig:
    backbone: BackboneConfig = setting(BackboneConfig, "Qwen-VL vision-language backbone.")
    connector: ConnectorConfig = setting(ConnectorConfig, "Visual tokens -> DiT caption space.")
    depth: DepthGeneratorConfig = setting(DepthGeneratorConfig, "SANA DiT (+ DC-AE) depth generator.")
    action: ActionExpertConfig = setting(ActionExpertConfig, "GEM-VLA action expert (stage 4).")


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
            ffn_multiple_of=16,
        ),
    )
