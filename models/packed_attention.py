"""Attention for packed sequences without the flash-attn package: "sdpa_packed", SDPA that runs each packed sample as
its own causal sequence.

transformers reads a packed row from its position ids (restarting at 0 where a sample starts, no attention_mask):
flash-attention then runs variable-length kernels, but SDPA and eager get a [T, T] block-diagonal mask, so their
attention costs (sum of the lengths)^2 instead of the sum of the squares, with no flash kernel (SDPA's flash kernels
take no mask). "sdpa_packed" is SDPA everywhere else (padded batches, generation) and, for a packed row, attention
over each sample's span with is_causal: torch's varlen_attn (flash kernels that ship with torch) on CUDA where this
torch has it, one SDPA call per sample otherwise. Exactly the padded batch's attention (tests/models/test_packing.py).
"""

import inspect

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None

NAME = "sdpa_packed"
# varlen_attn's causal switch was `is_causal` when it appeared, `window_size` later; scale and GQA came later too
_VARLEN_ARGS = set(inspect.signature(varlen_attn).parameters) if varlen_attn is not None else set()


def packed_spans(position_ids: Tensor | None) -> list[int] | None:
    """[0, end of sample 1, ..., T] for one row whose positions restart at each sample, None if it is one sample.
    Read once per forward (a host sync): every layer gets the same position_ids tensor."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return None
    cached = getattr(packed_spans, "_last", None)
    if cached is not None and cached[0] is position_ids:
        return cached[1]
    starts = (position_ids[0, 1:] != position_ids[0, :-1] + 1).nonzero().flatten() + 1
    spans = [0, *starts.tolist(), position_ids.shape[1]] if starts.numel() else None
    packed_spans._last = (position_ids, spans)
    return spans


def _cu_seqlens(spans: list[int], device: torch.device) -> tuple[Tensor, int]:
    """The kernel's view of `spans`, copied to the device once per forward, not once per layer."""
    cached = getattr(_cu_seqlens, "_last", None)
    if cached is None or cached[0] is not spans:
        cu = torch.tensor(spans, dtype=torch.int32, device=device)
        cached = _cu_seqlens._last = (spans, cu, max(b - a for a, b in zip(spans, spans[1:])))
    return cached[1], cached[2]


def sdpa_packed_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                        dropout: float = 0.0, scaling: float | None = None, position_ids: Tensor | None = None,
                        **kwargs) -> tuple[Tensor, None]:
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> ([1, T, H, D], None), as transformers' attention functions."""
    spans = None
    if attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] == key.shape[2]:
        spans = packed_spans(position_ids)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups = query.shape[1] // key.shape[1]
    # the first varlen_attn took no scale: it used 1/sqrt(head_dim), which is what Qwen's attention asks for
    scale_ok = "scale" in _VARLEN_ARGS or scaling is None or abs(scaling * query.shape[-1] ** 0.5 - 1) < 1e-6
    # the flash kernel takes half precision only: under autocast it gets autocast's dtype, as SDPA would (a custom
    # op is not autocast by torch); fp32 without autocast goes the per-sample SDPA way below
    kernel_dtype = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else (
        torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None)
    if query.is_cuda and varlen_attn is not None and dropout == 0.0 and scale_ok and kernel_dtype is not None:
        q, k, v = (x[0].transpose(0, 1).to(kernel_dtype).contiguous() for x in (query, key, value))  # [T, heads, D]
        if groups > 1 and "enable_gqa" not in _VARLEN_ARGS:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        extra = {"window_size": (-1, 0)} if "window_size" in _VARLEN_ARGS else {"is_causal": True}
        if groups > 1 and "enable_gqa" in _VARLEN_ARGS:
            extra["enable_gqa"] = True
        if "scale" in _VARLEN_ARGS:
            extra["scale"] = scaling
        cu, longest = _cu_seqlens(spans, query.device)
        out = varlen_attn(q, k, v, cu, cu, longest, longest, **extra)
        return out[None], None
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
        for a, b in zip(spans, spans[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def sdpa_packed_mask(*args, attention_mask: Tensor | None = None, **kwargs):
    """No mask where there is no padding (a packed row's samples are found from its position ids); SDPA's otherwise."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(NAME, sdpa_packed_forward)
AttentionMaskInterface.register(NAME, sdpa_packed_mask)
