import dataclasses
import types
import typing

import pytest
from pydantic import TypeAdapter, ValidationError

from gem_models.config import BackboneConfig, DepthGeneratorConfig, GemModelConfig, tiny_config

ALLOWED = {int, float, str, bool, list[int], list[str]}


def _check_types(cls, path=""):
    hints = typing.get_type_hints(cls)
    described = TypeAdapter(cls).json_schema()["properties"]
    for f in dataclasses.fields(cls):
        assert len(described[f.name].get("description", "")) > 5, f"{path}{f.name} has no description"
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            _check_types(t, f"{path}{f.name}.")
            continue
        if typing.get_origin(t) in (typing.Union, types.UnionType):  # X | None
            args = [a for a in typing.get_args(t) if a is not type(None)]
            assert len(args) == 1, f"{path}{f.name}"
            t = args[0]
        if typing.get_origin(t) is typing.Literal:
            assert all(isinstance(a, str) for a in typing.get_args(t))
            continue
        assert t in ALLOWED, f"{path}{f.name} has type {t}"


def test_config_uses_only_recipe_types_and_describes_every_field():
    _check_types(GemModelConfig)


@pytest.mark.parametrize("cls, changes, error", [
    (BackboneConfig, {"hidden_size": 4}, "greater_than_equal"),
    (BackboneConfig, {"hidden_size": "64"}, "int_type"),
    (BackboneConfig, {"hidden_size": True}, "int_type"),
    (BackboneConfig, {"pretrained": 3}, "string_type"),
    (BackboneConfig, {"family": "qwen4"}, "literal_error"),
    (BackboneConfig, {"pretrained": None, "num_heads": 3}, "value_error"),  # 64 % 3
    (DepthGeneratorConfig, {"cfg_dropout": float("nan")}, "finite_number"),
    (DepthGeneratorConfig, {"cfg_dropout": 2}, "less_than_equal"),
    (DepthGeneratorConfig, {"image_long_side": 100}, "value_error"),  # not a multiple of 32
    (DepthGeneratorConfig, {"vae_block_out_channels": []}, "too_short"),
])
def test_building_a_bad_config_is_refused(cls, changes, error):
    with pytest.raises(ValidationError) as e:
        cls(**changes)
    assert e.value.errors()[0]["type"] == error


def test_float_fields_take_ints_and_replace_revalidates():
    d = DepthGeneratorConfig(guidance_scale=7)
    assert d.guidance_scale == 7.0
    with pytest.raises(ValidationError):
        dataclasses.replace(d, sample_steps=0)


def test_paper_scale_defaults():
    c = GemModelConfig()
    assert c.backbone.family == "qwen3_vl" and c.backbone.pretrained == "Qwen/Qwen3-VL-2B-Instruct"
    assert c.connector.width == 2304 and c.connector.norm_eps == 1e-5
    assert c.depth.space == "latent" and c.depth.image_long_side == 448 and c.depth.multiple_of == 32
    assert (c.depth.cfg_dropout, c.depth.sample_steps, c.depth.guidance_scale) == (0.1, 30, 5.0)
    a = c.action
    assert (a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.num_registers, a.chunk_size) == (
        1024,
        14,
        8,
        4,
        4,
        32,
    )
    assert a.inference_steps == 5


def test_tiny_config_is_fully_random_init():
    c = tiny_config()
    assert c.backbone.pretrained is None
    assert c.depth.pretrained_transformer is None and c.depth.pretrained_vae is None
    assert c.connector.width == 64
