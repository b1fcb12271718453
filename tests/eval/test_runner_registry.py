"""Benchmarks by name (built in, or benchmarks/NAME.yaml naming a class of the user's) and the recipe's eval list:
each mistake is one line that says what to fix."""

from pathlib import Path

import pytest

from gem_stages.errors import InputError
from gem_stages.eval.registry import BUILTIN, resolve_benchmark

ROOT = Path(__file__).resolve().parents[2]

OWN = '''
from gem_stages.eval.benchmark import Benchmark


class Mine(Benchmark):
    name = "mine"


class NotOne:
    pass
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "own.py").write_text(OWN)
    (tmp_path / "data").mkdir()
    return tmp_path


def test_a_class_named_in_benchmarks_yaml_reads_the_path_given(project):
    (project / "benchmarks" / "mine.yaml").write_text("class: own:Mine\n")
    bench = resolve_benchmark("mine", "data", project)
    assert type(bench).__name__ == "Mine" and bench.root == project / "data"
    (project / "benchmarks" / "mine.yaml").write_text("class: own:Mine\nroot: data\n")  # or the file's own root,
    (project / "benchmarks" / "data").mkdir()  # relative to the file
    assert resolve_benchmark("mine", None, project).root == project / "benchmarks" / "data"


@pytest.mark.parametrize(("spec", "message"), [
    ("class: own:NotOne\n", "own:NotOne is not a Benchmark subclass"),
    ("class: own:Missing\n", "benchmark class own:Missing cannot be imported"),
    ("class: [\n", "benchmarks/mine.yaml is not valid YAML"),
])
def test_a_broken_benchmark_file_is_one_line(project, spec, message):
    (project / "benchmarks" / "mine.yaml").write_text(spec)
    with pytest.raises(InputError, match=message) as e:
        resolve_benchmark("mine", "data", project)
    assert "\n" not in str(e.value)


def test_an_unknown_name_suggests_the_closest(project):
    with pytest.raises(InputError, match="unknown benchmark 'cv-bnch': did you mean 'cv-bench'?"):
        resolve_benchmark("cv-bnch", "data", project)


def test_a_missing_data_path_names_it(project):
    (project / "benchmarks" / "mine.yaml").write_text("class: own:Mine\n")
    with pytest.raises(InputError, match="benchmark mine: data path nowhere does not exist"):
        resolve_benchmark("mine", "nowhere", project)
    with pytest.raises(InputError, match="benchmark mine needs its data path"):
        resolve_benchmark("mine", None, project)


def test_builtin_names_match_their_classes():
    """Each built-in's registry name is the name its class reports (results.json's "benchmark")."""
    from gem_stages.eval.registry import _import

    for name, target in BUILTIN.items():
        try:
            cls = _import(target)
        except InputError:  # that reader is not part of this checkout
            continue
        assert cls.name == name


def test_the_recipe_eval_list_is_checked():
    from gemctl.recipe import resolve

    recipe = resolve(ROOT / "recipes", "tiny", ["eval=[{benchmark: cv-bench, path: data/CV-Bench, limit: 10}]"])
    (entry,) = recipe.eval
    assert (entry.stage_for(), entry.stage_for(closed_loop=True), entry.limit, entry.shards) == (
        "stage3", "stage4", 10, 1)
    with pytest.raises(InputError, match=r"eval\[0\].limit=0 is out of range: must be >= 1"):
        resolve(ROOT / "recipes", "tiny", ["eval=[{benchmark: cv-bench, limit: 0}]"])
    with pytest.raises(InputError, match="eval lists benchmark 'cv-bench' twice"):
        resolve(ROOT / "recipes", "tiny", ["eval=[{benchmark: cv-bench}, {benchmark: cv-bench}]"])
    with pytest.raises(InputError, match=r"unknown key 'eval\[0\].limt': did you mean 'limit'\?"):
        resolve(ROOT / "recipes", "tiny", ["eval=[{benchmark: cv-bench, limt: 3}]"])
