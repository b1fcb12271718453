"""Recipes: YAML files in recipes/ that compose (`extends:`), take dotted overrides, and resolve to typed, hashed configs.

    recipes/tiny.yaml ──extends──► recipes/base.yaml
          │ + overrides (-o stages.stage3.lr=3e-5)
          ▼
    Recipe (pydantic dataclasses, validated) ──► content hash, flat params, runs/<name>/params.json

Every setting has a default, so an empty recipe file is a valid one: the defaults are the paper's GEM-2B (Qwen3-VL-2B
and SANA from the Hugging Face hub) on the built-in gem-synth data. Whether those weights can be had here (cached,
or the hub reachable) is not the schema's business: gemctl.preflight checks it before anything runs.

The resolved recipe written to runs/<name>/params.json is what the stage programs read: it is the single source of
truth of a run, and DVC tracks its sections as params so that a changed stage setting re-runs only that stage and
the stages downstream of it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import model_validator
from pydantic_core import ArgsKwargs

from gem_models.config import GemModelConfig, Int, Str, setting
from gem_stages.config import RuntimeConfig, StagesConfig, settings
from gem_stages.data.config import DataConfig
from gem_stages.errors import InputError
from gem_stages.eval.config import EvalEntry, check_unique
from gem_stages.files import atomic_write_text

from .launch.resources import Resources, StageResources, merge_stage_resources
from .schema import ConfigError, deep_merge, dotted_keys, flatten, from_dict, json_schema, suggest, to_dict


@settings
class Recipe:
    name: Str = setting("unnamed", "Recipe name: the file name in recipes/ (outputs go to runs/<name>/).")
    description: Str = setting("", "One line on what this recipe is for.")
    seed: Int = setting(
        0, "Seed of every random draw (model init, data order, noise): same recipe + seed = same weights.",
        ge=0, le=2**32 - 1)
    model: GemModelConfig = setting(GemModelConfig, "The GEM model: backbone, connector, depth generator, action expert.")
    data: DataConfig = setting(DataConfig, "Training data: built-in gem-synth or your own annotation files.")
    runtime: RuntimeConfig = setting(RuntimeConfig, "Device, precision and distributed strategy shared by all stages.")
    stages: StagesConfig = setting(StagesConfig, "The four training stages.")
    resources: Resources = setting(Resources, "Cluster resources for `--executor slurm`.")
    stage_resources: StageResources = setting(
        StageResources, "A training stage's own resources, merged over `resources:` (e.g. stage4: {nodes: 1}).")
    eval: list[EvalEntry] = setting(
        list, "Benchmarks that score this recipe's checkpoints (`gemctl eval all`, and `gemctl run` after stage 4).")

    @model_validator(mode="before")
    @classmethod
    def _complete_stage_resources(cls, data: Any) -> Any:
        if isinstance(data, ArgsKwargs):
            return ArgsKwargs(data.args, merge_stage_resources(data.kwargs or {}))
        return merge_stage_resources(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _one_entry_per_benchmark(self):
        check_unique(self.eval)
        return self

    def resources_for(self, stage: str) -> Resources:
        """What `stage` asks the cluster for: its stage_resources entry, else the recipe's resources."""
        return getattr(self.stage_resources, stage, None) or self.resources

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def content_hash(self) -> str:
        """sha256 (first 12 hex) of the resolved settings; the description (and an empty eval list) does not count."""
        d = self.to_dict()
        d.pop("description", None)
        if not d.get("eval"):  # recipes from before the eval list keep their hash
            d.pop("eval", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat_params(self) -> dict[str, Any]:
        return flatten(self.to_dict())


def schema() -> dict[str, Any]:
    """JSON Schema of a recipe file: the Recipe settings plus the top-level `extends:`."""
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **json_schema(Recipe)}
    out["title"] = "gemctl recipe"
    out["properties"] = {"extends": {"type": "string", "description": "Recipe this one starts from (a file name "
                                     "in recipes/, without .yaml); its settings are merged under these."},
                         **out["properties"]}
    return out


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when PyYAML was built with it
    """YAML as users write recipes: 3e-5 is a number (YAML 1.1 wants 3.0e-5), as in YAML 1.2 and JSON."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str, show_line: bool = True) -> Any:
    """Parse YAML; a failure is a ValueError whose text completes "recipe file x.yaml ..." or "the value ..."."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.constructor.ConstructorError as e:  # a tag safe loading refuses: !!python/object, !!python/name...
        mark = getattr(e, "problem_mark", None) if show_line else None
        found = re.search(r"'([^']+)'", str(getattr(e, "problem", "") or ""))
        tag = found.group(1).replace("tag:yaml.org,2002:", "!!") if found else "a tag"
        raise ValueError(f"uses the YAML tag {tag}{f' (line {mark.line + 1})' if mark else ''}: recipes hold plain "
                         "data only (no Python objects); remove the tag") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) if show_line else None
        raise ValueError(f"is not valid YAML{f' (line {mark.line + 1})' if mark else ''}: fix the syntax") from None
    except RecursionError:
        raise ValueError("nests too deep to read: flatten it") from None
    except ValueError:  # int() of a literal longer than Python's 4300-digit limit
        raise ValueError("holds a number with more than 4300 digits: shorten it") from None


def available(recipes_dir: Path) -> list[str]:
    return sorted(p.stem for p in recipes_dir.glob("*.yaml") if p.is_file())


def _read_yaml(path: Path) -> dict:
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"recipe file {path.name} is not UTF-8 text: save it as UTF-8") from None
    except ValueError as e:
        raise InputError(f"recipe file {path.name} {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"recipe file {path.name} must be a mapping of settings, got {type(data).__name__}")
    return data


def load_raw(recipes_dir: Path, name: str) -> dict:
    """The recipe's settings with its `extends:` chain merged in (parents first)."""
    names = available(recipes_dir)
    chain: list[str] = []
    layers: list[dict] = []
    while True:
        if name not in names:
            shown = name if name.isprintable() else repr(name)[1:-1]
            if chain:
                raise InputError(f"recipe '{chain[-1]}' extends unknown recipe '{shown}': "
                                 f"{suggest(name, names, 'recipes')}")
            raise InputError(f"unknown recipe '{shown}': {suggest(name, names, 'available recipes')} (recipes/*.yaml)")
        if name in chain:
            raise InputError(f"recipe '{name}' extends itself through {' -> '.join((*chain, name))}: break the cycle")
        chain.append(name)
        data = _read_yaml(recipes_dir / f"{name}.yaml")
        parent = data.pop("extends", None)
        layers.append(data)
        if parent is None:
            break
        if not isinstance(parent, str):
            raise InputError(f"recipe '{name}': extends must be a recipe name, got {reprlib.repr(parent)}")
        name = parent
    merged: dict = {}
    for layer in reversed(layers):
        merged = deep_merge(merged, layer)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """'stages.stage3.lr=3e-5' -> (['stages','stage3','lr'], 3e-5). Values are YAML scalars or flow lists."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise InputError(f"bad override {_quoted(text)}: write it as key.path=value, e.g. -o stages.stage3.lr=3e-5")
    try:
        parsed = _load_yaml(value, show_line=False) if value.strip() else ""
    except ValueError as e:
        raise InputError(f"bad override {_quoted(text)}: the value {e}") from None
    return key.split("."), parsed


def _quoted(text: str) -> str:
    return f"'{text}'" if text.isprintable() else repr(text)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    valid = dotted_keys(Recipe)
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(path)
        if dotted not in valid and not _under_mapping(dotted, valid):
            shown = dotted if dotted.isprintable() else repr(dotted)[1:-1]
            raise InputError(f"unknown key '{shown}' in override {_quoted(text)}: {_suggest_key(path, valid)}")
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def _suggest_key(path: list[str], valid: list[str]) -> str:
    """'did you mean' among the keys as deep as `path` below its longest valid part, or else that part's keys."""
    known = next((".".join(path[:i]) for i in range(len(path) - 1, 0, -1) if ".".join(path[:i]) in valid), "")
    under = [k for k in valid if k.startswith(f"{known}.") or not known]
    rest = {k[len(known) + 1 if known else 0:]: k for k in under if k.count(".") == len(path) - 1}
    close = difflib.get_close_matches(".".join(path)[len(known) + 1 if known else 0:], list(rest), n=1)
    if close:
        return f"did you mean '{rest[close[0]]}'?"
    depth = known.count(".") + 1 if known else 0
    names = [k.rsplit(".", 1)[-1] for k in under if k.count(".") == depth]
    if known and not names:
        return f"{known} is a single setting with no keys below it: write {known}=VALUE"
    return f"valid keys{' under ' + known if known else ''}: {', '.join(names)}"


def _under_mapping(dotted: str, valid: list[str]) -> bool:
    # Free-form mappings (e.g. resources.extra_sbatch.<flag>) accept any sub-key.
    return any(dotted.startswith(v + ".") and v.endswith("extra_sbatch") for v in valid)


def resolve(recipes_dir: Path, name: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, compose, override and validate a recipe into a typed `Recipe`."""
    data = load_raw(recipes_dir, name)
    data = apply_overrides(data, list(overrides))
    data["name"] = name
    try:
        return from_dict(Recipe, data)
    except ConfigError as e:
        raise ConfigError(f"recipe '{name}': {e}") from None


def from_params(path: Path) -> Recipe:
    """The resolved recipe a stage runs with (runs/<name>/params.json, written by `pipeline.render`)."""
    if not path.is_file():
        raise InputError(f"no resolved recipe at {path}: run the stage through `gemctl train` (it renders it)")
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"resolved recipe {path} is not valid JSON: run `gemctl train` to render it again") from None
    try:
        return from_dict(Recipe, data)
    except ConfigError as e:
        raise ConfigError(f"resolved recipe {path}: {e}") from None


def write_params(path: Path, recipe: Recipe) -> None:
    """Write the resolved recipe a stage runs with (read back by `from_params`); untouched when unchanged, so
    its mtime and content stay put for DVC and for jobs already reading it."""
    text = json.dumps(recipe.to_dict(), indent=1) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
