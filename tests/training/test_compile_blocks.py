"""runtime.compile_blocks: a stage whose LLM, ViT and DiT blocks are torch.compile'd takes the steps the eager
stage takes, and writes a checkpoint with the eager model's parameter names."""

import copy
from pathlib import Path

import pytest
import torch

from gem_models.gem import GemModel
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import text_corpus
from gem_stages.train import make_collate, stage_samples, train_stage
from gem_stages.trainer import train
from gemctl.recipe import resolve

from .same_steps import assert_same_steps

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_stage_with_compiled_blocks_steps_as_the_eager_one(tmp_path):
    from torch._dynamo.utils import counters

    recipe = resolve(ROOT / "recipes", "tiny", ["stages.stage3.batch_size=2", "stages.stage3.steps=2",
                                                "stages.stage3.warmup_ratio=0", "runtime.compile_blocks=true",
                                                "runtime.gradient_checkpointing=true"])
    cfg = recipe.stages.stage3
    data_dir = tmp_path / "data"
    prepare_dataset(DataConfig(num_scenes=4, num_episodes=0), data_dir)

    eager_model = GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)  # as train_stage builds it
    base = copy.deepcopy(eager_model)
    eager_model.enable_gradient_checkpointing()
    samples = stage_samples("stage3", eager_model, recipe.model, data_dir)
    eager = train(eager_model, eager_model.module_groups(), cfg, recipe.runtime, samples, make_collate(eager_model),
                  seed=0, work_dir=tmp_path / "work-eager")

    torch._dynamo.reset()
    counters.clear()
    compiled = train_stage("stage3", model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=0,
                           data_dir=data_dir, init_dir=None, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    # dynamo captured graphs: the blocks did run compiled (an eager run leaves the counters empty)
    assert counters["stats"]["unique_graphs"] >= 3, dict(counters["stats"])
    assert compiled["step"] == 2
    # the eager class reads the checkpoint: the same parameter names (nothing wrapped by the compiler)
    assert_same_steps(compiled, eager, GemModel.load(str(tmp_path / "out" / "model")), eager_model, base)


def test_compile_blocks_compiles_every_block_in_place():
    recipe = resolve(ROOT / "recipes", "tiny")
    model = GemModel.build(recipe.model, corpus=["a tiny corpus"], seed=0)
    names = [n for n, _ in model.named_parameters()]
    model.compile_blocks()
    blocks = [*model.backbone.model.language_model.layers, *model.backbone.model.visual.blocks,
              *model.depth_generator.transformer.transformer_blocks]
    assert len(blocks) == 2 + 2 + 2  # tiny: 2 decoder layers, vision depth 2, 2 DiT layers
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert [n for n, _ in model.named_parameters()] == names  # nothing wrapped: no _orig_mod in any name


def test_gradient_checkpointing_reaches_the_llm_vit_and_dit_without_a_deprecation_warning(recwarn):
    model = GemModel.build(resolve(ROOT / "recipes", "tiny").model, corpus=["a tiny corpus"], seed=0)
    model.enable_gradient_checkpointing()
    assert all(layer.gradient_checkpointing for layer in model.backbone.model.language_model.layers)
    assert model.backbone.model.visual.gradient_checkpointing and model.depth_generator.transformer.gradient_checkpointing
    assert not [w for w in recwarn if "checkpointing" in str(w.message)], [str(w.message) for w in recwarn]
