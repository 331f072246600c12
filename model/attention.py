"""Attention kernel dispatch: PyTorch SDPA, xformers on CUDA when installed, and an explicit
softmax(QK^T)V for training on a CPU.

``auto`` picks xformers on CUDA when installed; on a CPU it picks SDPA for inference and the
explicit ``math`` path when gradients flow: SDPA's CPU flash kernel with an additive mask computes
its backward at a few tens of GFLOP/s, while two batched matmuls (bf16 on the matrix units where
the model runs in bf16) do it in about half the time (``benchmarks.roofline`` measures both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    import xformers.ops as _xops  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _xops = None

BACKENDS = ("auto", "sdpa", "math", "xformers")

#: the lists of :func:`record_attention` blocks now open (diagnostics; empty in normal use)
_recorders: list[list[torch.Tensor]] = []


def recording_attention() -> bool:
    """Whether a :func:`record_attention` block is open."""
    return bool(_recorders)


@contextmanager
def record_attention() -> Iterator[list[torch.Tensor]]:
    """Collect the attention weights of every :func:`attention` call inside the block: one (B, Nq, Nk)
    tensor per call, softmax(q k^T / sqrt(d) + bias) averaged over the heads (float32). A diagnostic
    (``python -m evaluation.memory_probe``): it computes the weights a second time, so it is slow."""
    out: list[torch.Tensor] = []
    _recorders.append(out)
    try:
        yield out
    finally:
        _recorders.remove(out)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              backend: str = "auto") -> torch.Tensor:
    """Multi-head attention with an additive bias (``-inf`` masks a key).

    q: (B, H, Nq, d), k/v: (B, H, Nk, d), bias: broadcastable to (B, H, Nq, Nk).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {list(BACKENDS)}")
    if _recorders:
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        w = (s if bias is None else s + bias.float()).softmax(-1).mean(1).detach()
        for rec in _recorders:
            rec.append(w)
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
    if backend == "math" or (backend == "auto" and not q.is_cuda and torch.is_grad_enabled()
                             and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return math_attention(q, k, v, bias)
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v as two batched matmuls (the same result as SDPA to rounding)."""
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    q3, k3, v3 = q.reshape(B * H, Nq, d), k.reshape(B * H, Nk, d), v.reshape(B * H, Nk, v.shape[-1])
    if bias is None:
        s = torch.bmm(q3, k3.transpose(1, 2)) * d ** -0.5
    else:
        b = bias.to(q.dtype).expand(B, H, Nq, Nk).reshape(B * H, Nq, Nk)
        s = torch.baddbmm(b, q3, k3.transpose(1, 2), alpha=d ** -0.5)
    return torch.bmm(s.softmax(-1), v3).view(B, H, Nq, v.shape[-1])
