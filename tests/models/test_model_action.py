import dataclasses

import pytest
import torch

from gem_models.action_autoregressive import AutoregressiveActionExpert
from gem_models.action_flow import FlowActionExpert, resolve_vlm_layers
from gem_models.action_normalization import ActionNormalizer
from gem_models.config import ActionExpertConfig, tiny_config

from .test_model_action_rdt import perturb_zero_init

VLM, N_STATES, B, L = 32, 3, 4, 9


def cfg(kind, **kw) -> ActionExpertConfig:
    return dataclasses.replace(tiny_config(action=kind).action, **kw)


def fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(B, L, VLM, generator=g) for _ in range(N_STATES))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 6:] = 0
    state = torch.randn(B, 8, generator=g) * 3 + 1
    t = torch.linspace(0, 1, 8)
    actions = torch.stack([torch.sin(t[:, None] * (i + 1) + torch.arange(7)) for i in range(B)]) * 2 + 5
    return hidden, mask, state, actions


def build(kind, **kw):
    torch.manual_seed(0)
    c = cfg(kind, **kw)
    return FlowActionExpert(c, VLM, N_STATES) if kind == "flow" else AutoregressiveActionExpert(c, VLM)


def test_normalizer_modes_and_round_trip():
    x = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 7.0], [4.0, 1.0, 9.0]])
    n = ActionNormalizer(3, 2, "mean_std")
    n.set_stats(x, torch.zeros(3, 2))
    assert torch.allclose(n.action_loc, torch.tensor([2.0, 1.0, 7.0]))
    std = (8 / 3) ** 0.5
    assert torch.allclose(n.action_scale, torch.tensor([std, 1.0, std]))  # constant dim -> scale 1
    assert torch.allclose(n.unnormalize_actions(n.normalize_actions(x)), x, atol=1e-6)
    m = ActionNormalizer(3, 2, "min_max")
    m.set_stats(x[None], torch.zeros(3, 2))  # any leading dims
    assert torch.allclose(m.normalize_actions(x)[:, [0, 2]], torch.tensor([[-1.0, -1], [0, 0], [1, 1]]))
    assert set(dict(m.named_buffers())) == {"action_loc", "action_scale", "state_loc", "state_scale"}


def test_vlm_layer_resolution():
    assert resolve_vlm_layers(cfg("flow", num_layers=4), 3) == [0, 1, 2, 2]
    assert resolve_vlm_layers(cfg("flow", num_layers=14), 29) == list(
        range(14)
    )  # paper: layer i -> VLM layer i
    assert resolve_vlm_layers(cfg("flow", num_layers=2, vlm_layers=[2, 1]), 3) == [2, 1]
    with pytest.raises(ValueError, match="out of range"):
        resolve_vlm_layers(cfg("flow", num_layers=2, vlm_layers=[0, 3]), 3)
    with pytest.raises(ValueError, match="entries"):
        resolve_vlm_layers(cfg("flow", num_layers=2, vlm_layers=[0]), 3)


@pytest.mark.parametrize("kind", ["flow", "autoregressive"])
def test_expert_trains_on_a_fixed_batch(kind):
    expert = build(kind)
    hidden, mask, state, actions = fixed_batch()
    expert.normalizer.set_stats(actions, state)
    opt = torch.optim.AdamW(expert.parameters(), lr=3e-3)

    def eval_loss():
        with torch.no_grad():  # same draws every time, so the numbers are comparable
            return float(expert.loss(hidden, mask, state, actions, torch.Generator().manual_seed(123)))

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = expert.loss(hidden, mask, state, actions, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)
    pred = expert.predict(hidden, mask, state, torch.Generator().manual_seed(0))
    assert pred.shape == (B, 8, 7)
    # Predictions come back in raw units (around the data's mean of 5), not normalised ones.
    assert abs(float(pred.mean()) - float(actions.mean())) < 1.0


@pytest.mark.parametrize("kind", ["flow", "autoregressive"])
def test_predict_unnormalizes(kind):
    expert = build(kind)
    hidden, mask, state, _ = fixed_batch()
    base = expert.predict(hidden, mask, state, torch.Generator().manual_seed(0))
    expert.normalizer.action_loc.fill_(10.0)
    expert.normalizer.action_scale.fill_(2.0)
    scaled = expert.predict(hidden, mask, state, torch.Generator().manual_seed(0))
    assert torch.allclose(scaled, base * 2 + 10, atol=1e-5)


def test_flow_reads_only_its_vlm_layers_and_ignores_padding():
    expert = build("flow", num_layers=2, vlm_layers=[2, 2])
    perturb_zero_init(expert)  # a fresh RDT outputs 0 whatever its context
    hidden, mask, state, _ = fixed_batch()
    ref = expert.predict(hidden, mask, state, torch.Generator().manual_seed(0))
    other_layer = (hidden[0] + 5, hidden[1] + 5, hidden[2])
    assert torch.equal(expert.predict(other_layer, mask, state, torch.Generator().manual_seed(0)), ref)
    padded = list(hidden)
    padded[2] = hidden[2].clone()
    padded[2][0, 6:] += 100.0  # positions masked out for sample 0
    assert torch.allclose(
        expert.predict(tuple(padded), mask, state, torch.Generator().manual_seed(0)), ref, atol=1e-5
    )
    used = (hidden[0], hidden[1], hidden[2] + 1)
    assert not torch.allclose(expert.predict(used, mask, state, torch.Generator().manual_seed(0)), ref)


def test_autoregressive_is_causal():
    """Teacher-forced outputs at step k must not depend on actions at steps >= k."""
    expert = build("autoregressive")
    hidden, mask, state, actions = fixed_batch()
    a = expert.normalizer.normalize_actions(actions)
    s = expert.normalizer.normalize_state(state)
    ctx = expert._context(hidden)

    def outputs(acts):
        tokens = torch.cat([expert.state_in(s)[:, None], expert.action_in(acts[:, :-1])], dim=1)
        return expert._decode(tokens, ctx, mask.bool())

    changed = a.clone()
    changed[:, 4:] += 3.0
    o1, o2 = outputs(a), outputs(changed)
    assert torch.allclose(o1[:, :5], o2[:, :5], atol=1e-6)  # position 4 sees a_0..a_3 only
    assert not torch.allclose(o1[:, 5:], o2[:, 5:])
    # Step-by-step decoding equals the teacher-forced pass fed with its own predictions.
    pred = expert.normalizer.normalize_actions(expert.predict(hidden, mask, state))
    assert torch.allclose(outputs(pred), pred, atol=1e-5)


def test_gqa_shapes():
    flow = build("flow", num_heads=4, num_kv_heads=2).model.blocks[0]
    ar = build("autoregressive", num_heads=4, num_kv_heads=2).blocks[0]
    for kv in (flow.attn.wkv, flow.cross_attn.wkv, ar.self_attn.kv, ar.cross_attn.kv):
        assert kv.out_features == 2 * 2 * (64 // 4)  # K and V for 2 heads of 16


def test_statistics_dict_and_masked_steps():
    expert = build("autoregressive")
    hidden, mask, state, actions = fixed_batch()
    stats = {
        "action": {"mean": [1.0] * 7, "std": [2.0] * 6 + [0.0], "min": [0.0] * 7, "max": [4.0] * 7},
        "state": {"mean": [0.0] * 8, "std": [1.0] * 8, "min": [-1.0] * 8, "max": [1.0] * 8},
    }
    expert.normalizer.set_from_statistics(stats)
    assert expert.normalizer.action_loc.tolist() == [1.0] * 7
    assert expert.normalizer.action_scale.tolist() == [2.0] * 6 + [1.0]  # zero std -> 1
    with pytest.raises(ValueError, match="3 dims"):
        expert.normalizer.set_from_statistics(
            {**stats, "state": {k: v[:3] for k, v in stats["state"].items()}}
        )
    # Padded steps past an episode's end do not count: changing them leaves the loss unchanged.
    step_mask = torch.ones(B, 8, dtype=torch.bool)
    step_mask[:, 5:] = False
    changed = actions.clone()
    changed[:, 7] += 50.0  # the last step is only a target, never an input under teacher forcing
    l1 = expert.loss(hidden, mask, state, actions, None, step_mask)
    l2 = expert.loss(hidden, mask, state, changed, None, step_mask)
    assert torch.allclose(l1, l2)
    assert not torch.allclose(l1, expert.loss(hidden, mask, state, changed, None))
