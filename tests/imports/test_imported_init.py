"""A recipe whose stage 3 starts from an imported release checkpoint (`init: imported:NAME`), through the real
pipeline (gemctl train -> DVC -> stage job -> MLflow) in a throwaway project copy."""

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gem_models.config import ActionExpertConfig
from gem_models.gem import GemModel
from gemctl.recipe import resolve

from ..pipeline.project_copy import gemctl, make_project
from .release_checkpoint import write_release

pytestmark = pytest.mark.slow

RECIPE = """\
description: ci, latent space, stage 3 from an imported release checkpoint
extends: ci
model:
  depth: {space: latent, patch_size: 1}
stages:
  stage3: {init: "imported:rel", steps: 2}
"""


def _vision(folder) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted((folder / "backbone").glob("*.safetensors")):
        state.update(load_file(str(file)))
    return {k: v for k, v in state.items() if k.startswith("model.visual.blocks.")}


def test_stage3_starts_from_the_imported_model_and_depends_on_it(tmp_path):
    project = make_project(tmp_path / "project")
    (project / "recipes" / "imp.yaml").write_text(RECIPE)
    cfg = resolve(project / "recipes", "imp").model
    release = GemModel.build(dataclasses.replace(cfg, action=ActionExpertConfig(kind="none")),
                             corpus=["How far is the cube?", "About 1.5 meters."], seed=7)
    write_release(release, str(tmp_path / "rel"))

    r = gemctl(project, "train", "stage3", "--recipe", "imp")  # refused: nothing imported under that name yet
    assert r.returncode == 2 and "no imported model named 'rel'" in r.stderr and "gemctl import gem-2b" in r.stderr
    r = gemctl(project, "import", "gem-2b", str(tmp_path / "rel"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported rel:" in r.stdout and "imported-rel v1" in r.stdout
    manifest = json.loads((project / "runs/imported/rel/manifest.json").read_text())

    r = gemctl(project, "train", "stage3", "--recipe", "imp")
    assert r.returncode == 0, r.stdout + r.stderr
    init = json.loads((project / "runs/imp/init/stage3.json").read_text())
    assert init == {"init": "imported:rel", "digest": manifest["digest"], "model_id": manifest["model_id"]}
    summary = json.loads((project / "runs/imp/stage3/summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2
    # stages 1 and 2, which stage 3 does not start from, were not trained (DVC ran data, then stage 3)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {s.split("@")[0] for s in lock if s.endswith("@imp")} == {"label_depth", "data", "stage3"}, list(lock)
    assert not (project / "runs/imp/stage1").exists() and not (project / "runs/imp/stage2").exists()
    assert [line.split()[0] for line in r.stdout.splitlines() if line.split()[:1] in (["data"], ["stage3"],
            ["stage1"], ["stage2"])] == ["data", "stage3"], r.stdout

    # stage 3 trains the merger, language, connector and DiT, not the vision blocks: they are the import's
    stage3, imported = _vision(project / "runs/imp/stage3/model"), _vision(project / "runs/imported/rel/model")
    assert stage3 and stage3.keys() == imported.keys()
    assert all(torch.equal(stage3[k], imported[k]) for k in stage3)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = {r.data.tags["gemctl.stage"]: r for r in mlflow.search_runs(experiment_names=["gemctl"],
                                                                         output_format="list")}
    assert runs["stage3"].data.tags["gemctl.parent_model_id"] == manifest["model_id"]
    assert runs["stage3"].data.tags["gemctl.parent_run_id"] == runs["import"].info.run_id

    before = (project / "runs/imp/stage3/summary.json").stat().st_mtime_ns
    r = gemctl(project, "train", "stage3", "--recipe", "imp")  # nothing changed: DVC runs nothing
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "runs/imp/stage3/summary.json").stat().st_mtime_ns == before, r.stdout
