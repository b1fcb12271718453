"""The autoregressive expert's transformer pieces (grouped-query attention, MLP, pre-norm block) and the masked
chunk mean both action experts' losses use."""

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V (num_kv_heads divides num_heads); self or cross."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int):
        super().__init__()
        if hidden % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"hidden {hidden}, heads {num_heads}, kv heads {num_kv_heads} are incompatible")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, hidden // num_heads
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.kv = nn.Linear(hidden, 2 * num_kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(
        self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        b, n, _ = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.num_kv_heads, self.head_dim).unbind(2)
        # Each K/V head serves num_heads / num_kv_heads query heads.
        rep = self.num_heads // self.num_kv_heads
        k = k.transpose(1, 2).repeat_interleave(rep, dim=1)
        v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, ratio: float):
        super().__init__()
        inner = int(hidden * ratio)
        self.fc1, self.act, self.fc2 = (
            nn.Linear(hidden, inner),
            nn.GELU(approximate="tanh"),
            nn.Linear(inner, hidden),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm: self-attention -> cross-attention to a (normalised) context -> MLP, each residual."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.causal = causal
        self.norm1, self.self_attn = nn.RMSNorm(hidden), Attention(hidden, num_heads, num_kv_heads)
        # The context norm tames the large activations of mid-depth LLM layers before they become keys/values.
        self.norm2, self.norm_ctx = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.cross_attn = Attention(hidden, num_heads, num_kv_heads)
        self.norm3, self.mlp = nn.RMSNorm(hidden), MLP(hidden, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x), causal=self.causal)
        x = x + self.cross_attn(self.norm2(x), self.norm_ctx(context), key_mask=context_mask)
        return x + self.mlp(self.norm3(x))


def masked_mean(err: Tensor, step_mask: Tensor | None) -> Tensor:
    """Mean of err [B, T, D] over valid chunk steps (step_mask [B, T], True = real action; None = all real).

    Chunks that run past an episode's end carry padded steps that must not be learned.
    """
    if step_mask is None:
        return err.mean()
    m = step_mask.to(err.dtype)[..., None]
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp(min=1.0)
