"""Sweeps as ONE job array: results per point, parallelism limit, fast queueing of 100 points, cancel by sweep."""

import functools

import pytest

from gemctl.launch import Resources, launch_array, registry, wait_all
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, needs_slurm


@needs_slurm
def test_job_array_runs_every_point(tmp_path):
    res = Resources(time_min=5, signal_delay_s=30, array_parallelism=2)
    fns = [functools.partial(jobfns.array_point, x) for x in range(5)]
    tags = [{"stage": "sweep-test", "point": f"x={x}", "sweep": "sw1"} for x in range(5)]
    handles = launch_array(fns, kind="slurm", resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "array",
                           project=tmp_path, tags=tags)
    array_id = handles[0].job_id.split("_")[0]
    assert [h.job_id for h in handles] == [f"{array_id}_{i}" for i in range(5)]
    assert "#SBATCH --array=0-4%2" in (tmp_path / "jobs" / f"{array_id}_submission.sh").read_text()
    updates = []
    results = wait_all(handles, on_update=updates.append)
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.value for r in results] == [{"x": x, "square": x * x, "array_task": str(x)} for x in range(5)]
    assert {u.job_id for u in updates} == {h.job_id for h in handles}
    recs = registry.list_jobs(tmp_path)
    assert [(r.point, r.sweep, r.state) for r in recs] == [(f"x={x}", "sw1", "COMPLETED") for x in range(5)]


@pytest.mark.parametrize("kind", ["debug", "local"])
def test_arrays_work_on_other_executors(kind, tmp_path):
    res = Resources(time_min=5, signal_delay_s=30)
    handles = launch_array([functools.partial(jobfns.array_point, x) for x in range(3)], kind=kind, resources=res,
                           job_dir=tmp_path / "jobs", name=TEST_PREFIX + "array")
    assert [r.value["square"] for r in wait_all(handles)] == [0, 1, 4]


@needs_slurm
def test_hundred_point_array_is_one_array_and_cancels_by_sweep(tmp_path):
    res = Resources(time_min=5, signal_delay_s=30, array_parallelism=1)
    fns = [functools.partial(jobfns.block, str(tmp_path / "never")) for _ in range(100)]
    handles = launch_array(fns, kind="slurm", resources=res, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "a100",
                           project=tmp_path, tags=[{"sweep": "big", "point": str(i)} for i in range(100)])
    # (how fast it queues is measured by bench/bench_submit.py)
    assert len(handles) == 100 and len({h.job_id.split("_")[0] for h in handles}) == 1
    cancelled = registry.cancel(tmp_path, "big")
    assert sorted(cancelled) == sorted(h.job_id for h in handles)
    results = wait_all(handles)
    assert {r.state for r in results} == {"CANCELLED"}
    assert all("was cancelled" in r.error for r in results)
