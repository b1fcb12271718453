import dataclasses

import pytest
import torch

from gem_models.config import tiny_config
from gem_models.depth_generator import DepthGenerator, split_ref

WIDTH = 24


def tiny_depth(space="pixel", **kw) -> DepthGenerator:
    cfg = dataclasses.replace(tiny_config(space=space).depth, **kw)
    return DepthGenerator.build(cfg, caption_channels=WIDTH, seed=0)


def conditions(n, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, length, WIDTH, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[0, 3:] = False
    return cond, mask


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
    cond, mask = conditions(2)
    loss, per_image = dg.loss(x, cond, mask, torch.Generator().manual_seed(3))

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
            encoder_hidden_states=cond[i : i + 1, :length] * keep,
            timestep=torch.tensor([t]),
            encoder_attention_mask=mask[i : i + 1, :length].float(),
        ).sample
        expected.append(((pred[0] - (eps - x[i])) ** 2).mean())
    expected = torch.stack(expected)
    assert torch.allclose(per_image, expected, atol=1e-5)
    assert torch.allclose(loss, expected.mean(), atol=1e-6)


def test_cfg_dropout_zeroes_the_condition():
    x, (cond, mask) = targets([(64, 64)]), conditions(1)
    always = tiny_depth(cfg_dropout=1.0)
    never = tiny_depth(cfg_dropout=0.0)
    l_drop = always.loss(x, cond, mask, torch.Generator().manual_seed(0))[0]
    l_zero = never.loss(x, torch.zeros_like(cond), mask, torch.Generator().manual_seed(0))[0]
    l_keep = never.loss(x, cond, mask, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(l_drop, l_zero) and not torch.allclose(l_drop, l_keep)


def test_mixed_sizes_grouped_equal_one_by_one():
    dg = tiny_depth()
    x = targets([(64, 64), (32, 64), (64, 64)])
    cond, mask = conditions(3)
    _, together = dg.loss(x, cond, mask, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    single = torch.cat([dg.loss([x[i]], cond[i : i + 1], mask[i : i + 1], g)[1] for i in range(3)])
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
    cond, mask = conditions(2)
    cond.requires_grad_(True)
    loss, per_image = dg.loss(x, cond, mask, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and per_image.shape == (2,)
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dg.transformer.parameters() if p.requires_grad)
    dg.eval()
    out = dg.sample(
        cond.detach(),
        mask,
        [(64, 64), (32, 64)],
        steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert [tuple(o.shape) for o in out] == [(3, 64, 64), (3, 32, 64)]
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in out)
    again = dg.sample(
        cond.detach(),
        mask,
        [(64, 64), (32, 64)],
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
    cond, mask = conditions(1)
    seen = []
    real = dg._dit

    def spy(x, t, c, m):
        seen.append((x.shape[0], t.clone(), c.clone()))
        return real(x, t, c, m)

    monkeypatch.setattr(dg, "_dit", spy)
    dg.sample(cond, mask, [(64, 64)], steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    # 4 steps at sigmas 1, 0.75, 0.5, 0.25 (timesteps x1000), each with an unconditional (zero) half.
    assert [float(s[1][0]) for s in seen] == [1000.0, 750.0, 500.0, 250.0]
    assert all(s[0] == 2 and (s[2][0] == 0).all() and torch.equal(s[2][1], cond[0]) for s in seen)
    seen.clear()
    dg.sample(cond, mask, [(64, 64)], steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert all(s[0] == 1 for s in seen)  # no guidance: conditional pass only


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="multiple_of"):
        tiny_depth(patch_size=3)  # 32 is not a multiple of the 3-pixel DiT patch
    tiny_depth().transformer.save_pretrained(tmp_path / "transformer")
    cfg = dataclasses.replace(tiny_config().depth, pretrained_transformer=f"{tmp_path}::transformer")
    assert DepthGenerator.build(cfg, caption_channels=WIDTH).transformer.config.caption_channels == WIDTH
    with pytest.raises(ValueError, match="caption_channels 24 != connector width 32"):
        DepthGenerator.build(cfg, caption_channels=32)
