"""Data-parallel training proven on the real GEM stage: a 2-rank job forms a process group of 2, its ranks train on
different micro-batches, and it ends where one process training on the union of their micro-batches ends — not
where either rank alone would.

Why the comparison is exact up to rounding: micro-batch g = (step * grad_accum + micro) * world + rank draws its
samples and random numbers from (seed, g) only, so 2 ranks x grad_accum 1 and 1 process x grad_accum 2 see the same
micro-batches with the same noise; DDP averages the two gradients, accumulation sums the two halves.
"""

import dataclasses
from functools import partial
from pathlib import Path

import cloudpickle
import pytest
import torch

from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gemctl.launch import Resources, launch
from gemctl.recipe import resolve
from tests.conftest import TEST_PREFIX
from tests.training import ddp_job

cloudpickle.register_pickle_by_value(ddp_job)

ROOT = Path(__file__).resolve().parents[2]
STAGE, STEPS = "stage3", 3
TWO_RANKS = Resources(tasks_per_node=2, cpus_per_task=1, time_min=10)
# Tolerance. Both sides add the same two float32 half-gradients (halving is exact in binary): DDP as
# g0/2 + g1/2 in gloo's all-reduce, accumulation as g0/2 + g1/2 in place; measured here, the weights agree bit for
# bit. The tolerance leaves room for a backend that sums in another order (a ring all-reduce over more ranks):
# a relative rounding error of ~1e-7 per addition in a gradient becomes the same relative error in AdamW's
# update lr * m / sqrt(v), so 3 steps of lr 1e-3 stay far below 1e-6. One rank alone ends ~4e-3 away.
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def recipe():
    return resolve(ROOT / "recipes", "tiny", [f"stages.{STAGE}.steps={STEPS}", f"stages.{STAGE}.batch_size=2",
                                              f"stages.{STAGE}.warmup_ratio=0.0", f"stages.{STAGE}.checkpoint_every=0"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    prepare_dataset(DataConfig(num_scenes=6, num_episodes=2, episode_max_steps=30), out)
    return out


def stage_args(recipe, data_dir: Path, run_dir: Path, grad_accum: int) -> dict:
    cfg = dataclasses.replace(getattr(recipe.stages, STAGE), grad_accum=grad_accum)
    return dict(stage=STAGE, model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=recipe.seed,
                data_dir=data_dir, init_dir=None, out_dir=run_dir / "out", work_dir=run_dir / "work")


@pytest.fixture(scope="module")
def one_process(recipe, data_dir, tmp_path_factory):
    """In this process: the union of both ranks' micro-batches (grad_accum 2), and each rank's slice alone."""
    tmp = tmp_path_factory.mktemp("one_process")
    union = ddp_job.recorded_stage(**stage_args(recipe, data_dir, tmp / "union", grad_accum=2))
    alone = [ddp_job.recorded_stage(**stage_args(recipe, data_dir, tmp / f"rank{r}", grad_accum=1), shard=(r, 2))
             for r in (0, 1)]
    return union, alone


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_data_parallel(ranks: list[dict], one_process) -> None:
    union, alone = one_process
    assert [r["rank"] for r in ranks] == [0, 1] and [r["world"] for r in ranks] == [2, 2]
    assert all(r["summary"]["status"] == "completed" and r["summary"]["step"] == STEPS for r in ranks)
    assert ranks[0]["checkpoint"]  # rank 0 wrote the stage's model
    assert len(ranks[0]["summary"]["nodes"]) == 2  # the summary says where each rank ran
    # runtime.cpu_threads of the tiny recipe, not accelerate's pick for multi-process CPU runs (physical cores / ranks)
    assert [r["threads"] for r in ranks] == [1, 1]
    seen = [r["micro_batches"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == STEPS and seen[0] != seen[1]
    # each rank trained on its own slice, and together on exactly the single process's micro-batches
    assert seen[0] == alone[0]["micro_batches"] and seen[1] == alone[1]["micro_batches"]
    assert union["micro_batches"] == [b for pair in zip(*seen) for b in pair]

    weights = ranks[0]["weights"]
    assert max_diff(weights, ranks[1]["weights"]) == 0.0  # DDP keeps the replicas equal
    for k in weights:
        torch.testing.assert_close(weights[k], union["weights"][k], atol=ATOL, rtol=RTOL, msg=k)
    for r in (0, 1):
        assert max_diff(weights, alone[r]["weights"]) > 100 * ATOL, f"rank {r} alone ends like both ranks"


def test_two_local_processes_train_as_one_process_over_both_slices(recipe, data_dir, one_process, tmp_path):
    job = partial(ddp_job.gem_stage_job, 2, **stage_args(recipe, data_dir, tmp_path / "ddp", grad_accum=1))
    result = launch(job, kind="local", resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp")
    assert result.ok, result.log_tail()
    assert_data_parallel(result.values, one_process)


@pytest.mark.slurm
def test_two_slurm_tasks_train_as_one_process_over_both_slices(slurm_cluster, recipe, data_dir, one_process,
                                                               tmp_path):
    job = partial(ddp_job.gem_stage_job, 2, **stage_args(recipe, data_dir, tmp_path / "ddp", grad_accum=1))
    result = launch(job, kind="slurm", resources=TWO_RANKS, job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ddp")
    assert result.ok, result.log_tail()
    assert_data_parallel(result.values, one_process)
