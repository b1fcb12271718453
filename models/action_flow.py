"""Flow-matching action expert (RDT-style, as in GEM's released VLA code).

Sequence per sample: [time token, state token, R register tokens, chunk_size action tokens] with learned
positions, bidirectional self-attention (grouped-query). Expert layer i cross-attends to the backbone's
hidden_states[vlm_layers[i]] through its own 2-layer SiLU MLP adaptor (VLM width -> expert width), with the
prompt's padding masked out.

Flow convention (same as the depth generator): x_t = (1 - t) a + t eps, the network predicts v = eps - a,
t ~ sigmoid(N(mean, std)) (logit-normal), MSE loss on normalised actions. Sampling integrates from pure
noise at t = 1 to t = 0 with `inference_steps` Euler steps x <- x - v / steps.
"""

import torch
from torch import Tensor, nn

from .action_layers import Block, masked_mean, timestep_embedding
from .action_normalization import ActionNormalizer
from .config import ActionExpertConfig


def resolve_vlm_layers(cfg: ActionExpertConfig, num_hidden_states: int) -> list[int]:
    """Backbone hidden_states index per expert layer; default i -> i, clipped to the deepest available."""
    layers = list(cfg.vlm_layers) or [min(i, num_hidden_states - 1) for i in range(cfg.num_layers)]
    if len(layers) != cfg.num_layers:
        raise ValueError(f"vlm_layers has {len(layers)} entries for {cfg.num_layers} expert layers")
    if any(not 0 <= i < num_hidden_states for i in layers):
        raise ValueError(
            f"vlm_layers {layers} out of range: the backbone has {num_hidden_states} hidden states"
        )
    return layers


class FlowActionExpert(nn.Module):
    def __init__(self, cfg: ActionExpertConfig, vlm_hidden_size: int, num_hidden_states: int):
        super().__init__()
        self.cfg = cfg
        self.vlm_layers = resolve_vlm_layers(cfg, num_hidden_states)
        h = cfg.hidden_size
        self.normalizer = ActionNormalizer(cfg.action_dim, cfg.state_dim, cfg.normalization)
        self.action_in = nn.Linear(cfg.action_dim, h)
        self.state_in = nn.Linear(cfg.state_dim, h)
        self.time_mlp = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.registers = nn.Parameter(torch.randn(cfg.num_registers, h) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 2 + cfg.num_registers + cfg.chunk_size, h) * 0.02)
        self.adaptors = nn.ModuleList(
            nn.Sequential(nn.Linear(vlm_hidden_size, h), nn.SiLU(), nn.Linear(h, h))
            for _ in range(cfg.num_layers)
        )
        self.blocks = nn.ModuleList(
            Block(h, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_ratio, causal=False)
            for _ in range(cfg.num_layers)
        )
        self.norm_out = nn.RMSNorm(h)
        self.action_out = nn.Linear(h, cfg.action_dim)

    def contexts(self, hidden_states: tuple[Tensor, ...]) -> list[Tensor]:
        dtype = self.action_in.weight.dtype
        return [ad(hidden_states[i].to(dtype)) for ad, i in zip(self.adaptors, self.vlm_layers)]

    def velocity(self, x_t: Tensor, t: Tensor, state: Tensor, contexts: list[Tensor], mask: Tensor) -> Tensor:
        """Normalised noisy chunk [B, T, A], t [B], normalised state [B, S] -> predicted v [B, T, A]."""
        b = x_t.shape[0]
        time_tok = self.time_mlp(timestep_embedding(t, self.cfg.hidden_size).to(x_t.dtype))
        tokens = (
            torch.cat(
                [
                    time_tok[:, None],
                    self.state_in(state)[:, None],
                    self.registers.expand(b, -1, -1),
                    self.action_in(x_t),
                ],
                dim=1,
            )
            + self.pos
        )
        for block, ctx in zip(self.blocks, contexts):
            tokens = block(tokens, ctx, mask)
        return self.action_out(self.norm_out(tokens[:, -self.cfg.chunk_size :]))

    def loss(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        actions: Tensor,
        generator: torch.Generator,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """Raw state [B, S] and action chunk [B, T, A] -> flow-matching MSE on the normalised chunk."""
        a = self.normalizer.normalize_actions(actions.float())
        s = self.normalizer.normalize_state(state.float())
        z = torch.randn(a.shape[0], generator=generator, device=generator.device).to(a.device)
        t = torch.sigmoid(self.cfg.logit_normal_mean + self.cfg.logit_normal_std * z)
        eps = torch.randn(a.shape, generator=generator, device=generator.device).to(a.device)
        tt = t.view(-1, 1, 1)
        x_t = (1.0 - tt) * a + tt * eps
        v = self.velocity(x_t, t, s, self.contexts(hidden_states), attention_mask.bool())
        return masked_mean((v.float() - (eps - a)) ** 2, action_mask)

    @torch.no_grad()
    def predict(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """-> raw (unnormalised) action chunk [B, T, A]."""
        b, steps = state.shape[0], self.cfg.inference_steps
        s = self.normalizer.normalize_state(state.float())
        contexts, mask = self.contexts(hidden_states), attention_mask.bool()
        device = generator.device if generator is not None else state.device
        x = torch.randn(b, self.cfg.chunk_size, self.cfg.action_dim, generator=generator, device=device).to(
            state.device
        )
        for k in range(steps):
            t = torch.full((b,), 1.0 - k / steps, device=x.device)
            x = x - self.velocity(x, t, s, contexts, mask) / steps
        return self.normalizer.unnormalize_actions(x)
