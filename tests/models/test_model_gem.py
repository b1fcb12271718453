import dataclasses
import json

import pytest
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from torch import nn
from transformers import AutoModelForImageTextToText

from gem_models.config import tiny_config
from gem_models.gem import GemModel


def vla_batch(model, sample_a, sample_b):
    b = model.processor([sample_a(), sample_b()])
    g = torch.Generator().manual_seed(0)
    b["state"] = torch.randn(2, 8, generator=g)
    b["actions"] = torch.randn(2, 8, 7, generator=g)
    return b


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("action", ["flow", "autoregressive"])
def test_tiny_build_and_all_losses(family, action, sample_a, sample_b):
    model = GemModel.build(tiny_config(family, action=action), seed=0)
    assert (
        type(model.backbone).__name__
        == {
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        }[family]
    )
    batch = vla_batch(model, sample_a, sample_b)
    out = model(batch, {"lm": 1.0, "depth": 0.1, "action": 1.0}, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "lm", "depth", "action"}  # the trainer logs every key
    # parts stay on the device, detached: the trainer reads them only on log steps
    assert all(torch.is_tensor(out[k]) and out[k].ndim == 0 and not out[k].requires_grad
               for k in ("lm", "depth", "action"))
    assert out["loss"].item() == pytest.approx((out["lm"] + 0.1 * out["depth"] + out["action"]).item(), rel=1e-5)
    # A random LM starts near uniform over its vocabulary.
    assert out["lm"].item() == pytest.approx(torch.log(torch.tensor(1024.0)).item(), rel=0.05)
    out["loss"].backward()
    groups = model.module_groups()
    for name in ("merger", "language", "connector", "depth_generator", "action_expert"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name].parameters()), name


def test_only_weighted_parts_are_computed(qwen3_model, sample_a, sample_b):
    batch = vla_batch(qwen3_model, sample_a, sample_b)
    out = qwen3_model(batch, {"depth": 1.0}, torch.Generator().manual_seed(0), per_image=True)
    assert set(out) == {"loss", "depth", "depth_per_image"} and out["depth_per_image"].shape == (3,)
    out = qwen3_model(batch, {"lm": 1.0, "depth": 0.0}, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "lm"}
    with pytest.raises(ValueError, match="unknown loss weights"):
        qwen3_model(batch, {"ce": 1.0}, torch.Generator())
    with pytest.raises(ValueError, match="no loss has a positive weight"):
        qwen3_model(batch, {"lm": 0.0}, torch.Generator())


def test_lm_loss_equals_transformers_loss(qwen3_model, sample_a, sample_b):
    batch = qwen3_model.processor([sample_a(), sample_b()])
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw", "labels")
    with torch.no_grad():
        ref = qwen3_model.backbone(**{k: batch[k] for k in keys}).loss
        ours = qwen3_model(batch, {"lm": 1.0}, torch.Generator())["lm"]
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_parts_without_targets_are_skipped(qwen3_model, sample_a):
    s = sample_a()
    s["depths"] = [None]
    out = qwen3_model(qwen3_model.processor([s]), {"depth": 1.0}, torch.Generator())
    assert "depth" not in out and out["loss"].item() == 0.0
    out["loss"].backward()
    prompt = sample_a()
    prompt["conversations"] = prompt["conversations"][:1]  # no answer tokens
    out = qwen3_model(qwen3_model.processor([prompt]), {"lm": 1.0, "depth": 1.0}, torch.Generator())
    assert "lm" not in out and "depth" in out


def test_a_mixed_batch_learns_depth_from_the_images_that_have_it(qwen3_model, sample_a, sample_b):
    """Stage-3 weights: a batch without any depth target gives the LM loss alone; in a mixed batch the depth loss
    is taken over the images with depth only."""
    weights, gen = {"lm": 1.0, "depth": 0.1}, lambda: torch.Generator().manual_seed(0)
    a, b = sample_a(), sample_b()
    a["depths"], b["depths"] = [None], [None, b["depths"][1]]
    none = qwen3_model(qwen3_model.processor([a]), weights, gen())
    assert set(none) == {"loss", "lm"} and none["loss"].item() == pytest.approx(none["lm"].item())
    mixed = qwen3_model(qwen3_model.processor([a, b]), weights, gen(), per_image=True)
    assert mixed["depth_per_image"].shape == (1,)
    assert mixed["loss"].item() == pytest.approx((mixed["lm"] + 0.1 * mixed["depth"]).item(), rel=1e-5)
    mixed["loss"].backward()


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_module_groups_cover_every_trainable_parameter_once(family):
    model = GemModel.build(tiny_config(family, action="flow", space="latent"), seed=0)
    groups = model.module_groups()
    assert list(groups) == [
        "vision", "merger", "deepstack_merger", "language", "connector", "depth_generator", "action_expert"]
    owner = {}
    for name, module in groups.items():
        for p in module.parameters():
            assert id(p) not in owner, f"parameter in both {owner.get(id(p))} and {name}"
            owner[id(p)] = name
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == set(owner)
    vae = {id(p) for p in model.depth_generator.vae.parameters()}
    assert vae and not (vae & set(owner))  # the frozen VAE is in no group
    visual = model.backbone.model.visual
    assert {id(p) for p in visual.merger.parameters()} == {i for i, n in owner.items() if n == "merger"}
    deepstack = {id(p) for p in getattr(visual, "deepstack_merger_list", nn.ModuleList()).parameters()}
    assert deepstack == {i for i, n in owner.items() if n == "deepstack_merger"}
    assert bool(deepstack) == (family == "qwen3_vl")  # Qwen2.5-VL has no deepstack: an empty group
    assert not any("merger" in n for n, _ in groups["vision"].named_parameters())
    assert {id(p) for p in visual.parameters()} == {
        i for i, n in owner.items() if n in ("vision", "merger", "deepstack_merger")}


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = GemModel.build(tiny_config(action="flow"), seed=0)
    after = torch.rand(1)
    b = GemModel.build(tiny_config(action="flow"), seed=0)
    c = GemModel.build(tiny_config(action="flow"), seed=1)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["connector.fc1.weight"], sc["connector.fc1.weight"])


@pytest.mark.parametrize(
    "family, space, action", [("qwen3_vl", "latent", "flow"), ("qwen2_5_vl", "pixel", "autoregressive")]
)
def test_save_load_round_trip(tmp_path, family, space, action, sample_a, sample_b):
    cfg = tiny_config(family, action=action, space=space)
    model = GemModel.build(cfg, seed=0)
    batch = vla_batch(model, sample_a, sample_b)
    a, st = batch["actions"].reshape(-1, 7) * 3 + 1, batch["state"]
    model.set_action_statistics(
        {
            "count": 16,
            "action": {
                "mean": a.mean(0).tolist(),
                "std": a.std(0).tolist(),
                "min": a.min(0).values.tolist(),
                "max": a.max(0).values.tolist(),
            },
            "state": {
                "mean": st.mean(0).tolist(),
                "std": st.std(0).tolist(),
                "min": st.min(0).values.tolist(),
                "max": st.max(0).values.tolist(),
            },
        }
    )
    batch["action_mask"] = torch.ones(2, 8, dtype=torch.bool)
    batch["action_mask"][1, 6:] = False
    model.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "backbone",
            "depth_generator",
            "connector.safetensors",
            "action_expert.safetensors",
            "gem_config.json",
        ]
    )
    loaded = GemModel.load(str(tmp_path))  # the architecture comes from the checkpoint itself
    assert loaded.cfg == cfg
    assert float(loaded.action_expert.normalizer.action_loc[0]) == pytest.approx(float(a[:, 0].mean()))
    sd, sl = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sl.keys() and all(torch.equal(sd[k], sl[k]) for k in sd)
    weights = {"lm": 1.0, "depth": 0.1, "action": 1.0}
    with torch.no_grad():
        o1 = model(batch, weights, torch.Generator().manual_seed(5))
        o2 = loaded(batch, weights, torch.Generator().manual_seed(5))
    assert all(torch.equal(o1[k], o2[k]) for k in ("lm", "depth", "action"))
    d1 = model.sample_depth(batch, steps=2, generator=torch.Generator().manual_seed(0))
    d2 = loaded.sample_depth(batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(d1, d2))
    p1 = model.predict_actions(batch, torch.Generator().manual_seed(0))
    assert torch.equal(p1, loaded.predict_actions(batch, torch.Generator().manual_seed(0)))
    assert torch.equal(
        loaded.processor([sample_a()])["input_ids"], model.processor([sample_a()])["input_ids"]
    )
    # The parts load with the plain library classes too.
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path / "backbone")
    assert type(hf) is type(model.backbone)
    assert isinstance(
        SanaTransformer2DModel.from_pretrained(tmp_path / "depth_generator" / "transformer"),
        SanaTransformer2DModel,
    )
    if space == "latent":
        assert isinstance(AutoencoderDC.from_pretrained(tmp_path / "depth_generator" / "vae"), AutoencoderDC)
    assert json.loads((tmp_path / "gem_config.json").read_text())["action"]["kind"] == action
    # The matching config is accepted; one that differs from the saved one is refused, naming each field.
    assert GemModel.load(str(tmp_path), cfg).cfg == cfg
    other = dataclasses.replace(cfg, action=dataclasses.replace(cfg.action, chunk_size=4),
                                depth=dataclasses.replace(cfg.depth, num_layers=3))
    with pytest.raises(ValueError, match=r"action.chunk_size: 8 -> 4, depth.num_layers: 2 -> 3$"):
        GemModel.load(str(tmp_path), other)


def test_build_from_pretrained_paths(tmp_path, sample_a):
    """The from_pretrained code path, exercised with a tiny checkpoint saved locally."""
    cfg = tiny_config(space="latent")
    model = GemModel.build(cfg, seed=0)
    model.save(str(tmp_path))
    pre = dataclasses.replace(
        cfg,
        backbone=dataclasses.replace(cfg.backbone, pretrained=str(tmp_path / "backbone")),
        depth=dataclasses.replace(
            cfg.depth,
            pretrained_transformer=f"{tmp_path / 'depth_generator'}::transformer",
            pretrained_vae=str(tmp_path / "depth_generator" / "vae"),
        ),
    )
    again = GemModel.build(pre, seed=99)  # seed only affects the random-init connector
    for name in ("backbone", "depth_generator"):
        a, b = getattr(model, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(model.processor([sample_a()])["input_ids"], again.processor([sample_a()])["input_ids"])
    assert again.processor.image_processor.size["longest_edge"] == cfg.backbone.max_pixels


def test_generate_greedy(qwen3_model, image):
    prompt = {"images": [image()], "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}]}
    batch = qwen3_model.processor([prompt, prompt], padding_side="left")
    out = qwen3_model.generate(batch, max_new_tokens=3)
    assert len(out) == 2 and out[0] == out[1]
    with pytest.raises(ValueError, match="left-padded"):
        qwen3_model.generate(
            qwen3_model.processor(
                [
                    prompt,
                    {
                        "conversations": [
                            {"from": "human", "value": "a much longer prompt without images at all"}
                        ]
                    },
                ]
            ),
            max_new_tokens=1,
        )


def test_vla_starts_from_a_vlm_checkpoint(tmp_path, sample_a):
    vlm_cfg = tiny_config(action="none")
    GemModel.build(vlm_cfg, seed=0).save(str(tmp_path))
    assert not (tmp_path / "action_expert.safetensors").exists()
    vla_cfg = dataclasses.replace(vlm_cfg, action=tiny_config(action="flow").action)
    a, b = GemModel.load(str(tmp_path), vla_cfg, seed=3), GemModel.load(str(tmp_path), vla_cfg, seed=3)
    assert isinstance(a.action_expert, torch.nn.Module)
    assert all(torch.equal(x, y) for x, y in zip(a.action_expert.parameters(), b.action_expert.parameters()))
    assert a.cfg == vla_cfg
    assert GemModel.load(str(tmp_path)).action_expert is None  # without a config: the VLM as saved
