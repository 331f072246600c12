"""The pieces of Stage 2 (causal ODE and causal consistency distillation) and Stage 3 (DMD)
as small pure functions (docs/ALGORITHMS.md sections 3-4).

Shapes: clips are (B, F, C, h, w); sigmas are per sample (B,) or per frame (B, F).
"""

from __future__ import annotations

import torch

from model import flow


def cd_timestep_pair(batch: int, n_points: int, shift: float, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adjacent points of the shifted N-point grid for causal CD.

    Draws ``n`` uniformly in ``{0..N-2}`` per sample and returns ``(n, sigma_n, sigma_{n+1})``
    with ``sigma_n > sigma_{n+1}`` (the grid runs from 1 down to 0).
    """
    if n_points < 2:
        raise ValueError(f"the CD grid needs at least 2 points, got {n_points}")
    grid = flow.sigma_grid(n_points, shift)
    n = torch.randint(0, n_points - 1, (batch,), generator=generator)
    return n, grid[n], grid[n + 1]


def teacher_cfg_euler_step(x_t: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor | None,
                           sigma: torch.Tensor, sigma_next: torch.Tensor, cfg: float) -> torch.Tensor:
    """One Euler step of the teacher's guided PF-ODE: ``x' = x - (sigma - sigma') * v_cfg``."""
    v = v_cond if v_uncond is None or cfg == 1.0 else flow.cfg_velocity(v_cond, v_uncond, cfg)
    return flow.euler_step(x_t, v, sigma, sigma_next)


def consistency_loss(x0_student: torch.Tensor, x0_target: torch.Tensor) -> torch.Tensor:
    """x0-space MSE of the student's prediction against a regression target that carries no
    gradient: the Stage 2 loss of both methods.

    Causal CD: the student at ``(x_t, sigma_n)`` against the EMA target at ``(x_t', sigma_{n+1})``.
    Causal ODE (``ode_regression_loss``, the same function): the student at a stored trajectory
    state against the stored endpoint. The two differ only in where the target comes from."""
    return (x0_student.float() - x0_target.detach().float()).pow(2).mean()


# Causal ODE distillation regresses onto the teacher's stored PF-ODE endpoint with the same x0 MSE.
ode_regression_loss = consistency_loss


def trajectory_indices(grid_steps: int, student_sigmas: list[float], shift: float) -> list[int]:
    """Indices into a ``grid_steps``-step teacher Euler solve whose sigmas are closest to the
    student's step sigmas (the states Stage 2a stores)."""
    grid = flow.sigma_grid(grid_steps + 1, shift)
    return [int((grid - s).abs().argmin()) for s in student_sigmas]


def dmd_sigma(batch: int, shift: float, lo: float = 0.02, hi: float = 0.98,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise level of the DMD score evaluation: shifted uniform, clamped away from 0 and 1."""
    u = torch.rand(batch, generator=generator)
    return flow.shift_sigma(u, shift).clamp(lo, hi)


def dmd_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """Distribution-matching gradient ``(x0_fake - x0_real) / mean|x - x0_real|`` (per sample)."""
    dims = tuple(range(1, x.dim()))
    norm = (x - x0_real).abs().mean(dim=dims, keepdim=True).clamp(min=1e-6)
    return (x0_fake - x0_real) / norm


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 * MSE(x, stopgrad(x - grad))``: its gradient w.r.t. x is ``grad / numel``."""
    target = (x - grad).detach()
    return 0.5 * (x.float() - target.float()).pow(2).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over parameters; buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
