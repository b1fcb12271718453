import dataclasses

import pytest
import torch

from gem_models.config import ConnectorConfig, tiny_config
from gem_models.connector import Connector
from gem_models.depth_generator import DepthGenerator, split_ref

HIDDEN = 16  # backbone width of the gathered image states
WIDTH = 24  # connector output = the DiT's caption channels


def tiny_depth(space="pixel", **kw) -> DepthGenerator:
    cfg = dataclasses.replace(tiny_config(space=space).depth, **kw)
    return DepthGenerator.build(cfg, caption_channels=WIDTH, seed=0)


def conditions(n, length=5, seed=0):
    """Backbone image states [n, length, HIDDEN] (zeros in padding, as gathered) and their mask."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, length, HIDDEN, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[0, 3:] = False
    return states * mask[..., None], mask


def connector(seed=0, ones_bias=False) -> Connector:
    """A random connector; ones_bias: fc1.bias = 0 and fc2.bias = 1, so connector(0) = RMSNorm(1) = 1/sqrt(1 + eps)
    per channel (gelu(0) = 0, so fc2 sees zeros and returns its bias; the bias has RMS 1)."""
    torch.manual_seed(seed)
    c = Connector(HIDDEN, ConnectorConfig(width=WIDTH, norm_eps=1e-5))
    if ones_bias:
        with torch.no_grad():
            c.fc1.bias.zero_()
            c.fc2.bias.fill_(1.0)
    return c


NULL = 1 / (1 + 1e-5) ** 0.5  # 0.999995: connector(0) with ones_bias


def targets(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in sizes]


def test_split_ref():
    assert split_ref("org/repo::transformer") == ("org/repo", "transformer")
    assert split_ref("/local/dir") == ("/local/dir", None)


def test_scheduler_table_is_plain_rectified_flow():
    dg = tiny_depth()
    assert dg._train_timesteps[0] == 1000 and dg._train_timesteps[999] == 1
    assert torch.allclose(dg._train_sigmas[:1000], dg._train_timesteps / 1000)


def test_flow_loss_matches_hand_computation():
    dg = tiny_depth(cfg_dropout=0.5)
    x = targets([(64, 64), (64, 64)])
    states, mask = conditions(2)
    conn = connector()
    loss, per_image = dg.loss(x, states, mask, torch.Generator().manual_seed(3), conn)

    g = torch.Generator().manual_seed(3)
    expected = []
    for i in range(2):  # the documented draw order: u, dropout, noise per image
        u = torch.rand((), generator=g)
        keep = float(torch.rand((), generator=g) >= 0.5)
        eps = torch.randn(3, 64, 64, generator=g)
        idx = int(u * 1000)
        t = 1000.0 - idx  # FlowMatchEulerDiscreteScheduler (shift 1) table: 1000, 999, ..., 1
        sigma = t / 1000.0
        noisy = (1 - sigma) * x[i] + sigma * eps
        length = int(mask[i].sum())
        pred = dg.transformer(
            noisy[None],
            encoder_hidden_states=conn(states[i : i + 1, :length] * keep),  # dropped: connector(0)
            timestep=torch.tensor([t]),
            encoder_attention_mask=mask[i : i + 1, :length].float(),
        ).sample
        expected.append(((pred[0] - (eps - x[i])) ** 2).mean())
    expected = torch.stack(expected)
    assert torch.allclose(per_image, expected, atol=1e-5)
    assert torch.allclose(loss, expected.mean(), atol=1e-6)


def _spy_conditions(dg, monkeypatch) -> list:
    seen = []
    real = dg.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(dg.transformer, "forward", spy)
    return seen


def test_cfg_dropout_conditions_on_connector_of_zero(monkeypatch):
    """The release's null condition: states zeroed BEFORE the connector, so the DiT sees connector(0) (a learned
    vector, 1/sqrt(1 + 1e-5) = 0.999995 per channel here), not zeros."""
    x, (states, mask) = targets([(64, 64), (64, 64)]), conditions(2)
    conn = connector(ones_bias=True)
    with torch.no_grad():
        assert torch.allclose(conn(torch.zeros(1, 1, HIDDEN)), torch.full((1, 1, WIDTH), NULL), atol=1e-6)
    always = tiny_depth(cfg_dropout=1.0)
    seen = _spy_conditions(always, monkeypatch)
    always.loss(x, states, mask, torch.Generator().manual_seed(0), conn)
    (c,) = seen  # one DiT call for two same-size images
    assert c.shape == (2, 5, WIDTH)
    assert torch.allclose(c, torch.full_like(c, NULL), atol=1e-6)  # every position, padding included
    never = tiny_depth(cfg_dropout=0.0)
    seen = _spy_conditions(never, monkeypatch)
    never.loss(x, states, mask, torch.Generator().manual_seed(0), conn)
    assert torch.allclose(seen[0], conn(states).detach(), atol=1e-6)
    assert not torch.allclose(seen[0][1], torch.full_like(seen[0][1], NULL), atol=1e-2)


def test_dropped_images_still_train_the_connector():
    """connector(0) is learned: with every condition dropped, the loss still reaches fc2's bias (not fc1's weight,
    which multiplies the zeroed states)."""
    x, (states, mask) = targets([(64, 64)]), conditions(1)
    conn = connector()
    tiny_depth(cfg_dropout=1.0).loss(x, states, mask, torch.Generator().manual_seed(0), conn)[0].backward()
    assert conn.fc2.bias.grad.abs().sum() > 0 and conn.norm.weight.grad.abs().sum() > 0
    assert conn.fc1.weight.grad.abs().sum() == 0


def test_mixed_sizes_grouped_equal_one_by_one():
    dg = tiny_depth()
    x = targets([(64, 64), (32, 64), (64, 64)])
    states, mask = conditions(3)
    conn = connector()
    _, together = dg.loss(x, states, mask, torch.Generator().manual_seed(1), conn)
    g = torch.Generator().manual_seed(1)
    single = torch.cat([dg.loss([x[i]], states[i : i + 1], mask[i : i + 1], g, conn)[1] for i in range(3)])
    assert torch.allclose(together, single, atol=1e-5)


def test_latent_space_forward_backward_and_sampling():
    dg = tiny_depth(space="latent", vae_block_out_channels=[8, 16, 16])
    assert dg.spatial_factor == 4 and dg.latent_channels == 4
    assert all(not p.requires_grad for p in dg.vae.parameters()) and dg.vae.use_slicing
    dg.train()
    assert not dg.vae.training and dg.transformer.training
    x = targets([(64, 64), (32, 64)])
    with torch.no_grad():
        z = dg.encode(torch.stack([x[0]]))
    assert z.shape == (1, 4, 16, 16)
    states, mask = conditions(2)
    states.requires_grad_(True)
    conn = connector()
    loss, per_image = dg.loss(x, states, mask, torch.Generator().manual_seed(0), conn)
    loss.backward()
    assert torch.isfinite(loss) and per_image.shape == (2,)
    assert states.grad is not None and states.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dg.transformer.parameters() if p.requires_grad)
    dg.eval()
    out = dg.sample(
        states.detach(),
        mask,
        [(64, 64), (32, 64)],
        conn,
        steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert [tuple(o.shape) for o in out] == [(3, 64, 64), (3, 32, 64)]
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in out)
    again = dg.sample(
        states.detach(),
        mask,
        [(64, 64), (32, 64)],
        conn,
        steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.equal(a, b) for a, b in zip(out, again))


def test_vae_shift_and_scale_applied():
    dg = tiny_depth(space="latent")
    dg.vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    x = targets([(64, 64)])[0][None]
    with torch.no_grad():
        raw = dg.vae.encode(x).latent
        assert torch.allclose(dg.encode(x), (raw - 0.25) * 0.5, atol=1e-6)
        z = torch.randn(1, 4, 16, 16)
        assert torch.allclose(dg.decode(z), dg.vae.decode(z / 0.5 + 0.25).sample, atol=1e-6)


def test_sampler_uses_guidance_and_linspace_sigmas(monkeypatch):
    dg = tiny_depth()
    states, mask = conditions(1)
    conn = connector(ones_bias=True)
    seen = []
    real = dg._dit

    def spy(x, t, c, m):
        seen.append((x.shape[0], t.clone(), c.clone()))
        return real(x, t, c, m)

    monkeypatch.setattr(dg, "_dit", spy)
    dg.sample(states, mask, [(64, 64)], conn, steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    # 4 steps at sigmas 1, 0.75, 0.5, 0.25 (timesteps x1000), each with an unconditional half first whose
    # condition is connector(0) = 0.999995 everywhere (the release's zeros_like(states) through the connector).
    assert [float(s[1][0]) for s in seen] == [1000.0, 750.0, 500.0, 250.0]
    with torch.no_grad():
        cond = conn(states)
    for n, _, c in seen:
        assert n == 2 and torch.allclose(c[0], torch.full_like(c[0], NULL), atol=1e-6)
        assert torch.allclose(c[1], cond[0], atol=1e-6)
    seen.clear()
    dg.sample(states, mask, [(64, 64)], conn, steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert all(s[0] == 1 for s in seen)  # no guidance: conditional pass only


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="multiple_of"):
        tiny_depth(patch_size=3)  # 32 is not a multiple of the 3-pixel DiT patch
    tiny_depth().transformer.save_pretrained(tmp_path / "transformer")
    cfg = dataclasses.replace(tiny_config().depth, pretrained_transformer=f"{tmp_path}::transformer")
    assert DepthGenerator.build(cfg, caption_channels=WIDTH).transformer.config.caption_channels == WIDTH
    with pytest.raises(ValueError, match="caption_channels 24 != connector width 32"):
        DepthGenerator.build(cfg, caption_channels=32)
