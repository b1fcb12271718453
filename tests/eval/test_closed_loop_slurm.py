"""Closed-loop episodes sharded across a real SLURM job array (the project's test cluster) merge to exactly the
single-process result."""

from functools import partial

import pytest

from gem_stages.eval.closed_loop import ClosedLoopConfig, ExpertPolicy, SynthPickPlace, merge, run_shard
from gemctl.launch import Resources
from gemctl.launch.executor import launch_array, wait_all
from tests.conftest import TEST_PREFIX


@pytest.mark.slurm
def test_episodes_sharded_across_a_slurm_array_merge_to_the_local_result(slurm_cluster, tmp_path):
    env = SynthPickPlace(ClosedLoopConfig(episodes=8, max_steps=60))
    run_shard(env, ExpertPolicy(seed=3), tmp_path / "local", videos=0)
    local = merge(env, tmp_path / "local")
    shards = 3
    jobs = [partial(run_shard, env, ExpertPolicy(seed=3), tmp_path / "array", shard=k, num_shards=shards, videos=1)
            for k in range(shards)]
    handles = launch_array(jobs, kind="slurm", resources=Resources(cpus_per_task=1, time_min=10),
                           job_dir=tmp_path / "jobs", name=TEST_PREFIX + "closed-loop")
    results = wait_all(handles)
    assert [r.state for r in results] == ["COMPLETED"] * shards, results[0].log_tail()
    assert len({r.job_id.split("_")[0] for r in results}) == 1  # one array, one task per shard
    # each task ran its own episodes: i % 3 == k
    assert [[e.episode for e in r.value] for r in results] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    merged = merge(env, tmp_path / "array", num_shards=shards)
    assert merged == local and merged["overall"] >= 0.9
    assert (tmp_path / "array" / "videos" / "episode-0000.mp4").is_file()  # written by the task of shard 0
    lines = (tmp_path / "array" / "predictions.jsonl").read_text().splitlines()
    local_lines = (tmp_path / "local" / "predictions.jsonl").read_text().splitlines()
    # the same episodes, step for step; only the video column differs (the array wrote one)
    strip = [line.replace(', "video": "videos/episode-0000.mp4"', ', "video": null') for line in lines]
    assert strip == local_lines
