"""Stage 4 trains on each episode format, writes the statistics it normalised with beside the checkpoint, and
inference (the loaded checkpoint, the closed-loop policy) normalises with exactly those."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gem_models.action_normalization import ActionNormalizer
from gem_models.gem import GemModel
from gem_stages.data.config import DataConfig
from gem_stages.data.episode_format import write_episode
from gem_stages.data.generate import prepare_dataset
from gem_stages.errors import InputError
from gem_stages.train import ACTION_STATS_FILE, stage_samples, train_stage
from gemctl.recipe import resolve

from .episode_writers import (
    actions_of,
    ramp_frame,
    states_of,
    write_lerobot_v2,
    write_lerobot_v3,
    write_libero,
)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_rdt(folder: Path) -> None:
    folder.mkdir()
    for e, n in enumerate([5, 6]):
        images = {"front": np.stack([ramp_frame(e, t, 0, (32, 32)) for t in range(n)])}
        depths = {"front": np.full((n, 32, 32), 900 + 10 * e, np.uint16)}
        write_episode(folder / f"episode_{e}.hdf5", images, depths, states_of(e, n, 4), actions_of(e, n, 4),
                      "stack the cups", True)


# format -> (writer, action_dim, state_dim, camera shown)
FORMATS = {
    "rdt": (write_rdt, 4, 4, "front"),
    "robomimic": (lambda d: (d.mkdir(), write_libero(d / "demo.hdf5", [5, 6])), 7, 8, "agentview"),
    "lerobot-v2.1": (lambda d: write_lerobot_v2(d, [5, 6], ["a", "b"]), 4, 4, "top"),
    "lerobot-v3.0": (lambda d: write_lerobot_v3(d, [5, 6], ["a", "b"]), 4, 4, "wrist"),
}


def recipe_for(action_dim: int, state_dim: int, camera: str):
    return resolve(ROOT / "recipes", "tiny", [
        "stages.stage4.batch_size=2", "stages.stage4.steps=2", "stages.stage4.warmup_ratio=0.0",
        f"model.action.action_dim={action_dim}", f"model.action.state_dim={state_dim}",
        f"stages.stage4.episodes.cameras=[{camera}]"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stage4_trains_on_the_format_and_inference_uses_its_statistics(fmt, tmp_path):
    write, action_dim, state_dim, camera = FORMATS[fmt]
    write(tmp_path / "episodes")
    manifest = prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "episodes")), tmp_path / "data")
    assert manifest["episodes"]["format"] == fmt.split("-")[0]
    recipe = recipe_for(action_dim, state_dim, camera)
    out = tmp_path / "stage4"
    summary = train_stage("stage4", model_cfg=recipe.model, stage_cfg=recipe.stages.stage4, runtime=recipe.runtime,
                          seed=0, data_dir=tmp_path / "data", init_dir=None, out_dir=out, work_dir=tmp_path / "w")
    assert summary["status"] == "completed" and summary["step"] == 2
    assert all(np.isfinite(v) for v in summary["losses"].values())

    # beside the checkpoint: the statistics computed at ingest, over every training step
    saved = json.loads((out / "model" / ACTION_STATS_FILE).read_text())
    assert saved == manifest["episodes"]["statistics"]
    actions = np.concatenate([actions_of(e, n, action_dim) for e, n in enumerate([5, 6])]).astype(np.float64)
    assert saved["count"] == 11 and np.allclose(saved["action"]["mean"], actions.mean(0), atol=1e-6)

    # the loaded checkpoint normalises with exactly those numbers, not an identity or a recomputation
    expected = ActionNormalizer(action_dim, state_dim, recipe.model.action.normalization)
    expected.set_from_statistics(saved)
    loaded = GemModel.load(str(out / "model"), recipe.model).action_expert.normalizer
    for name in ("action_loc", "action_scale", "state_loc", "state_scale"):
        assert torch.equal(getattr(loaded, name), getattr(expected, name)), name
    assert not torch.equal(loaded.action_loc, torch.zeros(action_dim))


def test_closed_loop_policy_normalises_with_the_saved_statistics(tmp_path):
    """The closed-loop policy of a stage-4 checkpoint predicts with the statistics saved beside it, with the
    training episodes gone."""
    from gem_stages.config import EpisodeSamplesConfig
    from gem_stages.eval.closed_loop import Observation, load_policy

    write_rdt(tmp_path / "episodes")
    prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "episodes")), tmp_path / "data")
    recipe = recipe_for(4, 4, "front")
    out = tmp_path / "stage4"
    train_stage("stage4", model_cfg=recipe.model, stage_cfg=recipe.stages.stage4, runtime=recipe.runtime, seed=0,
                data_dir=tmp_path / "data", init_dir=None, out_dir=out, work_dir=tmp_path / "w")
    saved = json.loads((out / "model" / ACTION_STATS_FILE).read_text())
    for path in (tmp_path / "episodes").glob("*.hdf5"):  # inference needs nothing from the training data
        path.unlink()
    policy = load_policy(out / "model", recipe.model, EpisodeSamplesConfig(cameras=["front"]), replan_every=2)
    observation = Observation({"front": ramp_frame(0, 2, 0, (32, 32))}, states_of(0, 5, 4)[2], "stack the cups")
    policy.reset(0)
    policy.observe(observation)
    chunk = policy.act(observation)

    # the same prediction with a normaliser built from the saved file alone
    expert = policy.model.action_expert
    normalizer = ActionNormalizer(4, 4, recipe.model.action.normalization)
    normalizer.set_from_statistics(saved)
    expert.normalizer = normalizer
    policy.reset(0)
    policy.observe(observation)
    assert np.array_equal(policy.act(observation), chunk)
    identity = ActionNormalizer(4, 4, recipe.model.action.normalization)
    expert.normalizer = identity  # never set: predictions differ, so the statistics are really applied
    policy.reset(0)
    policy.observe(observation)
    assert not np.allclose(policy.act(observation), chunk)


def test_episode_dims_that_do_not_fit_the_model_are_one_clear_line(tmp_path):
    (tmp_path / "episodes").mkdir()
    write_libero(tmp_path / "episodes" / "demo.hdf5", [5])
    prepare_dataset(DataConfig(source="files", episodes_dir=str(tmp_path / "episodes")), tmp_path / "data")
    recipe = recipe_for(4, 4, "agentview")  # the tiny model's 4/4, LIBERO's 7/8
    model = GemModel.build(recipe.model, corpus=["put the bowl on the plate"], seed=0)
    with pytest.raises(InputError, match=r"actions have 7 dimensions but model.action.action_dim is 4: set "
                                         r"-o model.action.action_dim=7"):
        stage_samples("stage4", model, recipe.model, tmp_path / "data", recipe.stages.stage4)
