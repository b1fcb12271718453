"""A LIBERO smoke rollout: one task of libero_spatial, one episode from its first fixed initial state, a few
steps, headless, by a random policy and by a tiny GEM-VLA. Runs wherever the optional libero extra is installed; in CI (make installs it) it never skips."""

import json
import os

import av
import numpy as np
import pytest

from gem_models.config import tiny_config
from gem_models.gem import GemModel
from gem_stages.config import EpisodeSamplesConfig
from gem_stages.errors import InputError
from gem_stages.eval.closed_loop import GemPolicy, RandomPolicy, merge, run_shard

if not os.environ.get("CI"):
    pytest.importorskip("libero.libero", reason="the optional libero extra is not installed")

from gem_stages.eval.libero import SUITES, LiberoConfig, LiberoSuite  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow  # builds a MuJoCo scene and renders on the CPU: most of a minute
def test_libero_smoke_rollout(tmp_path):
    env = LiberoSuite(LiberoConfig(suite="libero_spatial", tasks=[0], episodes_per_task=1, max_steps=3,
                                   image_size=64))
    assert env.num_episodes() == 1
    policy = RandomPolicy(low=[-0.2] * 6 + [-1.0], high=[0.2] * 6 + [1.0])
    vla = GemPolicy(GemModel.build(tiny_config("qwen3_vl", action="flow"), seed=0).eval(),
                    EpisodeSamplesConfig(cameras=["agentview", "wrist"]), replan_every=2)
    try:
        (result,) = run_shard(env, policy, tmp_path, videos=1)
        (acted,) = run_shard(env, vla, tmp_path / "vla", videos=0)  # GEM-VLA (7-dim actions, 8-dim state)
        first = env.task(0).observe(True)  # the same initial state again: the same picture
        env.cfg.image_flip = "rotate180"
        turned = env.task(0).observe(True)
    finally:
        env.close()
    assert acted.steps == 3 and acted.nonfinite_actions == 0
    summary = merge(env, tmp_path)
    assert result.steps == 3 and not result.success and result.nonfinite_actions == 0
    assert summary["benchmark"] == "libero_spatial" and summary["overall"] == 0.0
    (task,) = summary["categories"]
    assert task.startswith("00 pick up the black bowl")
    assert first.state.shape == (8,) and np.isfinite(first.state).all()
    assert set(first.images) == {"agentview", "wrist"} and first.images["agentview"].shape == (64, 64, 3)
    # OpenVLA's convention: the upright picture mirrored left-right
    assert np.array_equal(turned.images["wrist"], first.images["wrist"][:, ::-1])
    row = json.loads((tmp_path / "predictions.jsonl").read_text())
    assert row["instruction"] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    with av.open(str(tmp_path / "videos" / "episode-0000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (64, 128, 3)
    expected = np.concatenate([first.images["agentview"], first.images["wrist"]], axis=1).astype(float)
    assert np.abs(frames[0].astype(float) - expected).mean() < 8


def test_libero_suites_and_their_step_limits():
    assert SUITES == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
    assert LiberoSuite(LiberoConfig(suite="libero_goal")).max_steps == 300
    with pytest.raises(InputError, match="LIBERO suite 'libero_99' is not one of"):
        LiberoSuite(LiberoConfig(suite="libero_99"))
    with pytest.raises(InputError, match="libero_10 has tasks 0 to 9, not 10"):
        LiberoSuite(LiberoConfig(suite="libero_10", tasks=[10]))
