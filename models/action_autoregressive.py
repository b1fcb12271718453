"""Autoregressive action expert (the paper page's "autoregressive action expert on GEM's multimodal tokens").

A causal transformer decoder over the action chunk: input tokens [state, a_0, ..., a_{T-2}], output at
position k regresses a_k (continuous, normalised). Every layer cross-attends to the backbone's last hidden
states of the whole prompt (text and image tokens), padding masked out. Training uses teacher forcing with an
L1 loss by default (robust to the multi-modal spread of demonstrations, as in ACT); `ar_loss: mse` switches
to MSE. Prediction decodes the chunk step by step, feeding each predicted action back in.
"""

import torch
from torch import Tensor, nn

from .action_layers import Block, masked_mean
from .action_normalization import ActionNormalizer
from .config import ActionExpertConfig


class AutoregressiveActionExpert(nn.Module):
    def __init__(self, cfg: ActionExpertConfig, vlm_hidden_size: int):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.normalizer = ActionNormalizer(cfg.action_dim, cfg.state_dim, cfg.normalization)
        self.state_in = nn.Linear(cfg.state_dim, h)
        self.action_in = nn.Linear(cfg.action_dim, h)
        self.pos = nn.Parameter(torch.randn(1, cfg.chunk_size, h) * 0.02)
        self.context_proj = nn.Linear(vlm_hidden_size, h)
        self.blocks = nn.ModuleList(
            Block(h, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_ratio, causal=True)
            for _ in range(cfg.num_layers)
        )
        self.norm_out = nn.RMSNorm(h)
        self.head = nn.Linear(h, cfg.action_dim)

    def _decode(self, tokens: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        x = tokens + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, context, mask)
        return self.head(self.norm_out(x))

    def _context(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        return self.context_proj(hidden_states[-1].to(self.context_proj.weight.dtype))

    def loss(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        actions: Tensor,
        generator: torch.Generator | None = None,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """Raw state [B, S] and chunk [B, T, A] -> teacher-forced regression loss on the normalised chunk."""
        a = self.normalizer.normalize_actions(actions.float())
        s = self.normalizer.normalize_state(state.float())
        tokens = torch.cat([self.state_in(s)[:, None], self.action_in(a[:, :-1])], dim=1)
        pred = self._decode(tokens, self._context(hidden_states), attention_mask.bool()).float()
        err = (pred - a).abs() if self.cfg.ar_loss == "l1" else (pred - a) ** 2
        return masked_mean(err, action_mask)

    @torch.no_grad()
    def predict(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Step-by-step decoding -> raw action chunk [B, T, A]. Deterministic (the generator is unused)."""
        s = self.normalizer.normalize_state(state.float())
        context, mask = self._context(hidden_states), attention_mask.bool()
        tokens = self.state_in(s)[:, None]
        actions = []
        for _ in range(self.cfg.chunk_size):
            a_k = self._decode(tokens, context, mask)[:, -1]
            actions.append(a_k)
            tokens = torch.cat([tokens, self.action_in(a_k)[:, None]], dim=1)
        return self.normalizer.unnormalize_actions(torch.stack(actions, dim=1))
