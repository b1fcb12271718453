"""Ablation files that cannot run are refused in one line, exit 2, before anything is written."""

import pytest

from tests.pipeline.project_copy import gemctl, make_project

HEAD = "recipe: ci\neval: [{benchmark: gem-synth-qa, limit: 4}]\n"
GOOD_VARIANTS = "variants:\n  gem: {}\n  no-depth: {stages.stage3.loss.depth: 0.0}\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("p"))


@pytest.mark.parametrize("text, args, expected", [
    (HEAD + "variant_count: 2\n" + GOOD_VARIANTS, [], "unknown key(s) variant_count"),
    (HEAD + "variants:\n  gem: {}\n  same: {stages.stage3.loss.depth: 0.1}\n", [],
     "variant same resolves to the same recipe as gem"),
    (HEAD + "variants:\n  gem: {}\n  bad: {stages.stage3.los.depth: 0}\n", [],
     "variant bad: unknown key 'stages.stage3.los.depth'"),
    (HEAD + GOOD_VARIANTS, ["--seeds", "0"], "seeds must be an integer of 1 or more"),
    (HEAD + "baseline: base\n" + GOOD_VARIANTS, [], "baseline base is not one of its variants"),
    (HEAD + "variants:\n  gem: {}\n", [], "at least two"),
    ("recipe: ci\n" + GOOD_VARIANTS, [], "recipe ci has no eval list"),
    (HEAD + GOOD_VARIANTS, ["--variant", "rgb"], "--variant rgb: ablation file abl.yaml has no such variant"),
    (HEAD + GOOD_VARIANTS, ["--variant", "gem"], "--variant names only the baseline gem"),
])
def test_refused_in_one_line_with_nothing_written(project, text, args, expected):
    (project / "abl.yaml").write_text(text)
    r = gemctl(project, "ablate", "abl.yaml", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    assert not (project / "runs").exists() and not (project / ".gemctl").exists() and not (project / "mlruns").exists()
    assert (project / "params.yaml").read_text() == "recipes: []\n"
