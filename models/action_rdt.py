"""RDT, the network of GEM's released action expert (GEM-VLA/models/rdt/*, after RDT-1B).

The sequence is [chunk_size noisy-action tokens, num_registers register tokens] plus a trainable sin-cos
position table; the timestep and the proprioceptive state do not enter the sequence: their embeddings are
concatenated into one [B, 2 * hidden] vector that modulates every block and the output layer (adaLN, DiT
style). Block i cross-attends to its own backbone layer's (adapted) hidden states. The adaLN projections and
the output layer's last linear start at zero, so a fresh RDT predicts exactly 0 and every block starts as the
identity.

Parameter names follow the release (`wq`, `wkv`, `adaLN_modulation`, `final_layer.ffn.fc2`, ...), so its
weights map one to one.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ActionExpertConfig


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """DiT's sinusoid features of t [B] -> [B, dim], cat(cos, sin). The release feeds t in [0, 1] unscaled."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


def sincos_1d(dim: int, length: int) -> Tensor:
    """MAE's 1-D table [length, dim]: cat(sin(p w), cos(p w)) with w_k = 10000^(-k / (dim / 2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def multimodal_pos_embed(dim: int, lengths: list[int]) -> Tensor:
    """Positions within each modality plus a per-modality term (the modality's index, sin-cos coded).

    As the release: a modality of length 1 gets no position term, and a single modality no modality term.
    """
    modality = sincos_1d(dim, len(lengths)) if len(lengths) > 1 else None
    parts = []
    for i, n in enumerate(lengths):
        part = sincos_1d(dim, n) if n > 1 else torch.zeros(n, dim, dtype=torch.float64)
        parts.append(part + modality[i] if modality is not None else part)
    return torch.cat(parts).float()


def swiglu_hidden(dim: int, mlp_ratio: float, multiple_of: int, multiplier: float | None) -> int:
    """llama's SwiGLU width: 2/3 of mlp_ratio * dim (three matrices instead of two), optionally scaled, rounded
    up to a multiple of `multiple_of`."""
    hidden = int(2 * int(mlp_ratio * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


class Attention(nn.Module):
    """Grouped-query self- or cross-attention with per-head RMSNorm on queries and keys, no biases."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, hidden // num_heads
        self.wq = nn.Linear(hidden, num_heads * self.head_dim, bias=False)
        self.wkv = nn.Linear(hidden, 2 * num_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(num_heads * self.head_dim, hidden, bias=False)
        self.norm_q = nn.RMSNorm(self.head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(self.head_dim, eps=eps)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        c = x if context is None else context
        q = self.norm_q(self.wq(x).view(b, n, self.num_heads, self.head_dim))
        # wkv's output interleaves K and V per feature (the release's layout, so its weights load as they are).
        k, v = self.wkv(c).view(b, c.shape[1], self.num_kv_heads, self.head_dim, 2).unbind(-1)
        k = self.norm_k(k)
        rep = self.num_heads // self.num_kv_heads  # each K/V head serves `rep` consecutive query heads
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RDTBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and SwiGLU, each shifted/scaled/gated by the condition vector."""

    def __init__(self, cfg: ActionExpertConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.norm_eps
        self.attn_norm = nn.RMSNorm(d, eps=eps)
        self.attn = Attention(d, cfg.num_heads, cfg.num_kv_heads, eps)
        self.cross_norm = nn.RMSNorm(d, eps=eps)
        self.cond_norm = nn.RMSNorm(d, eps=eps)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.num_kv_heads, eps)
        self.ffn_norm = nn.RMSNorm(d, eps=eps)
        self.ffn = FeedForward(
            d, swiglu_hidden(d, cfg.mlp_ratio, cfg.ffn_multiple_of, cfg.ffn_dim_multiplier)
        )
        # Condition = [time embedding, state embedding] -> shift, scale, gate for each of the three sublayers.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * d, 9 * d))

    def forward(self, x: Tensor, cond: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        (shift_a, scale_a, gate_a, shift_c, scale_c, gate_c, shift_f, scale_f, gate_f) = (
            self.adaLN_modulation(cond).chunk(9, dim=1)
        )
        h = x + gate_a[:, None] * self.attn(modulate(self.attn_norm(x), shift_a, scale_a))
        h = h + gate_c[:, None] * self.cross_attn(
            modulate(self.cross_norm(h), shift_c, scale_c), self.cond_norm(context), context_mask
        )
        return h + gate_f[:, None] * self.ffn(modulate(self.ffn_norm(h), shift_f, scale_f))


class OutputMlp(nn.Module):
    """timm's Mlp as the release's final layer uses it: fc1 -> SiLU -> fc2, with biases."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FinalLayer(nn.Module):
    """RMSNorm, condition shift/scale (no gate), then an MLP of width 4 * hidden to the action dims."""

    def __init__(self, cfg: ActionExpertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.ffn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.ffn = OutputMlp(d, 4 * d, cfg.action_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * d, 2 * d))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=1)
        return self.ffn(modulate(self.ffn_norm(x), shift, scale))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class RDT(nn.Module):
    def __init__(self, cfg: ActionExpertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.chunk_size = cfg.chunk_size
        self.t_embedder = TimestepEmbedder(d, cfg.time_embed_dim)
        self.blocks = nn.ModuleList(RDTBlock(cfg) for _ in range(cfg.num_layers))
        self.final_layer = FinalLayer(cfg)
        self.register_tokens = nn.Parameter(torch.randn(1, cfg.num_registers, d))
        self.x_pos_emb = nn.Parameter(multimodal_pos_embed(d, [cfg.chunk_size, cfg.num_registers])[None])
        self.state_pos_emb = nn.Parameter(multimodal_pos_embed(d, [1])[None])
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.ffn.fc2]
        for m in zeroed:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self, x: Tensor, t: Tensor, state: Tensor, contexts: list[Tensor], context_mask: Tensor
    ) -> Tensor:
        """Adapted noisy actions x [B, T, D], t [B], adapted state [B, 1, D], per-block contexts [B, L, D] ->
        velocity [B, T, action_dim]."""
        b = x.shape[0]
        cond = torch.cat([self.t_embedder(t)[:, None], state + self.state_pos_emb], dim=1).reshape(b, -1)
        h = torch.cat([x, self.register_tokens.expand(b, -1, -1)], dim=1) + self.x_pos_emb
        for block, context in zip(self.blocks, contexts):
            h = block(h, cond, context, context_mask)
        return self.final_layer(h, cond)[:, : self.chunk_size]
