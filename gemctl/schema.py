"""Recipe settings <-> plain dicts, on top of pydantic: validate a dict into a settings class, merge, flatten, and
write the JSON Schema editors use.

The settings classes (Recipe and its sections) are pydantic dataclasses: ranges, choices and descriptions are
declared on their fields and cross-field rules in their validators, so this module holds no rule of its own. It
turns pydantic's report into the project's one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gem_stages.config import explain, suggest
from gem_stages.errors import InputError

__all__ = ["ConfigError", "deep_merge", "dotted_keys", "flatten", "from_dict", "json_schema", "suggest", "to_dict"]


class ConfigError(InputError):
    """A recipe value or key that does not fit the schema."""


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def from_dict(cls: type, data: Any) -> Any:
    """Settings class `cls` from a plain dict. A partial section keeps its field's own defaults (stage3's defaults
    differ from stage1's), so the given keys are merged onto `cls()` before validating."""
    if not isinstance(data, dict):
        raise ConfigError(f"the settings must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return _adapter(cls).validate_python(deep_merge(to_dict(cls()), data))
    except ValidationError as e:
        raise ConfigError(explain(e, cls)) from None


def deep_merge(base: dict, over: dict) -> dict:
    """`over` wins; nested mappings merge key by key; lists are replaced whole."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list of a dataclass tree (lists stay lists, for YAML)."""
    return dataclasses.asdict(obj)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a settings class (for suggestions on overrides)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Resources | None: the keys of Resources
            tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, key + ".")
    return keys


def json_schema(cls: type) -> dict[str, Any]:
    """JSON Schema of settings class `cls`, with the field descriptions (for editors and `gemctl recipe schema`)."""
    return _adapter(cls).json_schema()
