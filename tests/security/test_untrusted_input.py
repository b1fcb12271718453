"""What gemctl reads never runs code: YAML with Python tags, in a recipe, an override, a sweep file or a benchmark
mapping, is refused in one line and nothing it names is called."""

import subprocess

import pytest

from tests.pipeline.project_copy import GEMCTL, env, make_project

TAGS = ['!!python/object/apply:os.system ["touch {mark}"]', '!!python/name:os.system',
        '!!python/object/new:subprocess.Popen [["touch", "{mark}"]]']


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("untrusted"))


@pytest.mark.parametrize("tag", TAGS)
def test_a_recipe_with_a_python_tag_is_refused_and_nothing_runs(project, tmp_path, tag):
    mark = tmp_path / "ran"
    (project / "recipes" / "evil.yaml").write_text(f"extends: ci\nseed: {tag.format(mark=mark)}\n")
    r = subprocess.run([GEMCTL, "recipe", "show", "evil"], cwd=project, capture_output=True, text=True, env=env())
    assert r.returncode == 2 and not mark.exists()
    assert "recipes hold plain data only" in r.stderr and "!!python/" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("where", ["override", "sweep", "mapping"])
def test_python_tags_in_overrides_sweep_files_and_benchmark_mappings_run_nothing(project, tmp_path, where):
    mark = tmp_path / "ran"
    tag = TAGS[0].format(mark=mark)
    if where == "override":
        args, said = ["recipe", "show", "ci", "-o", f"seed={tag}"], "uses the YAML tag !!python/object/apply"
    elif where == "sweep":
        (project / "evil-sweep.yaml").write_text(f"stage: stage3\nrecipe: ci\ngrid:\n  stages.stage3.lr: {tag}\n")
        args, said = ["sweep", "stage3", "--file", "evil-sweep.yaml"], "evil-sweep.yaml is not valid YAML"
    else:
        (project / "benchmarks").mkdir(exist_ok=True)
        (project / "benchmarks" / "evil.yaml").write_text(f"path: {tag}\nrecords: x.jsonl\n")
        args, said = ["eval", "evil", "--recipe", "ci", "--path", str(tmp_path)], "evil.yaml is not valid YAML"
    r = subprocess.run([GEMCTL, *args], cwd=project, capture_output=True, text=True, env=env())
    assert r.returncode == 2, r.stdout + r.stderr
    assert not mark.exists() and "Traceback" not in r.stderr and said in r.stderr, r.stderr
