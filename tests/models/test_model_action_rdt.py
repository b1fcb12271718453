"""The flow action expert is the released GEM-VLA RDT (GEM-VLA/models/rdt/{model,blocks,attention,pos_emb}.py,
models/rdt_runner.py, configs/demo.yaml). Every expected number here is worked out by hand from those files."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from gem_models.action_flow import FlowActionExpert
from gem_models.action_rdt import swiglu_hidden
from gem_models.config import ActionExpertConfig, tiny_config

ROOT = Path(__file__).resolve().parents[2]
VLM, N_STATES, B, L = 32, 3, 4, 9


def tiny(**kw) -> FlowActionExpert:
    torch.manual_seed(0)
    return FlowActionExpert(dataclasses.replace(tiny_config(action="flow").action, **kw), VLM, N_STATES)


def inputs(expert: FlowActionExpert, seed: int = 0):
    c = expert.cfg
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(B, L, VLM, generator=g) for _ in range(N_STATES))
    mask = torch.ones(B, L, dtype=torch.bool)
    x = torch.randn(B, c.chunk_size, c.action_dim, generator=g)
    t = torch.rand(B, generator=g)
    state = torch.randn(B, c.state_dim, generator=g)
    return x, t, state, expert.contexts(hidden), mask


def gem2b_action() -> ActionExpertConfig:
    recipe = yaml.safe_load((ROOT / "recipes" / "gem-2b.yaml").read_text())
    return ActionExpertConfig(**recipe["model"]["action"])


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Qwen3-VL-2B: text hidden size 2048, 28 decoder layers -> 29 hidden states (embeddings + one per layer).
QWEN3_VL_2B_HIDDEN, QWEN3_VL_2B_STATES = 2048, 29


def release_param_count(A: int, S: int, Lw: int) -> tuple[int, int]:
    """(RDT core, RDTRunner total) by hand from the release's modules, with configs/demo.yaml's rdt sizes:
    D = 1024, 14 blocks, 8 query heads / 4 KV heads of 128, 4 registers, chunk 32, SwiGLU hidden
    int(2 * 4D / 3) = 2730 rounded up to a multiple of 256 = 2816."""
    D, N, KV, hd, F, T, R = 1024, 14, 4, 128, 2816, 32, 4
    attn = D * D + D * 2 * KV * hd + D * D + 2 * hd  # wq, wkv, wo (no biases) + per-head q/k RMSNorm weights
    # self + cross attention, SwiGLU, 4 norms, adaLN (2D -> 9D)
    block = 2 * attn + 3 * D * F + 4 * D + (2 * D * 9 * D + 9 * D)
    t_embedder = (256 * D + D) + (D * D + D)  # 256 sinusoid features -> D -> D
    final = D + (D * 4 * D + 4 * D) + (4 * D * A + A) + (2 * D * 2 * D + 2 * D)  # norm, Mlp, adaLN(2D->2D)
    extras = R * D + (T + R) * D + D  # register tokens, x_pos_emb, state_pos_emb
    core = N * block + t_embedder + final + extras
    lang = (Lw * D + D) + (D * D + D)  # mlp2x_silu
    act = (A * D + D) + 2 * (D * D + D)  # mlp3x_silu
    state = (S * D + D) + 2 * (D * D + D)
    return core, core + lang + act + state


def test_hand_formula_reproduces_the_stated_figures():
    # Stated figures: demo.yaml dims (A = S = 14) and gem-2b's LIBERO dims (A = 7, S = 8).
    assert release_param_count(14, 14, 2048) == (483_433_486, 490_810_382)
    assert release_param_count(7, 8, 2048) == (483_404_807, 490_768_391)


def test_gem2b_action_expert_has_the_release_parameter_count():
    cfg = gem2b_action()
    assert (cfg.kind, cfg.action_dim, cfg.state_dim) == ("flow", 7, 8)
    with torch.device("meta"):
        expert = FlowActionExpert(cfg, QWEN3_VL_2B_HIDDEN, QWEN3_VL_2B_STATES)
    assert n_params(expert.model) == 483_404_807
    assert n_params(expert) == 490_768_391
    # The release's own demo robot (A = S = 14): its `RDT params:` print is the core count.
    with torch.device("meta"):
        demo = FlowActionExpert(
            dataclasses.replace(cfg, action_dim=14, state_dim=14), QWEN3_VL_2B_HIDDEN, QWEN3_VL_2B_STATES
        )
    assert (n_params(demo.model), n_params(demo)) == (483_433_486, 490_810_382)
    assert expert.vlm_layers == list(range(14))  # demo.yaml selected_layers [0..13]
    # gem-8b (extends gem-2b): Qwen3-VL-8B's text width 4096, 36 layers; only the language adaptor grows.
    assert release_param_count(7, 8, 4096)[1] == 492_865_543
    with torch.device("meta"):
        eight = FlowActionExpert(cfg, 4096, 37)
    assert n_params(eight) == 492_865_543


def test_swiglu_hidden_width_follows_the_llama_rule():
    assert swiglu_hidden(1024, 4.0, 256, None) == 2816  # int(8192 / 3) = 2730 -> 11 * 256
    assert swiglu_hidden(64, 2.0, 16, None) == 96  # int(256 / 3) = 85 -> 6 * 16
    assert swiglu_hidden(1024, 4.0, 256, 1.3) == 3584  # int(1.3 * 2730) = 3549 -> 14 * 256
    assert tiny().model.blocks[0].ffn.w1.out_features == 96


def test_adaptors_are_silu_mlps_with_one_shared_language_adaptor():
    expert = tiny()
    kinds = lambda seq: [type(m).__name__ for m in seq]  # noqa: E731
    assert kinds(expert.lang_adaptor) == ["Linear", "SiLU", "Linear"]
    assert kinds(expert.act_adaptor) == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert kinds(expert.state_adaptor) == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert expert.lang_adaptor[0].in_features == VLM and expert.act_adaptor[0].in_features == 7
    assert expert.state_adaptor[0].in_features == 8


def test_positional_embeddings_are_the_release_sincos():
    # One block is enough: the table depends on the width, the chunk and the registers only.
    expert = FlowActionExpert(dataclasses.replace(gem2b_action(), num_layers=1, vlm_layers=[0]), 64, 2)
    pos = expert.model.x_pos_emb.detach()[0].double()
    assert pos.shape == (32 + 4, 1024)
    # Row 0 = action position 0 + modality 0: sincos(0) twice = [0]*512 ++ [2]*512.
    assert torch.allclose(pos[0], torch.cat([torch.zeros(512), torch.full((512,), 2.0)]).double(), atol=1e-6)
    # Row 32 = register position 0 + modality 1: feature 0 is sin(0) + sin(1), feature 512 is cos(0) + cos(1).
    assert float(pos[32, 0]) == pytest.approx(math.sin(1.0), abs=1e-6)
    assert float(pos[32, 512]) == pytest.approx(1.0 + math.cos(1.0), abs=1e-6)
    # Row 5, feature 1 (omega_1 = 10000^(-1/512)): sin(5 omega_1) + modality 0's sin(0).
    assert float(pos[5, 1]) == pytest.approx(math.sin(5 * 10000 ** (-1 / 512)), abs=1e-6)
    assert expert.model.x_pos_emb.requires_grad  # trainable, initialised to the sin-cos table
    # The state's single position has neither a position nor a modality term.
    assert torch.equal(expert.model.state_pos_emb.detach(), torch.zeros(1, 1, 1024))
    assert expert.model.register_tokens.shape == (1, 4, 1024)
    assert 0.9 < float(expert.model.register_tokens.detach().std()) < 1.1  # randn, not a small init


def test_at_init_every_block_is_the_identity_and_the_output_is_zero():
    expert = tiny()
    x, t, state, ctx, mask = inputs(expert)
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append((a[0], out))) for b in expert.model.blocks]
    v = expert.velocity(x, t, state, ctx, mask)
    for h in hooks:
        h.remove()
    assert torch.equal(v, torch.zeros_like(v))  # zero adaLN gates and a zero final fc2, as the release
    c = expert.cfg
    for block_in, block_out in seen:  # the sequence is the actions and the registers only
        assert block_in.shape == (B, c.chunk_size + c.num_registers, c.hidden_size)
        assert torch.equal(block_in, block_out)


def perturb_zero_init(expert: FlowActionExpert, seed: int = 1) -> None:
    """Give the zero-initialised adaLN and output weights values, so the output depends on its inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in expert.model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.ffn.fc2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_time_and_state_enter_through_adaln_not_the_sequence():
    expert = tiny()
    perturb_zero_init(expert)
    x, t, state, ctx, mask = inputs(expert)
    v = expert.velocity(x, t, state, ctx, mask)
    assert v.shape == x.shape  # register outputs are dropped
    assert not torch.allclose(expert.velocity(x, t + 0.3, state, ctx, mask), v)
    assert not torch.allclose(expert.velocity(x, t, state + 1.0, ctx, mask), v)
    # With every adaLN weight zeroed except its bias, time and state cannot reach the output at all.
    with torch.no_grad():
        for name, p in expert.model.named_parameters():
            if "adaLN_modulation" in name and name.endswith("weight"):
                p.zero_()
    v0 = expert.velocity(x, t, state, ctx, mask)
    assert torch.allclose(expert.velocity(x, torch.rand(B), -state, ctx, mask), v0, atol=1e-6)


def test_timesteps_are_logit_normal_as_the_release():
    expert = tiny()
    g = torch.Generator().manual_seed(0)
    t = expert.sample_timesteps(200_000, g)
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(t, torch.sigmoid(z))  # t = sigmoid(z), z ~ N(0, 1)
    assert float(t.mean()) == pytest.approx(0.5, abs=0.002)
    # P(t < sigmoid(1)) = P(z < 1) = Phi(1) = 0.841345
    assert float((t < 1 / (1 + math.exp(-1))).double().mean()) == pytest.approx(0.841345, abs=0.003)
    # The release draws torch.distributions.LogisticNormal(0, 1).sample((n,))[:, 0]: same quantiles.
    torch.manual_seed(1)
    release = torch.distributions.LogisticNormal(0.0, 1.0).sample((200_000,))[:, 0]
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(torch.quantile(t, q), torch.quantile(release, q), atol=0.005)


def test_training_noises_towards_t0_and_regresses_a_minus_eps():
    """Release convention: x_t = t a + (1 - t) eps (t = 1 is the clean chunk), target v = a - eps, t fed raw."""
    expert = tiny()
    hidden = tuple(torch.randn(B, L, VLM) for _ in range(N_STATES))
    mask = torch.ones(B, L, dtype=torch.long)
    actions = torch.randn(B, 8, 7) * 2 + 1
    state = torch.randn(B, 8)
    seen = {}

    def fake_velocity(x_t, t, s, contexts, m):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    expert.velocity = fake_velocity
    loss = expert.loss(hidden, mask, state, actions, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # same draws, in the expert's order: z [B], then eps
    t = torch.sigmoid(torch.randn(B, generator=g))
    eps = torch.randn(actions.shape, generator=g)
    assert torch.allclose(seen["t"], t)
    tt = t.view(-1, 1, 1)
    assert torch.allclose(seen["x_t"], tt * actions + (1 - tt) * eps, atol=1e-6)  # normaliser is identity
    assert float(loss) == pytest.approx(float(((actions - eps) ** 2).mean()), rel=1e-6)


def test_sampling_integrates_from_noise_at_t0_to_the_chunk_at_t1():
    expert = tiny(inference_steps=5)
    hidden = tuple(torch.randn(B, L, VLM) for _ in range(N_STATES))
    mask = torch.ones(B, L, dtype=torch.long)
    target = torch.randn(B, 8, 7)
    times = []

    def oracle(x, t, s, contexts, m):  # the exact velocity of the straight path through x towards `target`
        times.append(float(t[0]))
        return (target - x) / (1 - t).view(-1, 1, 1)

    expert.velocity = oracle
    pred = expert.predict(hidden, mask, torch.zeros(B, 8), torch.Generator().manual_seed(0))
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])  # 5 Euler steps of 1/5 from t = 0
    assert torch.allclose(pred, target, atol=1e-5)
    # A constant velocity c moves the initial noise by exactly c.
    expert.velocity = lambda x, t, s, contexts, m: torch.full_like(x, 0.5)
    noise = torch.randn(B, 8, 7, generator=torch.Generator().manual_seed(0))
    pred = expert.predict(hidden, mask, torch.zeros(B, 8), torch.Generator().manual_seed(0))
    assert torch.allclose(pred, noise + 0.5, atol=1e-6)


def test_attention_normalises_queries_and_keys_per_head():
    expert = tiny()
    attn = expert.model.blocks[0].attn
    hd = 64 // 4
    assert attn.norm_q.weight.shape == (hd,) and attn.norm_k.weight.shape == (hd,)
    assert attn.norm_q.eps == 1e-5  # configs/demo.yaml norm_eps
    assert attn.wkv.out_features == 2 * 2 * hd and attn.wq.bias is None
    # Scaling a query head's projection leaves attention unchanged (q is RMS-normalised per head).
    perturb_zero_init(expert)
    x, t, state, ctx, mask = inputs(expert)
    v = expert.velocity(x, t, state, ctx, mask)
    with torch.no_grad():
        attn.wq.weight[:hd] *= 7.0
    assert torch.allclose(expert.velocity(x, t, state, ctx, mask), v, atol=1e-4)


def test_timestep_features_take_t_unscaled():
    # dim 4: frequencies 10000^(-k/2) for k = 0, 1 -> 1 and 0.01; features cat(cos, sin); t in [0, 1] as is.
    from gem_models.action_rdt import timestep_embedding

    got = timestep_embedding(torch.tensor([0.5]), 4)[0]
    want = torch.tensor([math.cos(0.5), math.cos(0.005), math.sin(0.5), math.sin(0.005)])
    assert torch.allclose(got, want, atol=1e-6)
    assert tiny().model.t_embedder.mlp[0].in_features == 256  # DiT's frequency_embedding_size


def test_parameter_names_are_the_release_runners():
    """An RDTRunner state dict (GEM-VLA/models/rdt_runner.py, rdt/{model,blocks,attention}.py) names exactly
    these tensors, so a released checkpoint loads into the expert (whose only extras are the normaliser's
    statistics)."""
    expert = tiny(num_layers=1, vlm_layers=[0])
    block = [
        "attn_norm.weight", "attn.wq.weight", "attn.wkv.weight", "attn.wo.weight", "attn.norm_q.weight",
        "attn.norm_k.weight", "cross_norm.weight", "cond_norm.weight", "cross_attn.wq.weight",
        "cross_attn.wkv.weight", "cross_attn.wo.weight", "cross_attn.norm_q.weight", "cross_attn.norm_k.weight",
        "ffn_norm.weight", "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight", "adaLN_modulation.1.weight",
        "adaLN_modulation.1.bias",
    ]  # fmt: skip
    rdt = [
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
    ]
    rdt += [f"blocks.0.{k}" for k in block]
    rdt += ["final_layer.ffn_norm.weight", "final_layer.ffn.fc1.weight", "final_layer.ffn.fc1.bias"]
    rdt += ["final_layer.ffn.fc2.weight", "final_layer.ffn.fc2.bias"]
    rdt += ["final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]
    rdt += ["register_tokens", "x_pos_emb", "state_pos_emb"]
    runner = [f"model.{k}" for k in rdt]
    for name, depth in (("lang_adaptor", 2), ("act_adaptor", 3), ("state_adaptor", 3)):
        runner += [f"{name}.{2 * i}.{w}" for i in range(depth) for w in ("weight", "bias")]
    normalizer = {
        "normalizer.action_loc",
        "normalizer.action_scale",
        "normalizer.state_loc",
        "normalizer.state_scale",
    }
    assert set(expert.state_dict()) == set(runner) | normalizer
