"""The Stage 2/3 algorithm pieces on tiny tensors (ALGORITHMS.md sections 3-4)."""

from __future__ import annotations

import torch

from model import flow
from model.distill import (
    cd_timestep_pair,
    consistency_loss,
    dmd_gradient,
    dmd_loss,
    dmd_sigma,
    ema_update,
    ode_regression_loss,
    teacher_cfg_euler_step,
    trajectory_indices,
)


def test_cd_pairs_are_adjacent_points_of_the_shifted_grid():
    g = torch.Generator().manual_seed(0)
    n, s, s_next = cd_timestep_pair(4000, 48, 3.0, g)
    grid = flow.sigma_grid(48, 3.0)
    assert n.min() == 0 and n.max() == 46  # uniform over {0..N-2}
    assert torch.equal(s, grid[n]) and torch.equal(s_next, grid[n + 1])
    assert (s > s_next).all() and s.max() == 1.0 and s_next.min() == 0.0
    # the grid is the shifted linspace: more points at high noise for shift > 1
    assert torch.allclose(grid, flow.shift_sigma(torch.linspace(1, 0, 48), 3.0))


def test_teacher_cfg_euler_step():
    x = torch.randn(2, 3, 4, 2, 2)
    vc, vu = torch.randn_like(x), torch.randn_like(x)
    s, s2 = torch.tensor([0.8, 0.5]), torch.tensor([0.7, 0.25])
    out = teacher_cfg_euler_step(x, vc, vu, s, s2, 3.0)
    v = vu + 3.0 * (vc - vu)
    expect = x - (s - s2).view(2, 1, 1, 1, 1) * v
    assert torch.allclose(out, expect, atol=1e-6)
    # cfg 1 is the conditional velocity alone; an exact velocity field lands on its line
    x0, eps = torch.randn_like(x), torch.randn_like(x)
    xt = flow.add_noise(x0, eps, s)
    step = teacher_cfg_euler_step(xt, flow.velocity_target(x0, eps), None, s, s2, 1.0)
    assert torch.allclose(step, flow.add_noise(x0, eps, s2), atol=1e-6)


def test_consistency_and_ode_losses_only_train_the_student():
    a = torch.randn(2, 3, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, requires_grad=True)
    loss = consistency_loss(a, b)
    loss.backward()
    assert torch.allclose(loss, ((a - b) ** 2).mean()) and b.grad is None
    assert torch.allclose(a.grad, 2 * (a - b).detach() / a.numel())
    c = torch.randn(2, 3, 4, requires_grad=True)
    assert torch.allclose(ode_regression_loss(c, b), ((c - b) ** 2).mean())


def test_trajectory_indices_pick_the_student_sigmas_on_the_teacher_grid():
    grid = flow.sigma_grid(49, 3.0)
    idx = trajectory_indices(48, flow.step_list(2, 3.0), 3.0)
    assert idx[0] == 0 and len(idx) == 2
    assert abs(float(grid[idx[1]]) - flow.step_list(2, 3.0)[1]) < 0.02


def test_dmd_gradient_and_loss():
    x = torch.randn(2, 3, 4, requires_grad=True)
    real, fake = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    grad = dmd_gradient(x.detach(), fake, real)
    norm = (x.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(grad, (fake - real) / norm)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / x.numel(), atol=1e-7)  # the loss pushes x along -grad
    assert torch.equal(dmd_gradient(x.detach(), real, real), torch.zeros_like(real))
    s = dmd_sigma(1000, 3.0, generator=torch.Generator().manual_seed(1))
    assert s.min() >= 0.02 and s.max() <= 0.98 and s.mean() > 0.5  # the shift favours high noise


def test_ema():
    m, e = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    e.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.weight.add_(1.0)
    before = e.weight.clone()
    ema_update(e, m, 0.99)
    assert torch.allclose(e.weight, 0.99 * before + 0.01 * m.weight)
