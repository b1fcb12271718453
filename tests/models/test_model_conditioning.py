import pytest
import torch

from gem_models.conditioning import gather_image_tokens, image_token_spans
from gem_models.config import ConnectorConfig, tiny_config
from gem_models.connector import Connector
from gem_models.gem import GemModel

VS, VE, PAD = 3, 4, 5


def test_connector_layers_and_shapes():
    c = Connector(64, ConnectorConfig(width=48, norm_eps=1e-5))
    assert isinstance(c.act, torch.nn.GELU) and c.act.approximate == "tanh"
    assert c.norm.eps == 1e-5 and c.norm.weight.shape == (48,)
    x = torch.randn(3, 7, 64)
    y = c(x)
    assert y.shape == (3, 7, 48)
    # RMSNorm with unit weight: every output vector has RMS 1.
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.ones(3, 7), atol=1e-3)
    manual = torch.nn.functional.gelu(c.fc1(x), approximate="tanh")
    manual = c.fc2(manual)
    manual = manual * torch.rsqrt(manual.pow(2).mean(-1, keepdim=True) + 1e-5) * c.norm.weight
    assert torch.allclose(y, manual, atol=1e-5)


def test_gather_image_tokens_by_hand():
    ids = torch.tensor(
        [
            [9, VS, PAD, PAD, VE, 9, VS, PAD, VE, 0],  # sample 0: images of 2 and 1 tokens, right padded
            [0, 0, 9, VS, PAD, PAD, PAD, VE, 9, 9],  # sample 1: one image of 3 tokens, left padded
        ]
    )
    hidden = torch.arange(2 * 10 * 2, dtype=torch.float32).view(2, 10, 2)
    sample, first, count = image_token_spans(ids, VS, VE)
    assert sample.tolist() == [0, 0, 1] and first.tolist() == [2, 7, 4] and count.tolist() == [2, 1, 3]
    cond, mask = gather_image_tokens(hidden, ids, VS, VE)
    assert cond.shape == (3, 3, 2)
    assert mask.tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    assert torch.equal(cond[0, :2], hidden[0, 2:4]) and torch.equal(cond[1, :1], hidden[0, 7:8])
    assert torch.equal(cond[2], hidden[1, 4:7])
    assert (cond[~mask] == 0).all()


def test_gather_rejects_unbalanced_markers():
    with pytest.raises(ValueError, match="unbalanced"):
        gather_image_tokens(torch.zeros(1, 4, 2), torch.tensor([[VS, PAD, PAD, 9]]), VS, VE)


def test_no_images_gives_empty_conditions():
    cond, mask = gather_image_tokens(torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.long), VS, VE)
    assert cond.shape == (0, 0, 8) and mask.shape == (0, 0)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_conditions_and_depth_loss_batched_equal_per_sample(family, sample_a, sample_b):
    """Two samples with different text lengths, one with 2 images (of 2 sizes), vs each sample alone."""
    model = GemModel.build(tiny_config(family), seed=0)
    proc = model.processor
    both, alone_a, alone_b = proc([sample_a(), sample_b()]), proc([sample_a()]), proc([sample_b()])
    assert both["input_ids"].shape[1] > alone_a["input_ids"].shape[1]  # sample a is padded in the batch

    def conditions(batch):
        last = model.backbone_states(batch).last_hidden_state
        return model.depth_conditions(last, batch["input_ids"])

    with torch.no_grad():
        cond, mask = conditions(both)
        cond_a, _ = conditions(alone_a)
        cond_b, mask_b = conditions(alone_b)
    assert cond.shape[0] == 3 and mask.sum(1).tolist() == [4, 4, 2]
    assert torch.allclose(cond[0, :4], cond_a[0, :4], atol=1e-5)
    assert torch.allclose(cond[1:, :4], cond_b[:, :4], atol=1e-5)
    assert torch.equal(mask[1:, : mask_b.shape[1]], mask_b)

    # Per-image depth losses: the batch consumes the generator image by image, exactly like a then b alone.
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        batched = model(both, {"depth": 1.0}, g, per_image=True)["depth_per_image"]
        g = torch.Generator().manual_seed(7)
        la = model(alone_a, {"depth": 1.0}, g, per_image=True)["depth_per_image"]
        lb = model(alone_b, {"depth": 1.0}, g, per_image=True)["depth_per_image"]
    assert batched.shape == (3,)
    assert torch.allclose(batched, torch.cat([la, lb]), atol=1e-5, rtol=1e-5)
    assert len(set(batched.tolist())) == 3  # really different draws per image


def test_model_null_condition_is_connector_of_zero(sample_a, sample_b, monkeypatch):
    """GemModel drops a condition as the release does, before the connector: with cfg_dropout 1 every condition the
    DiT sees in training is connector(0) at every position; sampling's unconditional half is the same vector."""
    cfg = tiny_config()
    cfg = type(cfg)(**{**cfg.__dict__, "depth": type(cfg.depth)(**{**cfg.depth.__dict__, "cfg_dropout": 1.0})})
    model = GemModel.build(cfg, seed=0)
    batch = model.processor([sample_a(), sample_b()])
    seen = []
    real = model.depth_generator.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(model.depth_generator.transformer, "forward", spy)
    with torch.no_grad():
        null = model.connector(torch.zeros(model.connector.fc1.in_features))
        model(batch, {"depth": 1.0}, torch.Generator().manual_seed(0))
    assert null.abs().sum() > 0  # a learned vector, not the zero condition
    assert sum(c.shape[0] for c in seen) == 3  # the three images, grouped by target size
    for c in seen:
        assert torch.allclose(c, null.expand_as(c), atol=1e-6)
    seen.clear()
    with torch.no_grad():
        conditional, _ = model.depth_conditions(model.backbone_states(batch).last_hidden_state, batch["input_ids"])
        model.sample_depth(batch, steps=1, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    for c in seen:  # [unconditional | conditional] per size group
        uncond, cond = c.chunk(2)
        assert torch.allclose(uncond, null.expand_as(uncond), atol=1e-6)
        assert not torch.allclose(cond, null.expand_as(cond), atol=1e-3)
    assert sum(c.shape[0] for c in seen) == 6
