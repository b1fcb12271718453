"""The released GEM-2B checkpoint layout, and its map onto gemctl's parts.

The release (zhaorw02/GEM, GEM-VLM/qwen-vl-finetune/qwen3_vl/gem.py) is `GEMForConditionalGeneration`, a
`Qwen3VLForConditionalGeneration` with three more attributes. Its `save_pretrained` (train_qwen.py, through the HF
Trainer) writes ONE state dict whose key prefixes are those attribute names, as `model.safetensors` or as
`model-0000k-of-0000n.safetensors` shards listed by `model.safetensors.index.json`:

    release key                                  gemctl key (GemModel.state_dict())
    model.visual.* / model.language_model.*      backbone.model.visual.* / backbone.model.language_model.*
    lm_head.weight (absent when tied: GEM-2B)    backbone.lm_head.weight
    sana.*         (diffusers SanaTransformer2DModel: the release's copy has the same modules and names)
                                                 depth_generator.transformer.*
    vae.*          (diffusers AutoencoderDC, frozen)
                                                 depth_generator.vae.*
    diffusion_connector.0.{weight,bias}          connector.fc1.*   (nn.Sequential: Linear, GELU(tanh), Linear,
    diffusion_connector.2.{weight,bias}          connector.fc2.*    RMSNorm(2304, eps 1e-5, affine))
    diffusion_connector.3.weight                 connector.norm.weight

Configs beside the weights: `config.json` (the Qwen3VLConfig) and the processor the script saves with them
(tokenizer files, preprocessor_config.json). The release builds SANA and DC-AE in `__init__` from
Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers' configs (gemctl has them as presets); a checkpoint of another
size carries them beside as `sana/config.json` and `vae/config.json` (diffusers' config format).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import Tensor

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# release attribute prefix -> gemctl prefix
PREFIXES = {
    "model.": "backbone.model.",
    "lm_head.": "backbone.lm_head.",
    "sana.": "depth_generator.transformer.",
    "vae.": "depth_generator.vae.",
    "diffusion_connector.": "connector.",
}
# nn.Sequential index in the release's connector -> gemctl's Connector attribute
CONNECTOR_LAYERS = {"0": "fc1", "2": "fc2", "3": "norm"}
PARTS = {"backbone": ("model.", "lm_head."), "transformer": ("sana.",), "vae": ("vae.",),
         "connector": ("diffusion_connector.",)}


class ReleaseLayoutError(ValueError):
    """The folder is not a checkpoint in the released GEM-2B layout (one line: what is wrong, what to give)."""


def to_gemctl_key(key: str) -> str:
    for old, new in PREFIXES.items():
        if key.startswith(old):
            rest = key[len(old):]
            if old == "diffusion_connector.":
                index, _, name = rest.partition(".")
                if index not in CONNECTOR_LAYERS:
                    raise ReleaseLayoutError(f"unknown connector tensor {key!r}: the release's connector has layers "
                                             f"{', '.join(sorted(CONNECTOR_LAYERS))}")
                rest = f"{CONNECTOR_LAYERS[index]}.{name}"
            return new + rest
    raise ReleaseLayoutError(f"tensor {key!r} belongs to no part of the released model "
                             f"(prefixes: {', '.join(PREFIXES)})")


def to_release_key(key: str) -> str:
    """The inverse of to_gemctl_key (for exporting, and for tests that write the release's layout)."""
    for old, new in PREFIXES.items():
        if key.startswith(new):
            rest = key[len(new):]
            if old == "diffusion_connector.":
                layer, _, name = rest.partition(".")
                rest = {v: k for k, v in CONNECTOR_LAYERS.items()}[layer] + "." + name
            return old + rest
    raise ValueError(f"{key!r} has no place in the released layout (the action expert is gemctl's own)")


def weight_files(path: str) -> list[str]:
    """The safetensors files of a release folder, checked to exist: the index's shards, or the single file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise ReleaseLayoutError(f"{index} is not a safetensors index (no weight_map)") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ReleaseLayoutError(f"{path} lacks {len(missing)} of the {len(files)} shards its index lists "
                                     f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): copy them "
                                     "all, then import again")
        return [os.path.join(path, f) for f in files]
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    raise ReleaseLayoutError(f"{path} has no {SINGLE_FILE} or {INDEX_FILE}: give the folder the release's "
                             "save_pretrained wrote (config.json beside the safetensors weights)")


def read_keys(files: list[str]) -> dict[str, str]:
    """Every tensor name of the release -> its file, checked against the index when there is one."""
    where: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                where.update((key, file) for key in f.keys())
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise ReleaseLayoutError(f"{file} is not a readable safetensors file ({e})") from None
    index = os.path.join(os.path.dirname(files[0]), INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            listed = json.load(f)["weight_map"]
        absent = sorted(k for k, file in listed.items() if where.get(k) != os.path.join(os.path.dirname(index), file))
        if absent:
            raise ReleaseLayoutError(f"{len(absent)} tensor(s) the index lists are not in their shard (first: "
                                     f"{absent[0]}): the shards are from another save")
    return where


def read_tensors(where: dict[str, str], keys: list[str]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for file in sorted({where[k] for k in keys}):
        with safe_open(file, framework="pt") as f:
            out.update((k, f.get_tensor(k)) for k in keys if where[k] == file)
    return out


def group_keys(keys) -> dict[str, list[str]]:
    """{backbone, transformer, vae, connector} -> the release keys of that part. A folder without the depth
    expert's prefixes is another layout (a plain Qwen3-VL checkpoint, say)."""
    parts: dict[str, list[str]] = {name: [] for name in PARTS}
    for key in keys:
        part = next((p for p, prefixes in PARTS.items() if key.startswith(prefixes)), None)
        if part is None:
            raise ReleaseLayoutError(f"tensor {key!r} belongs to no part of the released model (prefixes: "
                                     f"{', '.join(PREFIXES)}): not a GEM-2B release checkpoint")
        parts[part].append(key)
    empty = [p for p in ("transformer", "vae", "connector") if not parts[p]]
    if empty:
        prefixes = ", ".join(PARTS[p][0] for p in empty)
        what = "a plain Qwen3-VL checkpoint" if len(empty) == 3 and parts["backbone"] else "not a GEM-2B release"
        raise ReleaseLayoutError(f"{what}: no {prefixes} tensors (the SANA transformer, DC-AE and connector "
                                 "GEM adds); give the GEM-2B release folder")
    return parts


def load_into(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Load `state` into `module` (built on the meta device or not) exactly: every tensor lands, none is left
    over, shapes agree; else one line naming the first difference."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ReleaseLayoutError(f"the {what} tensors do not match its architecture ({len(missing)} missing, "
                                 f"{len(extra)} unexpected; {first}): its config is not the one it was trained with")
    for key, tensor in state.items():
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ReleaseLayoutError(f"the {what} tensor {key!r} has shape {tuple(tensor.shape)}, its config says "
                                     f"{tuple(own[key].shape)}")
    module.load_state_dict(state, strict=True, assign=True)


@dataclass(frozen=True)
class ReleaseConfigs:
    """The configs a release folder describes its parts with (dicts as their libraries read them)."""

    backbone: dict  # config.json
    transformer: dict  # SANA: sana/config.json, else the SANA 1.5 1.6B preset
    vae: dict  # DC-AE: vae/config.json, else the preset
    transformer_ref: str | None  # the preset's reference when the preset was used
    vae_ref: str | None


def read_configs(path: str) -> ReleaseConfigs:
    from .presets import DEPTH_TRANSFORMERS, SANA_1_5_1_6B, VAES

    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ReleaseLayoutError(f"{path} has no config.json: give the folder the release's save_pretrained wrote")
    try:
        with open(config_file) as f:
            backbone = json.load(f)
    except ValueError:
        raise ReleaseLayoutError(f"{config_file} is not JSON") from None
    if backbone.get("model_type") != "qwen3_vl":
        raise ReleaseLayoutError(f"{config_file} describes a {backbone.get('model_type')!r} model; the GEM-2B "
                                 "release is a qwen3_vl one")

    def beside(name: str, table: dict, ref: str) -> tuple[dict, str | None]:
        file = os.path.join(path, name, "config.json")
        if not os.path.isfile(file):
            return dict(table[ref]), ref
        with open(file) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}, None

    transformer, t_ref = beside("sana", DEPTH_TRANSFORMERS, f"{SANA_1_5_1_6B}::transformer")
    vae, v_ref = beside("vae", VAES, f"{SANA_1_5_1_6B}::vae")
    return ReleaseConfigs(backbone, transformer, vae, t_ref, v_ref)


def _depth_config(configs: ReleaseConfigs):
    from .config import DepthGeneratorConfig

    t, v = configs.transformer, configs.vae
    tiny_dit = {} if configs.transformer_ref else dict(
        num_layers=t["num_layers"], num_heads=t["num_attention_heads"], head_dim=t["attention_head_dim"],
        cross_heads=t["num_cross_attention_heads"], cross_head_dim=t["cross_attention_head_dim"],
        patch_size=t["patch_size"], mlp_ratio=float(t["mlp_ratio"]))
    tiny_vae = {} if configs.vae_ref else dict(
        vae_latent_channels=v["latent_channels"], vae_block_out_channels=list(v["encoder_block_out_channels"]))
    return DepthGeneratorConfig(space="latent", pretrained_transformer=configs.transformer_ref,
                                pretrained_vae=configs.vae_ref, **tiny_dit, **tiny_vae)


def _backbone_config(backbone, image_processor):
    """gemctl's description of the imported backbone: the preset's reference when its shapes are a preset's,
    else the sizes themselves (as a tiny random-init one would be described)."""
    from .config import BackboneConfig
    from .presets import BACKBONES, check_backbone_config

    c = backbone.config
    size = image_processor.size or {}
    default = BackboneConfig()
    pixels = dict(min_pixels=size.get("shortest_edge", default.min_pixels),
                  max_pixels=size.get("longest_edge", default.max_pixels))
    ref = next((r for r in BACKBONES if check_backbone_config(r, c) is None), None)
    if ref is not None:
        return BackboneConfig(family="qwen3_vl", pretrained=ref, **pixels)
    t, v = c.text_config, c.vision_config
    return BackboneConfig(
        family="qwen3_vl", pretrained=None, hidden_size=t.hidden_size, num_layers=t.num_hidden_layers,
        num_heads=t.num_attention_heads, num_kv_heads=t.num_key_value_heads, intermediate_size=t.intermediate_size,
        vision_depth=v.depth, vision_hidden_size=v.hidden_size, vision_heads=v.num_heads, patch_size=v.patch_size,
        spatial_merge_size=v.spatial_merge_size, vocab_size=t.vocab_size, **pixels)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_release(path: str):
    """The GemModel a release folder holds (no action expert: the release is a VLM), and an account of the
    conversion: {"tensors": {release key: gemctl key}, "tied": [gemctl keys that are another tensor],
    "parameters": int}. Raises ReleaseLayoutError (one line) for a folder in another layout."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration

    from .config import ConnectorConfig, GemModelConfig
    from .connector import Connector
    from .depth_generator import DepthGenerator
    from .gem import GemModel
    from .processor import GemProcessor
    from .tokenizer import load_tokenizer

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ReleaseLayoutError(f"{path} is not a folder: give the GEM-2B release folder (config.json and "
                                 "safetensors weights)")
    configs = read_configs(path)
    where = read_keys(weight_files(path))
    parts = group_keys(where)

    try:
        with _quiet_transformers():  # its table of "unexpected" keys is the depth expert, taken below
            backbone, info = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype="auto",
                                                                             output_loading_info=True)
    except Exception as e:  # shapes that disagree with config.json, unreadable files
        raise ReleaseLayoutError(f"the backbone in {path} does not load: {str(e).splitlines()[0]}") from None
    # what the backbone did not take must be exactly the depth expert's tensors, and it must lack nothing
    expert = set(where) - set(parts["backbone"])
    if info["missing_keys"]:
        first = sorted(info["missing_keys"])[0]
        raise ReleaseLayoutError(f"the backbone lacks {len(info['missing_keys'])} tensor(s) its config.json "
                                 f"needs (first: {first!r}): not a complete checkpoint")
    if set(info["unexpected_keys"]) != expert:
        odd = sorted(set(info["unexpected_keys"]) - expert) or sorted(expert - set(info["unexpected_keys"]))
        raise ReleaseLayoutError(f"tensor {odd[0]!r} did not land where the release puts it")

    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**configs.transformer)
        vae = AutoencoderDC(**configs.vae)
    state = read_tensors(where, sorted(expert))
    load_into(transformer, {k[len("sana."):]: state[k] for k in parts["transformer"]}, "SANA transformer (sana.)")
    load_into(vae, {k[len("vae."):]: state[k] for k in parts["vae"]}, "DC-AE (vae.)")
    conn = {to_gemctl_key(k)[len("connector."):]: state[k] for k in parts["connector"]}
    if "fc1.weight" not in conn or conn["fc1.weight"].ndim != 2:
        raise ReleaseLayoutError("the connector (diffusion_connector.) has no first Linear layer")
    width, hidden = conn["fc1.weight"].shape
    if hidden != backbone.config.text_config.hidden_size:
        raise ReleaseLayoutError(f"the connector reads width {hidden}, the backbone's is "
                                 f"{backbone.config.text_config.hidden_size}")
    with torch.device("meta"):
        connector = Connector(hidden, ConnectorConfig(width=width, norm_eps=1e-5))
    load_into(connector, conn, "connector (diffusion_connector.)")

    try:
        tokenizer = load_tokenizer(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ReleaseLayoutError(f"{path} lacks the processor saved beside the weights (tokenizer files, "
                                 f"preprocessor_config.json): {str(e).splitlines()[0]}") from None
    cfg = GemModelConfig(backbone=_backbone_config(backbone, image_processor),
                         connector=ConnectorConfig(width=width, norm_eps=1e-5), depth=_depth_config(configs))
    if transformer.config.caption_channels != width:
        raise ReleaseLayoutError(f"the SANA transformer reads captions of width {transformer.config.caption_channels}"
                                 f", the connector writes {width}")
    processor = GemProcessor(tokenizer, image_processor, cfg.backbone.max_length, cfg.depth.image_long_side,
                             cfg.depth.multiple_of)
    try:
        model = GemModel(cfg, backbone, processor, connector, DepthGenerator(cfg.depth, transformer, vae), None)
    except ValueError as e:  # tokenizer and config disagree on the vision tokens, sizes that do not fit
        raise ReleaseLayoutError(str(e)) from None
    names = {k: to_gemctl_key(k) for k in where}
    own = model.state_dict()
    tied = sorted(set(own) - set(names.values()))
    untied = [k for k in tied if k != "backbone.lm_head.weight" or not backbone.config.tie_word_embeddings]
    if untied:
        raise ReleaseLayoutError(f"{len(untied)} tensor(s) of the model came from no release tensor (first: "
                                 f"{untied[0]!r})")
    return model, {"tensors": names, "tied": tied, "parameters": sum(p.numel() for p in model.parameters())}
