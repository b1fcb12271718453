"""stages.<s>.packing: a stage trained on packed micro-batches takes the steps the padded run takes."""

import copy
from pathlib import Path

import pytest

from gem_models.gem import GemModel
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import text_corpus
from gem_stages.errors import InputError
from gem_stages.train import make_collate, stage_samples, train_stage
from gem_stages.trainer import train
from gemctl.recipe import resolve

from .same_steps import assert_same_steps

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_packed_stage3_steps_equal_padded_steps(tmp_path):
    """train_stage with stages.stage3.packing (packed collate, sdpa_packed attention) against the trainer on padded
    micro-batches of the same samples: same losses, same weights after the steps."""
    recipe = resolve(ROOT / "recipes", "tiny", ["stages.stage3.batch_size=3", "stages.stage3.steps=2",
                                                "stages.stage3.warmup_ratio=0", "stages.stage3.packing=true"])
    cfg = recipe.stages.stage3
    assert cfg.packing
    data_dir = tmp_path / "data"
    prepare_dataset(DataConfig(num_scenes=4, num_episodes=0), data_dir)

    padded_model = GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)  # as train_stage builds it
    base = copy.deepcopy(padded_model)
    samples = stage_samples("stage3", padded_model, recipe.model, data_dir)
    assert make_collate(padded_model, True)([samples[i] for i in range(3)])["input_ids"].shape[0] == 1
    padded = train(padded_model, padded_model.module_groups(), type(cfg)(**{**cfg.__dict__, "packing": False}),
                   recipe.runtime, samples, make_collate(padded_model), seed=0, work_dir=tmp_path / "work-padded")

    packed = train_stage("stage3", model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=0,
                         data_dir=data_dir, init_dir=None, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    assert packed["step"] == 2
    assert_same_steps(packed, padded, GemModel.load(str(tmp_path / "out" / "model")), padded_model, base)


def test_packing_is_refused_where_the_action_loss_trains():
    with pytest.raises(InputError, match="stage4.packing cannot train the action loss.*stages.stage4.packing=false"):
        resolve(ROOT / "recipes", "tiny", ["stages.stage4.packing=true"])


def test_loader_workers_feed_the_same_steps(tmp_path):
    """runtime.num_workers: micro-batches collated (packed, here) in worker processes train exactly as in-process."""
    data_dir = tmp_path / "data"
    prepare_dataset(DataConfig(num_scenes=4, num_episodes=0), data_dir)
    losses = {}
    for workers in (0, 2):
        recipe = resolve(ROOT / "recipes", "tiny", ["stages.stage3.steps=3", "stages.stage3.packing=true",
                                                    f"runtime.num_workers={workers}"])
        model = GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)
        samples = stage_samples("stage3", model, recipe.model, data_dir)
        result = train(model, model.module_groups(), recipe.stages.stage3, recipe.runtime, samples,
                       make_collate(model, True), seed=0, work_dir=tmp_path / f"work-{workers}")
        assert result.step == 3
        losses[workers] = result.losses
    assert losses[2] == losses[0] and {"lm", "depth"} <= set(losses[0])
