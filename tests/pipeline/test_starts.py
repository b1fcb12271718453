"""What each stage starts from decides what DVC trains before it: the previous stage's checkpoint (init: previous)
makes it a dependency; an imported model or the base weights do not (params.yaml's `starts`, dvc.yaml's stages 2-4)."""

import shutil

import pytest
import yaml

from gemctl import pipeline
from gemctl.project import Project
from gemctl.recipe import resolve, write_params

from .project_copy import make_project


@pytest.fixture
def project(tmp_path):
    return Project(make_project(tmp_path / "project"))


def test_the_chain_follows_what_each_stage_starts_from(project):
    ci = resolve(project.recipes_dir, "ci")
    assert pipeline.upstream("stage4", ci) == ["data", "stage1", "stage2", "stage3", "stage4"]
    assert pipeline.upstream("stage4") == pipeline.upstream("stage4", ci)  # without a recipe: the whole chain
    direct = resolve(project.recipes_dir, "ci", ["stages.stage3.init=base"])
    assert pipeline.upstream("stage3", direct) == ["data", "stage3"]
    assert pipeline.upstream("stage4", direct) == ["data", "stage3", "stage4"]
    assert pipeline.upstream("stage2", direct) == ["data", "stage1", "stage2"]
    assert pipeline.upstream("data", direct) == ["data"]
    assert pipeline.starts(direct) == {"stage2": "runs/ci/stage1", "stage3": "runs/ci/init/stage3.json",
                                       "stage4": "runs/ci/stage3"}


def test_render_lists_each_recipes_starts_and_unlist_takes_them_off(project):
    index = project.root / "params.yaml"
    # a project from before `starts`: a listed recipe with its params.json, none of its entries
    old = resolve(project.recipes_dir, "ci", ["stages.stage2.init=base"])
    write_params(project.params_file("ci"), old)
    index.write_text("recipes: [ci]\nevals: {}\n")
    shutil.copy(project.recipes_dir / "ci.yaml", project.recipes_dir / "other.yaml")
    other = resolve(project.recipes_dir, "other")
    pipeline.render(project, other)
    data = yaml.safe_load(index.read_text())
    assert data["recipes"] == ["ci", "other"] and data["evals"] == {}
    assert data["starts"] == {"ci": pipeline.starts(old), "other": pipeline.starts(other)}
    assert data["starts"]["ci"]["stage2"] == "runs/ci/init/stage2.json"

    text = index.read_text()
    pipeline.render(project, other)  # unchanged: not rewritten
    assert index.read_text() == text
    pipeline.unlist(project, "other")
    data = yaml.safe_load(index.read_text())
    assert data["recipes"] == ["ci"] and list(data["starts"]) == ["ci"]
