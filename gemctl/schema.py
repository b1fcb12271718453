"""Typed configs from plain dicts: dataclass fields are the schema.

A recipe is YAML; the program wants typed dataclasses. `from_dict` walks a dataclass's fields and converts a dict
into it, refusing unknown keys (with the closest valid key suggested), wrong types and out-of-range values with a
message that names the dotted key, the value and what is allowed. Ranges come from field metadata
(`field(metadata={"min": 0, "max": 1})`), choices from `typing.Literal`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from gem_stages.errors import InputError


class ConfigError(InputError):
    """A recipe value or key that does not fit the schema."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def suggest(key: str, valid: list[str], what: str = "valid keys") -> str:
    """'did you mean ...' text for a mistyped key, or the list of valid names when nothing is close."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"{what}: " + ", ".join(sorted(valid))


def _convert(value: Any, tp: Any, key: str, meta: dict) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, meta)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}={value!r} is not {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not {_type_name(tp)}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_convert(v, item_tp, f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not a mapping")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", meta) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a boolean (true/false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not an integer")
        return _check_range(value, key, meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number")
        return _check_range(float(value), key, meta)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is not a string")
        return value
    raise TypeError(f"schema type {tp!r} of {key} is not supported")


def _check_range(value: float, key: str, meta: dict) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}={value!r} is out of range: must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}={value!r} is out of range: must be <= {hi}")
    step = meta.get("multiple_of")
    if step and value % step:
        raise ConfigError(f"{key}={value!r} is not a multiple of {step}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, validating every key; missing keys take the field defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}{key}': {suggest(key, list(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) \
                    and f.default_factory is not dataclasses.MISSING:
                # A partial section overrides its field's own default (stage3's defaults differ from stage1's),
                # not the section class's bare defaults.
                value = deep_merge(dataclasses.asdict(f.default_factory()), value)
            kwargs[name] = _convert(value, hints[name], prefix + name, dict(f.metadata))
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without a default was not given
        missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"missing key '{prefix}{missing[0] if missing else '?'}' ({e})") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    return obj


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
    """Every valid dotted key of a dataclass schema (for suggestions on overrides)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        tp = hints[f.name]
        inner = [a for a in (get_args(tp) or ()) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, key + ".")
        elif inner:
            keys += dotted_keys(inner[0], key + ".")
    return keys
