"""DataConfig: tiny defaults, recipe-friendly field types, and the rules checked whenever one is built."""

import types
import typing
from dataclasses import fields

import pytest
from pydantic import TypeAdapter

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
    assert cfg.files == [] and cfg.episodes_dir == "" and cfg.check_images == "stat"
    assert (cfg.on_error, cfg.max_skipped, AnnotationSet().weight) == ("stop", 0.01, 1.0)


def _allowed(tp) -> bool:
    origin = typing.get_origin(tp)
    if tp in (int, float, str, bool) or origin is typing.Literal:
        return True
    if origin is list:
        return all(_allowed(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _allowed(a) for a in typing.get_args(tp))
    return hasattr(tp, "__dataclass_fields__") and all(_allowed(t) for t in typing.get_type_hints(tp).values())


@pytest.mark.parametrize("cls", [DataConfig, AnnotationSet])
def test_field_types_are_recipe_types_and_every_field_is_described(cls):
    hints = typing.get_type_hints(cls)
    described = TypeAdapter(cls).json_schema()["properties"]
    for f in fields(cls):
        assert _allowed(hints[f.name]), f.name
        assert len(described[f.name].get("description", "")) > 10, f"field {f.name} has no description"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_height": 48}, "image_height=48 is not a multiple of 32"),
        ({"image_width": 2048}, "image_width=2048 is out of range: must be <= 1024"),
        ({"image_width": 0}, "image_width=0 is out of range: must be >= 32"),
        ({"two_view_fraction": 1.5}, "two_view_fraction=1.5 is out of range: must be <= 1.0"),
        ({"two_view_fraction": True}, "two_view_fraction=True is not a number"),
        ({"num_scenes": "3"}, "num_scenes='3' is not an integer"),
        ({"objects_min": 6, "objects_max": 4}, "objects_min (6) is larger than objects_max (4)"),
        ({"cameras": ["front", "wrist"]}, "cameras has unknown camera 'wrist'"),
        ({"cameras": []}, "cameras is empty"),
        ({"cameras": ["top", "top"]}, "lists a camera twice"),
        ({"num_scenes": 0, "num_episodes": 0}, "both 0"),
        ({"source": "files"}, "files is empty and episodes_dir is unset"),
        ({"files": [{"name": "a", "annotation": "x.jsonl"}]}, "unknown key 'files[0].annotation': did you mean "
                                                               "'annotations'?"),
    ],
)
def test_building_a_bad_config_raises_one_line(changes, message):
    with pytest.raises(InputError) as err:
        DataConfig(**changes)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)


def test_check_config_rechecks_an_object_changed_after_it_was_built():
    cfg = DataConfig()
    check_config(cfg)
    cfg.objects_min = 7
    with pytest.raises(InputError, match="objects_min \\(7\\) is larger than objects_max \\(5\\)"):
        check_config(cfg)


def test_sizes_up_to_1024_in_steps_of_32_are_accepted():
    assert (DataConfig(image_height=1024, image_width=32).image_height, DataConfig(image_width=96).image_width) \
        == (1024, 96)
    assert config_module.CAMERA_NAMES == ("front", "top", "side")
