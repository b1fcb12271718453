"""Closed loop on the built-in gem-synth tabletop: the goal test separates the expert from chance, the tiny GEM-VLA
acts end to end, shards merge to the single-process result, rollout videos decode."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

from gem_models.gem import GemModel
from gem_stages.config import EpisodeSamplesConfig
from gem_stages.errors import InputError
from gem_stages.eval.closed_loop import (
    ClosedLoopConfig,
    ExpertPolicy,
    GemPolicy,
    Observation,
    RandomPolicy,
    SynthPickPlace,
    load_policy,
    merge,
    run_episode,
    run_shard,
    synth_config,
)
from gemctl.recipe import resolve

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scripted_expert_succeeds_and_random_actions_do_not(tmp_path):
    env = SynthPickPlace(ClosedLoopConfig(episodes=30, max_steps=60))
    run_shard(env, ExpertPolicy(), tmp_path / "expert", videos=0)
    expert = merge(env, tmp_path / "expert")
    run_shard(env, RandomPolicy(), tmp_path / "random", videos=0)
    chance = merge(env, tmp_path / "random")
    assert expert["metric"] == "success_rate" and expert["counts"]["items"] == 30
    assert expert["overall"] >= 0.9
    assert chance["overall"] <= 0.05
    # per task: the object picked; every task the expert met, it solved nearly always
    assert set(expert["categories"]) <= {"pick-place-cube", "pick-place-ball", "pick-place-cylinder"}
    assert len(expert["categories"]) >= 2 and min(expert["categories"].values()) >= 0.8
    assert sum(expert["counts"]["per_category"].values()) == 30
    assert expert["counts"]["mean_steps"] < 40  # it stops when the goal test passes, not at the limit


def test_goal_test_is_the_worlds_not_the_policys():
    env = SynthPickPlace(ClosedLoopConfig(episodes=1, max_steps=60))
    task = env.task(0)
    assert not task.success()
    result = run_episode(env, ExpertPolicy(), 0)
    assert result.success and result.steps < 60
    # an episode is fixed by its seed: the same scene, instruction and outcome when run again
    again = run_episode(env, ExpertPolicy(), 0)
    assert (again.instruction, again.steps, again.task) == (result.instruction, result.steps, result.task)
    # never a training episode: evaluation draws from its own seed stream
    from gem_stages.data.synth_episodes import make_world

    train_world = make_world(np.random.default_rng([0, 1, 0]))
    assert not np.allclose(train_world.gripper, task.world.gripper)


def test_shards_merge_to_the_single_process_result(tmp_path):
    env = SynthPickPlace(ClosedLoopConfig(episodes=7, max_steps=40))
    run_shard(env, RandomPolicy(chunk=2), tmp_path / "one", videos=0)
    whole = merge(env, tmp_path / "one")
    for shard in (2, 0, 1):  # any order, as an array's tasks finish
        run_shard(env, RandomPolicy(chunk=2), tmp_path / "three", shard=shard, num_shards=3, videos=0)
    sharded = merge(env, tmp_path / "three", num_shards=3)
    assert sharded == whole
    lines = (tmp_path / "three" / "predictions.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["episode"] for x in lines] == list(range(7))


def test_a_missing_shard_stops_with_one_line_and_writes_nothing(tmp_path):
    env = SynthPickPlace(ClosedLoopConfig(episodes=4, max_steps=10))
    run_shard(env, RandomPolicy(), tmp_path, shard=0, num_shards=2, videos=0)
    with pytest.raises(InputError, match=r"shard 1 of 2 has no results .*run that shard again"):
        merge(env, tmp_path, num_shards=2)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "predictions.jsonl").exists()


def test_rollout_videos_decode_to_the_episodes_frames(tmp_path):
    cfg = ClosedLoopConfig(episodes=3, max_steps=60, cameras=("front", "top"))
    env = SynthPickPlace(cfg)
    results = run_shard(env, ExpertPolicy(), tmp_path, videos=2)
    assert [r.video for r in results] == ["videos/episode-0000.mp4", "videos/episode-0001.mp4", None]
    with av.open(str(tmp_path / results[0].video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == results[0].steps + 1  # every observation, the last one included
    assert frames[0].shape == (64, 128, 3)  # the two cameras side by side
    first = env.task(0).observe(True).images
    expected = np.concatenate([first["front"], first["top"]], axis=1).astype(float)
    assert np.abs(frames[0].astype(float) - expected).mean() < 8  # lossy, but the same picture
    assert not (tmp_path / "videos" / "episode-0002.mp4").exists()


@pytest.fixture(scope="module")
def tiny_vla():
    recipe = resolve(ROOT / "recipes", "tiny", [])
    return GemModel.build(recipe.model, seed=0).eval()


def test_tiny_gem_vla_acts_end_to_end(tmp_path, tiny_vla):
    env = SynthPickPlace(ClosedLoopConfig(episodes=2, max_steps=6))
    samples = EpisodeSamplesConfig(cameras=["top", "front"], image_history=2)
    policy = GemPolicy(tiny_vla, samples, replan_every=4, seed=0)
    calls = []
    predict = tiny_vla.predict_actions

    def spy(batch, generator=None):
        calls.append(batch)
        return predict(batch, generator)

    tiny_vla.predict_actions = spy
    try:
        run_shard(env, policy, tmp_path, videos=1)
    finally:
        del tiny_vla.predict_actions
    summary = merge(env, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [6, 6]  # a random-init policy does not solve it: the step limit
    assert summary["counts"]["nonfinite_actions"] == 0 and summary["overall"] == 0.0
    # re-planned every 4 steps: at steps 0 and 4 of each episode; two cameras x two frames each time
    assert len(calls) == 4
    assert [len(b["image_grid_thw"]) for b in calls] == [4, 4, 4, 4]
    assert calls[0]["state"].shape == (1, 4)
    assert (tmp_path / "videos" / "episode-0000.mp4").is_file()
    # the seeded sampler makes an episode repeatable
    again = GemPolicy(tiny_vla, samples, replan_every=4, seed=0)
    again.reset(1)
    policy.reset(1)
    obs = env.task(1).observe(True)
    again.observe(obs), policy.observe(obs)
    assert np.array_equal(policy.act(obs), again.act(obs))


def test_image_history_is_the_last_steps_not_the_last_replans(tiny_vla):
    """Training shows frames of consecutive steps: at a re-plan the policy sees the step before it too, though it
    did not act there."""
    policy = GemPolicy(tiny_vla, EpisodeSamplesConfig(cameras=["top", "front"], image_history=2), replan_every=4)
    shown = []
    processor = tiny_vla.processor

    def spy(samples, *args, **kw):
        shown.append([np.asarray(im)[0, 0, 0] for im in samples[0]["images"]])
        return processor(samples, *args, **kw)

    def obs(step):
        images = {c: np.full((64, 64, 3), 10 * step + k, np.uint8) for k, c in enumerate(["front", "top"])}
        return Observation(images, np.zeros(4, np.float32), "put the red cube on the blue plate")

    tiny_vla.processor = spy
    try:
        policy.reset(0)
        for step in range(5):
            policy.observe(obs(step))
            if step in (0, 4):
                policy.act(obs(step))
    finally:
        tiny_vla.processor = processor
    # oldest frame first, cameras in the trained order (top = 1, front = 0) within a frame
    assert shown == [[1, 0, 1, 0], [31, 30, 41, 40]]


def test_policy_and_task_cameras_must_agree(tiny_vla):
    env = SynthPickPlace(ClosedLoopConfig(episodes=1, cameras=("front",)))
    policy = GemPolicy(tiny_vla, EpisodeSamplesConfig(cameras=["top"]))
    with pytest.raises(InputError, match=r"trained on cameras \['top'\].*evaluate with cameras"):
        run_episode(env, policy, 0)
    with pytest.raises(InputError, match="replan_every is 9"):
        GemPolicy(tiny_vla, None, replan_every=9)


class _Broken:
    needs_images = False

    def reset(self, episode):
        pass

    def observe(self, observation):
        pass

    def act(self, observation):
        return np.full((2, 4), np.nan, dtype=np.float32)


def test_non_finite_actions_are_held_and_counted(tmp_path):
    env = SynthPickPlace(ClosedLoopConfig(episodes=2, max_steps=5))
    start = env.task(0).world.gripper.copy()
    result = run_episode(env, _Broken(), 0)
    assert (result.steps, result.nonfinite_actions, result.success) == (5, 5, False)
    run_shard(env, _Broken(), tmp_path, videos=0)
    assert merge(env, tmp_path)["counts"]["nonfinite_actions"] == 10
    task = env.task(0)
    task.step(task.hold_action())
    assert np.allclose(task.world.gripper, start) and task.world.opening == 1.0


def test_a_checkpoint_loads_as_the_policy_stage4_trained(tmp_path, tiny_vla):
    recipe = resolve(ROOT / "recipes", "tiny", ["stages.stage4.episodes.cameras=[top,front]"])
    tiny_vla.save(str(tmp_path / "ckpt"))
    samples = recipe.stages.stage4.episodes
    policy = load_policy(tmp_path / "ckpt", recipe.model, samples, replan_every=2)
    reference = GemPolicy(tiny_vla, samples, replan_every=2)
    cfg = synth_config(recipe.data, samples, episodes=1)
    assert (cfg.cameras, cfg.image_height, cfg.image_width) == (("top", "front"), 64, 64)
    assert synth_config(recipe.data, EpisodeSamplesConfig()).cameras == ("front",)  # the data's first camera
    obs = SynthPickPlace(cfg).task(0).observe(True)
    for p in (policy, reference):
        p.reset(0), p.observe(obs)
    chunk = policy.act(obs)
    assert chunk.shape == (2, 4) and np.allclose(chunk, reference.act(obs), atol=1e-5)
    with pytest.raises(InputError, match="is not a GEM checkpoint"):
        load_policy(tmp_path / "nothing", recipe.model, samples)
