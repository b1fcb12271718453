import dataclasses
import types
import typing

from gem_models.config import GemModelConfig, tiny_config

ALLOWED = {int, float, str, bool, list[int], list[str]}


def _check_types(cls, path=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
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
        for key in ("min", "max"):
            if key in f.metadata:
                assert isinstance(f.metadata[key], (int, float)), f"{path}{f.name}"


def test_config_uses_only_recipe_types():
    _check_types(GemModelConfig)


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
