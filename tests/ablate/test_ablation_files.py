"""The shipped ablation files resolve: every variant x seed a distinct derived recipe, set as the paper's ablations."""

from pathlib import Path

import pytest

from gemctl.ablate import expand, load, settings_hash
from gemctl.project import Project

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, recipe", [("gem-synth", "tiny"), ("gem-2b", "gem-2b")])
def test_shipped_ablations_resolve(name, recipe):
    ab = load(ROOT / "recipes" / "ablations" / f"{name}.yaml")
    runs = expand(Project(ROOT), ab)
    assert ab.recipe == recipe and ab.baseline == "gem" and ab.seeds >= 3
    assert len(runs) == len(ab.variants) * ab.seeds == len({r.recipe.name for r in runs})
    by = {(r.variant, r.seed): r.recipe for r in runs}
    s = runs[0].seed
    gem, rgb, direct, none = by["gem", s], by["rgb", s], by["direct", s], by["no-depth", s]
    assert gem.model.depth.target == "depth" and rgb.model.depth.target == "rgb"
    assert gem.stages.stage3.loss.depth == 0.1 and none.stages.stage3.loss.depth == 0.0
    assert gem.stages.stage3.init == "previous" and direct.stages.stage3.init == "base"
    assert [by[f"depth-w{w}", s].stages.stage3.loss.depth for w in ("0.3", "1.0")] == [0.3, 1.0]
    # the name is the settings' hash, and the seed is part of the settings
    assert all(r.recipe.name == f"abl-{settings_hash(r.recipe)}" for r in runs)
    assert by["gem", s + 1].seed == s + 1 and by["gem", s + 1].name != gem.name


def test_seeds_option_replaces_the_files():
    ab = load(ROOT / "recipes" / "ablations" / "gem-synth.yaml", seeds=5)
    assert ab.seeds == 5 and len(expand(Project(ROOT), ab)) == 5 * len(ab.variants)


def test_variant_option_keeps_those_and_the_baseline():
    ab = load(ROOT / "recipes" / "ablations" / "gem-synth.yaml", only=["direct", "rgb"])
    assert [v.name for v in ab.variants] == ["gem", "rgb", "direct"]  # the file's order, the baseline kept
