"""Stage 4 as the released GEM-VLA trains it (train_joint.sh, main_joint.py, train/dataset.py): the prompt, the
condition masking, state noise, the optimiser, what trains and where the depth expert starts."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gem_models.gem import GemModel
from gem_stages.config import EpisodeSamplesConfig, TrainStageConfig
from gem_stages.data.config import DataConfig
from gem_stages.data.generate import prepare_dataset
from gem_stages.data.reader import EpisodeWindows, text_corpus
from gem_stages.train import EpisodeSamples, load_model, make_collate, stage_samples
from gem_stages.trainer import Trainer, lr_lambda, train
from gemctl.recipe import resolve

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    prepare_dataset(DataConfig(num_scenes=4, num_episodes=2, episode_max_steps=30), out)  # cameras front, top
    return out


@pytest.fixture(scope="module")
def recipe():
    return resolve(ROOT / "recipes", "tiny", ["stages.stage4.batch_size=2"])


@pytest.fixture(scope="module")
def model(recipe, data_dir):
    return GemModel.build(recipe.model, corpus=text_corpus(data_dir), seed=0)


def episodes(**kw) -> EpisodeSamplesConfig:
    return EpisodeSamplesConfig(**{"cameras": ["top", "front"], **kw})


def samples_of(data_dir, **kw) -> EpisodeSamples:
    cfg = episodes(**kw)
    return EpisodeSamples(EpisodeWindows(data_dir, 8, cameras=cfg.cameras, history=cfg.image_history), cfg,
                          state_std=[1.0] * 4)


def test_release_prompt_is_the_images_then_the_bare_instruction(data_dir, model):
    sample = samples_of(data_dir, prompt="release")[3]
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        EpisodeWindows(data_dir, 8)[3]["instruction"], "pick up the bowl")
    batch = model.processor([sample])
    n = int(batch["image_grid_thw"][0].prod()) // 4  # tokens per image after the 2x2 merge
    image = "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
    text = model.processor.decode(batch["input_ids"][0].tolist(), skip_special_tokens=False)
    # the release's apply_chat_template(add_generation_prompt=False) of [image, image, text]
    assert text == "<|im_start|>user\n" + image + image + "pick up the bowl<|im_end|>\n"
    question = model.processor([samples_of(data_dir)[3]])
    text = model.processor.decode(question["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\n" + image + "\n" + image + "\nWhat action should the robot take to ")
    assert text.endswith("?<|im_end|>\n<|im_start|>assistant\n")


def test_condition_masking_drops_images_and_the_instruction(data_dir):
    window = EpisodeWindows(data_dir, 8, cameras=["top", "front"])[5]
    top, front = (np.asarray(im) for im in window["images"])
    shown = samples_of(data_dir, cond_mask_prob=0.0).draw(5, seed=1)
    assert [np.array_equal(np.asarray(a), b) for a, b in zip(shown["images"], (top, front))] == [True, True]
    assert shown["depths"][0] is not None and shown["depths"][1] is None  # the first camera's depth
    assert window["instruction"] in shown["conversations"][0]["value"]
    gone = samples_of(data_dir, cond_mask_prob=1.0, prompt="release").draw(5, seed=1)
    assert gone["images"] == [] and gone["depths"] == [] and gone["conversations"][0]["value"] == ""
    ext = samples_of(data_dir, cond_mask_prob=0.0, cam_ext_mask_prob=1.0).draw(5, seed=1)
    assert len(ext["images"]) == 1 and np.array_equal(np.asarray(ext["images"][0]), front)
    assert ext["depths"] == [None]  # the depth target went with the exterior camera
    # p = 0.1 per image and for the instruction: 600 of 3 x 2000 chances, +- 4.2 sigma
    s = samples_of(data_dir, cond_mask_prob=0.1, prompt="release")
    draws = [s.draw(5, seed) for seed in range(2000)]
    instruction = window["instruction"]
    dropped = sum(2 - len(d["images"]) + (not d["conversations"][0]["value"].endswith(instruction)) for d in draws)
    assert 500 < dropped < 700


class FakeWindows(list):
    cameras = ["cam"]


def test_state_noise_at_snr_40_is_a_hundredth_of_the_state_std():
    window = {"images": [Image.new("RGB", (8, 8))], "depth": None, "state": np.array([1.0, -2.0], np.float32),
              "actions": np.zeros((4, 2), np.float32), "instruction": "go"}
    s = EpisodeSamples(FakeWindows([window]), EpisodeSamplesConfig(state_noise_snr=40.0), state_std=[2.0, 0.5])
    noise = np.stack([s.draw(0, seed)["state"] for seed in range(4000)]) - window["state"]
    # sigma = std / sqrt(10^(40/10)) = std / 100
    assert noise.std(0) == pytest.approx([0.02, 0.005], rel=0.05)
    assert np.abs(noise.mean(0)).max() < 0.002
    assert np.array_equal(s[0]["state"], window["state"])  # samples[i]: no draw, no noise
    quiet = EpisodeSamples(FakeWindows([window]), EpisodeSamplesConfig(), state_std=[2.0, 0.5])
    assert np.array_equal(quiet.draw(0, 7)["state"], window["state"])


def test_gem2b_stage4_is_the_released_script():
    gem = resolve(ROOT / "recipes", "gem-2b", [])
    s4 = gem.stages.stage4
    assert sorted(s4.trainable) == sorted(["vision", "merger", "deepstack_merger", "language", "connector",
                                           "depth_generator", "action_expert"])
    assert (s4.lr, s4.schedule, s4.warmup_ratio, s4.weight_decay, s4.batch_size, s4.max_grad_norm) == \
        (1e-5, "constant", 0.0, 0.01, 16, 1.0)
    assert (s4.loss.action, s4.loss.depth, s4.loss.lm) == (1.0, 0.1, 0.0)
    assert s4.depth_init == "base"
    e = s4.episodes
    assert (len(e.cameras), e.image_history, e.prompt, e.image_aug, e.state_noise_snr, e.cond_mask_prob,
            e.cam_ext_mask_prob) == (2, 1, "release", True, 40.0, 0.1, -1.0)
    assert gem.model.action.normalization == "min_max" and gem.model.depth.cfg_dropout == 0.1


def test_gem2b_stage4_optimizer_is_adamw_wd_0_01_at_a_constant_1e_5(recipe, data_dir, model, tmp_path):
    gem = resolve(ROOT / "recipes", "gem-2b", [])
    cfg = TrainStageConfig(**{**gem.stages.stage4.__dict__, "batch_size": 2, "steps": 1000,
                              "episodes": episodes()})
    m = copy.deepcopy(model)
    trainer = Trainer(m, m.module_groups(), cfg, recipe.runtime, stage_samples("stage4", m, recipe.model, data_dir,
                      cfg), make_collate(m), seed=0, work_dir=tmp_path / "w")
    (group,) = trainer.optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-5, 0.01, (0.9, 0.999), 1e-8)
    f = lr_lambda(cfg.schedule, 0, 1000)
    assert [f(0), f(1), f(1000)] == [1.0, 1.0, 1.0]


def test_gem2b_stage4_trains_every_part_but_the_vae(data_dir, tmp_path):
    gem = resolve(ROOT / "recipes", "gem-2b", [])
    tiny = resolve(ROOT / "recipes", "tiny", ["model.depth.space=latent", "model.depth.patch_size=1"])
    m = GemModel.build(tiny.model, corpus=text_corpus(data_dir), seed=0)
    cfg = TrainStageConfig(**{**gem.stages.stage4.__dict__, "batch_size": 2, "steps": 2, "lr": 1e-3,
                              "episodes": EpisodeSamplesConfig(**{**gem.stages.stage4.episodes.__dict__,
                                                                  "cameras": ["front", "top"]})})
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    vae = {n: p.detach().clone() for n, p in m.depth_generator.vae.named_parameters()}
    owner = {id(p): g for g, module in m.module_groups().items() for p in module.parameters()}
    train(m, m.module_groups(), cfg, tiny.runtime, stage_samples("stage4", m, tiny.model, data_dir, cfg),
          make_collate(m), seed=0, work_dir=tmp_path / "w")
    moved = {owner.get(id(p), "none") for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {"vision", "merger", "deepstack_merger", "language", "connector", "depth_generator",
                     "action_expert"}
    assert all(torch.equal(vae[n], p) for n, p in m.depth_generator.vae.named_parameters())
    # as the release's [p for p in joint_model.parameters() if p.requires_grad]: everything but the frozen VAE
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == {f"depth_generator.vae.{n}" for n in vae}


def test_depth_init_base_restarts_the_depth_expert_from_the_base_model(recipe, data_dir, model, tmp_path):
    stage3 = copy.deepcopy(model)
    with torch.no_grad():  # stand-in for stages 1-3 having trained the connector and the DiT
        for p in [*stage3.connector.parameters(), *stage3.depth_generator.transformer.parameters()]:
            p.add_(0.5)
        for p in stage3.backbone.parameters():
            p.add_(0.25)
    stage3.save(str(tmp_path / "stage3"))

    def load(depth_init):
        cfg = TrainStageConfig(**{**recipe.stages.stage4.__dict__, "depth_init": depth_init})
        return load_model("stage4", recipe.model, cfg, 0, data_dir, tmp_path / "stage3")

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    previous, base = load("previous"), load("base")
    assert same(previous.connector, stage3.connector) and same(previous.depth_generator.transformer,
                                                               stage3.depth_generator.transformer)
    # the base model (seed 0): a fresh connector, the configured DiT init; the VLM is stage 3's either way
    assert same(base.connector, model.connector) and same(base.depth_generator.transformer,
                                                          model.depth_generator.transformer)
    assert not same(base.connector, stage3.connector)
    assert same(base.backbone, stage3.backbone) and same(previous.backbone, stage3.backbone)


class Draws(list):
    def draw(self, i, seed):
        return (i, seed)


def test_random_draws_are_seeded_by_position_in_the_sample_stream():
    from gem_stages.trainer import MicroBatches

    samples = Draws(range(5))
    one = MicroBatches(samples, list, batch_size=2, seed=3)
    ranks = [MicroBatches(samples, list, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    stream = [d for m in range(6) for d in one[m]]
    assert [d for m in range(3) for r in ranks for d in r[m]] == stream  # 2 ranks see what 1 process sees
    assert one[4] == MicroBatches(samples, list, batch_size=2, seed=3)[4]  # resuming at m replays it
    assert len({seed for _, seed in stream}) == 12  # a fresh seed per position, also for a repeated sample
    assert sorted(i for i, _ in stream[:10]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two epochs
