"""A sweep under load on the project's SLURM (issue 12, Load): 24 points of stage3 as one array, 4 at a time, each
point's MLflow run, metrics and checkpoint checked (gemctl.sweep.verify), as bench/bench_sweep_load.py does at 200."""

import pytest

from bench.bench_sweep_load import build_upstream, load_recipe, lr_values, run_load
from tests.conftest import TEST_PREFIX
from tests.pipeline.project_copy import make_project

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

POINTS, PARALLEL = 24, 4


def test_every_point_of_a_24_point_slurm_sweep_has_its_run_metrics_and_checkpoint(slurm_cluster, tmp_path):
    project = make_project(tmp_path / "p")
    recipe = TEST_PREFIX + "load"  # the array's job name starts with it
    load_recipe(project, recipe, steps=1)
    build_upstream(project, recipe)
    figures = run_load(project, recipe, POINTS, PARALLEL)
    print("\n".join(figures.lines()))  # the figures of this size, for the record (-s); no timing is asserted
    assert figures.failed == [], "\n".join(figures.failed) + "\n" + figures.sweep_output[-3000:]
    assert figures.points == POINTS and figures.completed == POINTS
    assert figures.jobs == {"COMPLETED": POINTS}, figures.jobs
    assert f"{POINTS} point(s), 0 already complete, {POINTS} to run on slurm" in " ".join(figures.sweep_output.split())  # (wrapped at 80 columns)

    # the check finds each kind of damage, on the point that has it and no other
    import mlflow

    from gemctl.project import Project
    from gemctl.sweep import expand, point_dir, verify
    from gemctl.tracking import setup

    sweep = expand(Project(project), "stage3", recipe, {"stages.stage3.lr": [float(v) for v in lr_values(POINTS)]})
    a, b, c, d = sweep.points[:4]
    model = point_dir(Project(project), sweep, a) / "out" / "model"
    (model / "connector.safetensors").write_bytes((model / "connector.safetensors").read_bytes()[:40])
    (point_dir(Project(project), sweep, b) / "out" / "model" / "gem_config.json").unlink()
    setup(Project(project))  # mlflow at the project's store
    run_c = mlflow.search_runs(filter_string=f"tags.`gemctl.sweep_point` = '{c.id}'", search_all_experiments=True,
                               output_format="list")[0]
    mlflow.MlflowClient().set_terminated(run_c.info.run_id, "FAILED")
    mlflow.MlflowClient().delete_run(
        mlflow.search_runs(filter_string=f"tags.`gemctl.sweep_point` = '{d.id}'", search_all_experiments=True,
                           output_format="list")[0].info.run_id)
    checks = {x.point.id: x for x in verify(Project(project), sweep)}
    assert [p for p, x in checks.items() if not x.ok] == [a.id, b.id, c.id, d.id]
    assert any("connector.safetensors does not open" in m for m in checks[a.id].problems), checks[a.id].problems
    assert checks[b.id].problems == ["checkpoint lacks gem_config.json"]
    assert checks[c.id].problems == [f"MLflow run {run_c.info.run_id} is FAILED"]
    assert checks[d.id].problems == ["no MLflow run"]
