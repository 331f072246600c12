"""Rectified flow: the noise schedule, its shift, and the samplers (docs/ALGORITHMS.md section 0).

Conventions: ``x_t = (1 - sigma) * x0 + sigma * eps`` with ``sigma`` in [0, 1]; the network
predicts the velocity ``v = eps - x0``. Every function here is pure (tensors in, tensors
out) so that each can be checked on tiny tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# denoise(x_t, sigma, actions) -> velocity; sigma is (B, F) per frame, actions (B, F) long
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Timestep shift: ``s * sigma / (1 + (s - 1) * sigma)``; s > 1 spends more time at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t`` for per-frame ``sigma`` broadcast over the trailing dims of ``x0`` (B, F, ...)."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def x0_from_v(x_t: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x_t - _expand(sigma, x_t) * v


def eps_from_v(x_t: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x_t + (1 - _expand(sigma, x_t)) * v


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    while sigma.dim() < like.dim():
        sigma = sigma.unsqueeze(-1)
    return sigma


def sigma_grid(n: int, shift: float) -> torch.Tensor:
    """N shifted sigmas from 1 down to 0 inclusive: ``shift(linspace(1, 0, n))``."""
    if n < 2:
        raise ValueError(f"a sigma grid needs at least 2 points, got n={n}")
    return shift_sigma(torch.linspace(1.0, 0.0, n), shift)


def step_list(steps: int, shift: float) -> list[float]:
    """Nominal few-step list warped through the shift: 4 steps -> shift([1, .75, .5, .25]).

    Returns the sigmas at which the sampler predicts x0 (the final 0 is implicit).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nominal = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return [float(s) for s in shift_sigma(nominal, shift)]


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on actions: ``v_u + w * (v_c - v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)


def euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
               sigma_next: torch.Tensor | float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``dx/dsigma = v`` from sigma to sigma_next."""
    ds = _expand(torch.as_tensor(sigma, dtype=x_t.dtype) - torch.as_tensor(sigma_next, dtype=x_t.dtype), x_t)
    return x_t - ds * v


@torch.no_grad()
def sample_euler(velocity: VelocityFn, noise: torch.Tensor, actions: torch.Tensor,
                 null_actions: torch.Tensor | None, sigmas: Sequence[float] | torch.Tensor,
                 cfg: float = 1.0) -> torch.Tensor:
    """Multi-step Euler sampling of frames ``noise`` (B, F, ...) along ``sigmas`` (1 -> 0).

    ``velocity`` sees a per-frame sigma (B, F). With ``cfg != 1`` and ``null_actions``
    given, each step evaluates the conditional and the unconditional velocity.
    """
    x = noise
    B, F = noise.shape[:2]
    sig = [float(s) for s in sigmas]
    for s, s_next in zip(sig[:-1], sig[1:]):
        sigma = torch.full((B, F), s, dtype=noise.dtype, device=noise.device)
        v = velocity(x, sigma, actions)
        if cfg != 1.0 and null_actions is not None:
            v = cfg_velocity(v, velocity(x, sigma, null_actions), cfg)
        x = euler_step(x, v, s, s_next)
    return x


@torch.no_grad()
def sample_consistency(velocity: VelocityFn, noise: torch.Tensor, actions: torch.Tensor,
                       sigmas: Sequence[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Few-step consistency sampling: predict x0 at each sigma, re-noise with fresh noise to the next.

    ``sigmas`` are the prediction points (e.g. ``step_list(2, shift)``), the last
    prediction is returned.
    """
    x = noise
    B, F = noise.shape[:2]
    x0 = noise
    for i, s in enumerate(sigmas):
        sigma = torch.full((B, F), float(s), dtype=noise.dtype, device=noise.device)
        x0 = x0_from_v(x, sigma, velocity(x, sigma, actions))
        if i + 1 < len(sigmas):
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            x = add_noise(x0, eps, torch.full((B, F), float(sigmas[i + 1]), dtype=x0.dtype,
                                              device=x0.device))
    return x0
