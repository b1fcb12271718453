"""Benchmarks by name: the built-in ones, and any other described by a file `benchmarks/NAME.yaml` in the project.

A benchmarks/NAME.yaml is either a mapping of a JSON/JSONL benchmark's fields (mapping.MappingBenchmark), or names
a Benchmark subclass of the user's own with `class: module:Class` (module = benchmarks/module.py beside it).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import yaml

from gem_stages.errors import InputError

from .benchmark import Benchmark

# name -> "module:Class" of the built-in benchmarks (imported when used: each pulls in its own readers). The
# published ones live in gem_stages.eval.benchmarks; gem-synth's held-out ones in gem_stages.eval.gem_synth.
BUILTIN: dict[str, str] = {
    "vsi-bench": "gem_stages.eval.benchmarks.vsi_bench:VSIBench",
    "cv-bench": "gem_stages.eval.benchmarks.cv_bench:CVBench",
    "mmsi-bench": "gem_stages.eval.benchmarks.mmsi_bench:MMSIBench",
    "embspatial-bench": "gem_stages.eval.benchmarks.embspatial_bench:EmbSpatialBench",
    "robospatial-home": "gem_stages.eval.benchmarks.robospatial_home:RoboSpatialHome",
    "where2place": "gem_stages.eval.benchmarks.where2place:Where2Place",
    "roborefit": "gem_stages.eval.benchmarks.roborefit:RoboRefIt",
    "gem-synth-qa": "gem_stages.eval.gem_synth:GemSynthQA",
    "gem-synth-grounding": "gem_stages.eval.gem_synth:GemSynthGrounding",
    "gem-synth-spatial": "gem_stages.eval.gem_synth:GemSynthSpatial",
    "gem-synth-planning": "gem_stages.eval.gem_synth:GemSynthPlanning",
    "gem-synth-depth": "gem_stages.eval.gem_synth:GemSynthDepth",
}


def _import(target: str, search: Path | None = None) -> type[Benchmark]:
    module_name, _, attr = target.partition(":")
    try:
        if search is not None and (search / f"{module_name}.py").is_file():
            spec = importlib.util.spec_from_file_location(f"gemctl_benchmarks.{module_name}",
                                                          search / f"{module_name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"benchmark class {target} cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise InputError(f"{target} is not a Benchmark subclass (gem_stages.eval.benchmark.Benchmark)")
    return cls


def BENCHMARKS() -> dict[str, type[Benchmark]]:  # noqa: N802 (reads like the table it returns)
    """The built-in benchmarks that this installation has, by name."""
    out = {}
    for name, target in BUILTIN.items():
        try:
            out[name] = _import(target)
        except InputError:  # that reader is not part of this version
            continue
    return out


def available(project_root: Path | None) -> list[str]:
    names = set(BUILTIN)
    if project_root is not None and (Path(project_root) / "benchmarks").is_dir():
        names |= {p.stem for p in (Path(project_root) / "benchmarks").glob("*.yaml")}
    return sorted(names)


def resolve_benchmark(name: str, root: Path | str | None, project_root: Path | None = None) -> Benchmark:
    """The benchmark `name` reading its data under `root`: benchmarks/NAME.yaml in the project first (a user's own
    file wins over a built-in of the same name), else the built-in. A missing data path is one line."""
    spec = Path(project_root) / "benchmarks" / f"{name}.yaml" if project_root is not None else None
    if spec is not None and spec.is_file():
        try:
            desc = yaml.safe_load(spec.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"benchmarks/{name}.yaml is not valid YAML ({e.__class__.__name__}): fix it") from None
        if isinstance(desc, dict) and "class" in desc:
            cls = _import(str(desc["class"]), spec.parent)
            if root:  # given on the command line or in the recipe: relative to the project
                return cls(_data_path(name, root, Path(project_root), cls))
            # the file's own root: relative to the file
            return cls(_data_path(name, desc.get("root") or desc.get("path"), spec.parent, cls))
        try:
            from .mapping import MappingBenchmark
        except ImportError:
            raise InputError(f"benchmarks/{name}.yaml is a field mapping, and the mapping adapter is not part of "
                             "this version") from None
        bench = MappingBenchmark.from_file(spec)
        if root:  # the recipe's or the command line's path wins over the file's own
            bench.root = _data_path(name, root, Path(project_root))
        return bench
    if name not in BUILTIN:
        from gem_stages.config import suggest

        raise InputError(f"unknown benchmark '{name}': {suggest(name, available(project_root), 'choose from')}, "
                         "or describe it in benchmarks/NAME.yaml")
    try:
        cls = _import(BUILTIN[name])
    except InputError:
        raise InputError(f"benchmark '{name}' is not part of this version of gemctl (its reader cannot be "
                         "imported)") from None
    return cls(_data_path(name, root, Path(project_root) if project_root is not None else Path.cwd(), cls))


def _data_path(name: str, path, base: Path, cls: type | None = None) -> Path:
    if not path and cls is not None and not getattr(cls, "needs_data", True):  # builds its own items (gem-synth)
        return base
    if not path:
        raise InputError(f"benchmark {name} needs its data path: give --path DIR (or `path:` in the recipe's eval "
                         "entry)")
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise InputError(f"benchmark {name}: data path {path} does not exist: download the benchmark there or "
                         "give its path")
    return p
