"""A stage that starts from an imported model (`init: imported:NAME`): its weights, the recipe's settings.

The imported checkpoint's own configuration describes the release (its processor limits, flow settings); the
stage trains with the recipe's. What the weights fix (the backbone's shapes, the connector, latent or pixel space)
must agree with the recipe's model section, else one line names the key and the imported value. Settings that are
not weights (image limits, max_length, depth size and flow settings, the action expert) come from the recipe, so
the stage's own checkpoint is saved with the recipe's model section and later stages continue it as usual.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gem_models.config import GemModelConfig
from gem_models.depth_generator import DepthGenerator
from gem_models.gem import GemModel, build_action_expert
from gem_models.presets import check_backbone_config

from .errors import InputError


def weight_differences(imported: GemModel, cfg: GemModelConfig) -> dict[str, tuple]:
    """recipe key -> (imported value, recipe value) for each setting the imported weights fix."""
    saved, c = imported.cfg, imported.backbone.config
    diff = {}
    for key, a, b in (("backbone.family", saved.backbone.family, cfg.backbone.family),
                      ("connector.width", saved.connector.width, cfg.connector.width),
                      ("connector.norm_eps", saved.connector.norm_eps, cfg.connector.norm_eps),
                      ("depth.space", saved.depth.space, cfg.depth.space)):
        if a != b:
            diff[key] = (a, b)
    if cfg.backbone.pretrained is None:  # the recipe describes a tiny backbone by its sizes: they must be these
        t, v = c.text_config, c.vision_config
        sizes = {"hidden_size": t.hidden_size, "num_layers": t.num_hidden_layers, "num_heads": t.num_attention_heads,
                 "num_kv_heads": t.num_key_value_heads, "intermediate_size": t.intermediate_size,
                 "vocab_size": t.vocab_size, "vision_depth": v.depth, "vision_hidden_size": v.hidden_size,
                 "vision_heads": v.num_heads, "patch_size": v.patch_size}
        diff.update({f"backbone.{k}": (a, getattr(cfg.backbone, k)) for k, a in sizes.items()
                     if a != getattr(cfg.backbone, k)})
    elif check_backbone_config(cfg.backbone.pretrained, c):  # a preset reference: the shapes must be the preset's
        diff["backbone.pretrained"] = (saved.backbone.pretrained, cfg.backbone.pretrained)
    return diff


def adopt_imported(stage: str, init: str, init_dir: Path, cfg: GemModelConfig, seed: int) -> GemModel:
    """The imported model in `init_dir` with the recipe's settings `cfg` (and a fresh seeded action expert when
    `cfg` asks for one: the release is a VLM)."""
    model = GemModel.load(str(init_dir))
    diff = weight_differences(model, cfg)
    if diff:
        key, (have, want) = next(iter(diff.items()))
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise InputError(f"{stage} starts from {init}, whose model.{key} is {have!r} but the recipe says {want!r}"
                         f"{more}: describe the imported model in the recipe's model section (-o model.{key}={have})")
    model.cfg = cfg
    p = model.processor
    p.max_length, p.depth_long_side, p.depth_multiple_of = (cfg.backbone.max_length, cfg.depth.image_long_side,
                                                           cfg.depth.multiple_of)
    p.image_processor.size = {"shortest_edge": cfg.backbone.min_pixels, "longest_edge": cfg.backbone.max_pixels}
    old = model.depth_generator
    try:
        model.depth_generator = DepthGenerator(cfg.depth, old.transformer, old.vae)  # the recipe's flow settings
    except ValueError as e:
        raise InputError(f"{stage} starts from {init}: {e}") from None
    hidden = model.backbone.config.text_config.hidden_size
    n_states = model.backbone.config.text_config.num_hidden_layers + 1
    with torch.random.fork_rng(devices=[]):  # seeded as GemModel.build/load seed a fresh expert
        torch.manual_seed(seed + 3)
        model.action_expert = build_action_expert(cfg.action, hidden, n_states)
    return model
