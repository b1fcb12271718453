"""The four training stages on the real tiny GEM model and gem-synth data: freeze spec, exact resume, errors."""

import logging
from pathlib import Path

import pytest
import torch

from gem_models.gem import GemModel
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import GemSamples
from gem_stages.errors import InputError
from gem_stages.train import make_collate, stage_samples, train_stage
from gem_stages.trainer import train
from gemctl.recipe import resolve

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recipe():
    return resolve(ROOT / "recipes", "tiny", ["stages.stage1.batch_size=2", "stages.stage2.batch_size=2",
                                              "stages.stage3.batch_size=2", "stages.stage4.batch_size=2"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    prepare_dataset(DataConfig(num_scenes=6, num_episodes=2, episode_max_steps=30), out)
    return out


@pytest.fixture(scope="module")
def base_model(recipe, data_dir):
    from gem_stages.data.reader import text_corpus

    return GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def group_of(model) -> dict[str, str]:
    owner = {}
    for group, module in model.module_groups().items():
        for p in module.parameters():
            owner[id(p)] = group
    return {n: owner.get(id(p), "none") for n, p in model.named_parameters()}


def train_and_check_freeze(stage, cfg, recipe, data_dir, base_model, work_dir):
    """Train 2 steps of `stage` with `cfg`; assert no parameter outside cfg.trainable moved and return the model and
    the groups whose parameters did."""
    import copy

    model = copy.deepcopy(base_model)
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 2, "warmup_ratio": 0.0})
    samples = stage_samples(stage, model, recipe.model, data_dir)
    before, owner = snapshot(model), group_of(model)
    train(model, model.module_groups(), cfg, recipe.runtime, samples, make_collate(model), seed=0, work_dir=work_dir)
    changed_groups = set()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if owner[name] not in cfg.trainable:
            assert not moved, f"{stage}: frozen parameter {name} ({owner[name]}) changed"
        elif moved:
            changed_groups.add(owner[name])
    return model, changed_groups


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3", "stage4"])
def test_only_the_freeze_spec_trains(stage, recipe, data_dir, base_model, tmp_path):
    cfg = getattr(recipe.stages, stage)
    _, changed_groups = train_and_check_freeze(stage, cfg, recipe, data_dir, base_model, tmp_path / "w")
    assert changed_groups == set(cfg.trainable), f"{stage}: trained {changed_groups}, spec {cfg.trainable}"


# Stage 3's trainable set, written out by hand: the paper's table (LLM + mergers + connector + DiT) in gem-2b; the
# released script (scripts/train.sh: tune_mm_mlp True, tune_mm_llm True, tune_connector/generator/mm_vision False;
# train_qwen.py set_model unfreezes visual.merger only, so the deepstack mergers stay frozen) in gem-2b-release.
STAGE3_TRAINABLE = {
    "gem-2b": {"merger", "deepstack_merger", "language", "connector", "depth_generator"},
    "gem-2b-release": {"merger", "language"},
}


@pytest.mark.parametrize("name", sorted(STAGE3_TRAINABLE))
def test_stage3_trains_what_each_gem_2b_recipe_says(name, recipe, data_dir, base_model, tmp_path):
    spec = resolve(ROOT / "recipes", name).stages.stage3.trainable
    assert set(spec) == STAGE3_TRAINABLE[name]
    # the paper-scale spec on the tiny model, with the tiny recipe's own step settings
    cfg = type(recipe.stages.stage3)(**{**recipe.stages.stage3.__dict__, "trainable": spec})
    model, changed = train_and_check_freeze("stage3", cfg, recipe, data_dir, base_model, tmp_path / "w")
    assert changed == STAGE3_TRAINABLE[name]
    # tiny Qwen3-VL: 2 ViT blocks -> one deepstack merger at block 0: LayerNorm(4*32) 256 + Linear(128, 128) 16,512
    # + Linear(128, 64) 8,256 = 25,024 parameters, trained by the paper's spec and frozen by the release's.
    deepstack = dict(base_model.backbone.model.visual.deepstack_merger_list.named_parameters())
    assert sum(p.numel() for p in deepstack.values()) == 25_024
    moved = {n for n, p in model.backbone.model.visual.deepstack_merger_list.named_parameters()
             if not torch.equal(p.detach(), deepstack[n])}
    assert bool(moved) == (name == "gem-2b")


def test_stage3_resume_is_exact(recipe, data_dir, base_model, tmp_path):
    import copy

    cfg = recipe.stages.stage3
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 4, "grad_accum": 2})

    def run(work, stop_after=None):
        model = copy.deepcopy(base_model)
        calls = {"n": 0}

        def should_stop():
            calls["n"] += 1
            return stop_after is not None and calls["n"] > stop_after

        samples = stage_samples("stage3", model, recipe.model, data_dir)
        result = train(model, model.module_groups(), cfg, recipe.runtime, samples, make_collate(model), seed=3,
                       work_dir=work, should_stop=should_stop)
        return model, result

    ref, _ = run(tmp_path / "ref")
    _, stopped = run(tmp_path / "resume", stop_after=2)
    assert stopped.status == "preempted" and stopped.step == 2
    resumed, done = run(tmp_path / "resume")
    assert done.resumed_from == 2 and done.step == 4
    ref_state, new_state = ref.state_dict(), resumed.state_dict()
    assert ref_state.keys() == new_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k


def test_stage_writes_loadable_checkpoint_atomically(recipe, data_dir, tmp_path, capfd, caplog):
    cfg = recipe.stages.stage1
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 2, "checkpoint_every": 1})
    out = tmp_path / "stage1"
    summary = train_stage("stage1", model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=0,
                          data_dir=data_dir, init_dir=None, out_dir=out, work_dir=tmp_path / "w")
    assert summary["status"] == "completed" and summary["step"] == 2
    # a resumable checkpoint and the stage's model were written: the output is the stage's own lines only
    # (no tied-weights warning from safetensors, no transformers progress bars)
    captured = capfd.readouterr()
    assert [line for line in (captured.out + captured.err).splitlines() if not line.startswith("[stage1]")] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sorted(p.name for p in out.iterdir()) == ["model", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stage1")]  # no temp folder left behind
    # the parts load with the libraries' own from_pretrained
    from diffusers import SanaTransformer2DModel
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(out / "model" / "backbone")
    SanaTransformer2DModel.from_pretrained(out / "model" / "depth_generator" / "transformer")


def test_stage4_without_action_expert_is_refused(recipe, data_dir, base_model):
    model_cfg = type(recipe.model)(**{**recipe.model.__dict__,
                                      "action": type(recipe.model.action)(kind="none")})
    with pytest.raises(InputError, match="model.action.kind is 'none'"):
        stage_samples("stage4", base_model, model_cfg, data_dir)


def test_stage4_trains_the_autoregressive_expert_too(data_dir, tmp_path):
    from gem_stages.data.reader import text_corpus

    recipe = resolve(ROOT / "recipes", "tiny", ["model.action.kind=autoregressive", "stages.stage4.batch_size=2",
                                                 "stages.stage4.steps=20", "stages.stage4.lr=3e-3"])
    model = GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)
    samples = stage_samples("stage4", model, recipe.model, data_dir)
    from gem_stages.tracker import ListTracker

    tracker = ListTracker()
    result = train(model, model.module_groups(), recipe.stages.stage4, recipe.runtime, samples, make_collate(model),
                   seed=0, work_dir=tmp_path / "w", tracker=tracker)
    actions = [m["action"] for _, m in tracker.points]
    assert result.step == 20 and len(actions) == 20
    assert sum(actions[-5:]) / 5 < 0.8 * sum(actions[:5]) / 5  # the teacher-forced action loss goes down


def test_a_stage_can_set_its_own_depth_target_size(recipe, data_dir, tmp_path):
    cfg = recipe.stages.stage1
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 1, "depth_long_side": 32})
    out = tmp_path / "stage1"
    train_stage("stage1", model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=0,
                data_dir=data_dir, init_dir=None, out_dir=out, work_dir=tmp_path / "w")
    import json

    from gem_models.processor import SETTINGS_FILE, GemProcessor

    settings = json.loads((out / "model" / "backbone" / SETTINGS_FILE).read_text())
    assert settings["depth_long_side"] == 32  # the stage trained on 32-pixel targets
    processor = GemProcessor.from_pretrained(str(out / "model" / "backbone"))
    samples = GemSamples(data_dir)
    batch = processor([samples[0], samples[1]])
    assert {tuple(t.shape[-2:]) for t in batch["depth_pixel_values"]} == {(32, 32)}


def test_a_model_section_that_differs_from_the_parent_checkpoint_is_refused(recipe, data_dir, base_model, tmp_path):
    import dataclasses

    from gem_stages.train import load_model

    base_model.save(str(tmp_path / "parent"))
    same = load_model("stage2", recipe.model, recipe.stages.stage2, 0, data_dir, tmp_path / "parent")
    assert same.cfg == recipe.model
    changed = dataclasses.replace(recipe.model, depth=dataclasses.replace(recipe.model.depth, num_layers=3))
    with pytest.raises(InputError, match=r"depth.num_layers: 2 -> 3: .*-o stages.stage2.init=base$"):
        load_model("stage2", changed, recipe.stages.stage2, 0, data_dir, tmp_path / "parent")


def test_own_data_with_and_without_depth_trains_stage1_then_stage3(recipe, tmp_path, capfd, caplog):
    """Mixed data: a set whose depth is partly missing and stored as x.png for x.jpg, beside a set without any.
    Batches without a depth target train the LM alone (stage 3) or nothing (stage 1); none is logged as a 0 loss."""
    from gem_stages.tracker import ListTracker
    from tests.data.own_data import make_own_sets

    data_dir = tmp_path / "data"
    prepare_dataset(DataConfig(source="files", files=list(make_own_sets(tmp_path / "own"))), data_dir)
    assert "[data] set scenes: 9/12 images with depth" in capfd.readouterr().err

    def run(stage, steps, init_dir):
        cfg = getattr(recipe.stages, stage)
        cfg = type(cfg)(**{**cfg.__dict__, "steps": steps, "checkpoint_every": 1, "warmup_ratio": 0.0})
        tracker = ListTracker()
        summary = train_stage(stage, model_cfg=recipe.model, stage_cfg=cfg, runtime=recipe.runtime, seed=0,
                              data_dir=data_dir, init_dir=init_dir, out_dir=tmp_path / stage,
                              work_dir=tmp_path / f"w-{stage}", tracker=tracker)
        assert summary["status"] == "completed" and summary["step"] == steps, summary
        return summary, [m for _, m in tracker.points]

    s1, points1 = run("stage1", 6, None)
    # stage 1 learns depth only: a step without depth targets logs no loss at all, never a made-up 0
    assert all(set(p) in ({"lr"}, {"lr", "loss", "depth"}) for p in points1)
    assert {"lr"} in [set(p) for p in points1] and all(p["loss"] > 0 for p in points1 if "loss" in p)
    assert set(s1["losses"]) == {"loss", "depth"} and s1["losses"]["loss"] == pytest.approx(s1["losses"]["depth"])

    s3, points3 = run("stage3", 6, tmp_path / "stage1" / "model")
    # the joint stage: every step has answers (LM loss); steps whose samples have depth add 0.1 x the depth loss
    assert all("lm" in p for p in points3)
    lm_only = [p for p in points3 if "depth" not in p]
    assert lm_only and all(p["loss"] == pytest.approx(p["lm"]) for p in lm_only)
    assert any("depth" in p for p in points3)
    assert set(s3["losses"]) == {"loss", "lm", "depth"}
    # no library noise at any checkpoint save (tied weights) or load: the stages' own lines only
    captured = capfd.readouterr()
    assert [line for line in (captured.out + captured.err).splitlines()
            if not line.startswith(("[stage1]", "[stage3]"))] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_two_ranks_train_mixed_depth_data_as_one_process(recipe, tmp_path):
    """Data-parallel on mixed data: at some step one rank's micro-batch has a depth target and the other's has none
    (its depth generator gets no gradient). The job completes, and ends where one process accumulating both ranks'
    micro-batches ends."""
    import dataclasses
    from functools import partial

    import cloudpickle

    from gemctl.launch import Resources, launch
    from tests.conftest import TEST_PREFIX
    from tests.data.own_data import NONE, SCENE_DEPTH, make_own_sets
    from tests.training import ddp_job

    cloudpickle.register_pickle_by_value(ddp_job)
    data_dir = tmp_path / "data"
    prepare_dataset(DataConfig(source="files", files=list(make_own_sets(tmp_path / "own"))), data_dir)
    cfg = dataclasses.replace(recipe.stages.stage3, steps=4, batch_size=1, warmup_ratio=0.0, checkpoint_every=0)

    def args(name, grad_accum):
        return dict(stage="stage3", model_cfg=recipe.model, stage_cfg=dataclasses.replace(cfg, grad_accum=grad_accum),
                    runtime=recipe.runtime, seed=recipe.seed, data_dir=data_dir, init_dir=None,
                    out_dir=tmp_path / name / "out", work_dir=tmp_path / name / "work")

    union = ddp_job.recorded_stage(**args("union", 2))
    job = partial(ddp_job.gem_stage_job, 2, **args("ddp", 1))
    result = launch(job, kind="local", resources=Resources(tasks_per_node=2, cpus_per_task=1, time_min=10),
                    job_dir=tmp_path / "jobs", name=TEST_PREFIX + "mixed-depth")
    assert result.ok, result.log_tail()
    ranks = result.values
    assert all(r["summary"]["status"] == "completed" and r["summary"]["step"] == 4 for r in ranks)

    def has_depth(sample_id: str) -> bool:
        return sample_id.startswith("scene") and SCENE_DEPTH[int(sample_id[len("scene"):])] != NONE

    steps = list(zip(*(r["micro_batches"] for r in ranks)))
    assert any(has_depth(a[0]) != has_depth(b[0]) for a, b in steps), steps  # the case this test is about
    for k, w in ranks[0]["weights"].items():
        torch.testing.assert_close(w, union["weights"][k], atol=1e-6, rtol=1e-5, msg=k)
