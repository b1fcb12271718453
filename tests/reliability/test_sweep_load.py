"""A sweep under load on the project's SLURM (issue 12, Load): 24 points of stage3 as one array, 4 at a time, each
point's MLflow run, metrics and checkpoint checked (gemctl.sweep.verify), as bench/bench_sweep_load.py does at 200."""

import pytest

from bench.bench_sweep_load import build_upstream, load_recipe, run_load
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
    assert figures.failed == [], "\n".join(figures.failed) + "\n" + figures.sweep_output[-3000:]
    assert figures.points == POINTS and figures.completed == POINTS
    assert figures.jobs == {"COMPLETED": POINTS}, figures.jobs
    assert f"{POINTS} point(s), 0 already complete, {POINTS} to run on slurm" in figures.sweep_output
