"""DataConfig: tiny defaults, recipe-friendly field types, and the checks prepare_dataset runs first."""

import inspect
import typing
from dataclasses import fields

import pytest

from gem_stages.data import config as config_module
from gem_stages.data.config import AnnotationSet, DataConfig, check_config
from gem_stages.errors import InputError


def test_defaults_are_tiny_and_valid():
    cfg = DataConfig()
    check_config(cfg)
    assert (cfg.source, cfg.seed) == ("synth", 0)
    assert (cfg.num_scenes, cfg.questions_per_scene, cfg.image_height, cfg.image_width) == (50, 4, 64, 64)
    assert (cfg.num_episodes, cfg.episode_max_steps, cfg.cameras) == (8, 40, ["front", "top"])
    assert (cfg.objects_min, cfg.objects_max) == (3, 5)
    assert cfg.files == [] and cfg.episodes_dir == "" and cfg.check_images == "header"


def _allowed(tp) -> bool:
    origin = typing.get_origin(tp)
    if tp in (int, float, str, bool) or origin is typing.Literal:
        return True
    if origin is list:
        return all(_allowed(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return all(a is type(None) or _allowed(a) for a in typing.get_args(tp))
    return hasattr(tp, "__dataclass_fields__") and all(_allowed(f.type) for f in fields(tp))


@pytest.mark.parametrize("cls", [DataConfig, AnnotationSet])
def test_field_types_are_recipe_types_and_every_field_is_commented(cls):
    hints = typing.get_type_hints(cls)
    source = inspect.getsource(cls).splitlines()
    for f in fields(cls):
        assert _allowed(hints[f.name]), f.name
        line = next(line for line in source if line.strip().startswith(f"{f.name}:"))
        assert "  # " in line, f"field {f.name} has no comment"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_height": 48}, "data.image_height is 48, not a multiple of 32"),
        ({"image_width": 2048}, "data.image_width is 2048, outside [32, 1024]"),
        ({"two_view_fraction": 1.5}, "data.two_view_fraction is 1.5, outside [0.0, 1.0]"),
        ({"objects_min": 6, "objects_max": 4}, "data.objects_min (6) is larger than data.objects_max (4)"),
        ({"cameras": ["front", "wrist"]}, "data.cameras has unknown camera 'wrist'"),
        ({"cameras": []}, "data.cameras is empty"),
        ({"cameras": ["top", "top"]}, "lists a camera twice"),
        ({"num_scenes": 0, "num_episodes": 0}, "both 0"),
        ({"source": "files"}, "data.files is empty and data.episodes_dir is unset"),
    ],
)
def test_check_config_rejects_bad_values_with_one_line(changes, message):
    with pytest.raises(InputError) as err:
        check_config(DataConfig(**changes))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and ": " in str(err.value)


def test_sizes_up_to_1024_in_steps_of_32_are_accepted():
    check_config(DataConfig(image_height=1024, image_width=32))
    assert config_module.CAMERA_NAMES == ("front", "top", "side")
