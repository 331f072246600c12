"""Attention kernel dispatch: PyTorch SDPA everywhere, xformers on CUDA when installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    import xformers.ops as _xops  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _xops = None

BACKENDS = ("auto", "sdpa", "xformers")


def xformers_available() -> bool:
    return _xops is not None and torch.cuda.is_available()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              backend: str = "auto") -> torch.Tensor:
    """Multi-head attention with an additive bias (``-inf`` masks a key).

    q: (B, H, Nq, d), k/v: (B, H, Nk, d), bias: broadcastable to (B, H, Nq, Nk).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {list(BACKENDS)}")
    use_x = backend == "xformers" or (backend == "auto" and q.is_cuda and _xops is not None)
    if use_x:
        if _xops is None or not q.is_cuda:
            raise RuntimeError("attention backend 'xformers' needs CUDA and `pip install xformers` "
                               "(extra 'gpu'); use backend 'sdpa' on CPU")
        B, H, Nq, _ = q.shape
        Nk = k.shape[2]
        attn_bias = None
        if bias is not None:
            # xformers wants a (B, H, Nq, Nk) bias whose last dim is padded to a multiple of 8
            pad = (-Nk) % 8
            full = torch.zeros(B, H, Nq, Nk + pad, dtype=q.dtype, device=q.device)
            full[..., :Nk] = bias.to(q.dtype).expand(B, H, Nq, Nk)
            attn_bias = full[..., :Nk]
        out = _xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), attn_bias=attn_bias)
        return out.transpose(1, 2)
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
