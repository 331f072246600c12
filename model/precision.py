"""Which floating-point precision a model computes in on this machine: ``auto``, ``fp32`` or ``bf16``.

``auto`` (the default of the training stages, the dream, the vector env, ``trainer.evaluate`` and
the benchmarks) picks bf16 where it is measurably faster here, else fp32:

- CUDA: bf16 when the GPU supports it;
- CPU: bf16 only when the CPU has native bf16 instructions (``amx_bf16`` or ``avx512_bf16`` in
  ``/proc/cpuinfo``) *and* a short probe (a matrix multiply of the world model's layer shape, fp32
  against bf16, about 0.1 s, once per process) finds bf16 at least :data:`MIN_SPEEDUP` times as fast.
  Without the instructions bf16 is emulated and slower, so no probe runs.

The environment variable ``DREAMSTEP_BF16`` forces the probe's answer (``1``: faster, ``0``: not),
for tests and for a user who wants to pin the choice without naming a precision everywhere.

How each side uses the answer:
- training keeps fp32 master weights and optimizer state and runs its forward under bf16 autocast
  (autocast's cast cache holds each trainable weight's bf16 copy for the step);
- inference casts a frozen model's weights to bf16 once (:func:`cast_for_inference`), not on every
  call as autocast does under ``no_grad`` (its cache keeps only tensors that require grad).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: bf16 must be at least this much faster than fp32 in the probe to be picked by ``auto``
MIN_SPEEDUP = 1.3
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ENV = "DREAMSTEP_BF16"


class PrecisionError(ValueError):
    """An unknown precision name."""


@dataclass(frozen=True)
class Probe:
    """What the probe saw on this device."""
    device: str
    bf16_faster: bool
    reason: str
    flags: tuple[str, ...] = ()
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_flags() -> tuple[str, ...]:
    """The bf16- and matrix-unit-related CPU flags of /proc/cpuinfo (empty where it is unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
                    return tuple(x for x in wanted if x in have)
    except OSError:
        pass
    return ()


def _matmul_rate(dtype: torch.dtype, m: int = 1024, k: int = 256, n: int = 1024, reps: int = 8) -> float:
    """GFLOP/s of F.linear at the world model's MLP shape on one thread (the best of ``reps`` calls, after
    one untimed call for kernel set-up): one core's rate, so a busy second core does not skew the ratio."""
    g = torch.Generator().manual_seed(0)  # not the global RNG: a probe must not shift a seeded run
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 2 * m * k * n / best / 1e9


@functools.cache
def _probe_cached(device_type: str, forced: str | None) -> Probe:
    if forced is not None:
        if forced not in ("0", "1"):
            raise PrecisionError(f"{ENV} must be '1' (bf16 is faster) or '0' (it is not), got {forced!r}")
        return Probe(device_type, forced == "1", f"forced by {ENV}={forced}", cpu_flags() if device_type == "cpu" else ())
    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Probe("cuda", ok, "CUDA bf16 support" if ok else "this GPU has no bf16 support")
    if device_type != "cpu":
        return Probe(device_type, False, f"no bf16 probe for device {device_type!r}")
    flags = cpu_flags()
    if not any(f in flags for f in BF16_FLAGS):
        return Probe("cpu", False, "the CPU has no native bf16 instructions (amx_bf16/avx512_bf16)", flags)
    fp32, bf16 = _matmul_rate(torch.float32), _matmul_rate(torch.bfloat16)
    faster = bf16 >= MIN_SPEEDUP * fp32
    why = f"probe: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s ({'>=' if faster else '<'} {MIN_SPEEDUP}x)"
    return Probe("cpu", faster, why, flags, round(fp32, 1), round(bf16, 1))


def probe(device: torch.device | str = "cpu") -> Probe:
    """Is bf16 faster than fp32 on this device? Measured once per process (see the module docstring)."""
    return _probe_cached(torch.device(device).type, os.environ.get(ENV))


def check(precision: str, what: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"{what} must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(precision: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16``: what ``precision`` (auto, fp32 or bf16) runs as on ``device``."""
    check(precision)
    if precision != "auto":
        return precision
    return "bf16" if probe(device).bf16_faster else "fp32"


def cast_for_inference(module: torch.nn.Module, dtype: torch.dtype, pack: bool = True) -> torch.nn.Module:
    """Cast a frozen module's floating-point weights and buffers to ``dtype`` once, in place; in bf16
    on a CPU its linear layers also get their weights pre-packed for oneDNN (:class:`PackedLinear`)."""
    module.to(dtype)
    if pack and dtype == torch.bfloat16:
        pack_linears(module)
    return module


class PackedLinear(torch.nn.Module):
    """A frozen bf16 ``nn.Linear`` whose weight is kept in oneDNN's blocked layout as well, so that
    a call does not re-pack it: measured 1.4-1.8x faster than ``F.linear`` at the few rows of a
    streamed frame (16-64 tokens) on a CPU with bf16 matrix units. Same outputs as the linear it
    replaces; an input of another dtype is cast to the weights' (as a bf16 module computes in bf16),
    one on another device, or one that needs gradients, takes the plain ``F.linear``."""

    def __init__(self, lin: torch.nn.Linear, rows_hint: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight = lin.weight
        self.bias = lin.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), rows_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.weight.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.to(self.packed.dtype), self.packed, self.bias, "none", [], "")

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        """A copy packs its own weight again (the packed layout cannot be copied as a tensor)."""
        import copy

        lin = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                              dtype=self.weight.dtype, device=self.weight.device)
        lin.weight = copy.deepcopy(self.weight, memo)
        if self.bias is not None:
            lin.bias = copy.deepcopy(self.bias, memo)
        return PackedLinear(lin)


@functools.cache
def packing_available() -> bool:
    """Whether this torch build can pre-pack bf16 linear weights (oneDNN on a CPU)."""
    try:
        w = torch.zeros(8, 8, dtype=torch.bfloat16)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, 8, dtype=torch.bfloat16),
                                           torch.ops.mkldnn._reorder_linear_weight(w, 2), None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):
        return False


def pack_linears(module: torch.nn.Module) -> int:
    """Replace the CPU bf16 ``nn.Linear`` layers of a frozen module by :class:`PackedLinear`; returns
    how many (0 where this build cannot pack)."""
    if not packing_available():
        return 0
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.bfloat16 \
                and child.weight.device.type == "cpu":
            setattr(module, name, PackedLinear(child))
            n += 1
        else:
            n += pack_linears(child)
    return n


def autocast(device: torch.device | str, precision: str):
    """The training forward's context: bf16 autocast when ``precision`` resolves to bf16."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve(precision, dev) == "bf16")


def frozen_for_autocast(module: torch.nn.Module) -> torch.nn.Module:
    """A frozen module used inside a training step: under bf16 autocast, its weights are cast (and
    packed) to bf16 once, here, instead of by autocast on every call (autocast keeps casts only of
    weights that require grad). Idempotent; a no-op outside autocast or for a trainable module."""
    p = next(module.parameters(), None)
    if p is None or p.requires_grad or p.dtype != torch.float32:
        return module
    if not torch.is_autocast_enabled(p.device.type) or torch.get_autocast_dtype(p.device.type) != torch.bfloat16:
        return module
    return cast_for_inference(module, torch.bfloat16, pack=p.device.type == "cpu")


def unpack_linears(module: torch.nn.Module) -> int:
    """Undo :func:`pack_linears`: plain ``nn.Linear`` layers on the same weights (what ``torch.compile``
    lowers and packs itself); returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, PackedLinear):
            lin = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  dtype=child.weight.dtype, device=child.weight.device)
            lin.weight, lin.bias = child.weight, child.bias
            setattr(module, name, lin)
            n += 1
        else:
            n += unpack_linears(child)
    return n
