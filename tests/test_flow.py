"""The rectified-flow schedule and samplers, checked on tiny tensors with exact oracles."""

from __future__ import annotations

import torch

from model import flow


def test_shift_matches_the_paper_example():
    # 4-step nominal 1000/750/500/250 with shift 5 -> about 1000/937/833/625
    steps = flow.step_list(4, shift=5.0)
    assert [round(s * 1000) for s in steps] == [1000, 938, 833, 625]
    assert flow.shift_sigma(0.0, 3.0) == 0.0 and flow.shift_sigma(1.0, 3.0) == 1.0
    grid = flow.sigma_grid(48, 5.0)
    assert grid.shape == (48,) and grid[0] == 1 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())


def test_x0_and_eps_recovery_from_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sigma = torch.rand(2, 3, generator=g)
    xt = flow.add_noise(x0, eps, sigma)
    v = flow.velocity_target(x0, eps)
    assert torch.allclose(flow.x0_from_v(xt, sigma, v), x0, atol=1e-6)
    assert torch.allclose(flow.eps_from_v(xt, sigma, v), eps, atol=1e-6)


def oracle(x0: torch.Tensor):
    """The exact velocity field of the point mass at x0: v = (x - x0) / sigma."""
    def velocity(x, sigma, actions):
        return (x - x0) / flow._expand(sigma, x).clamp(min=1e-8)
    return velocity


def test_euler_and_consistency_samplers_reach_the_target():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, generator=g)
    noise = torch.randn(2, 3, 4, generator=g)
    actions = torch.zeros(2, 3, dtype=torch.long)
    sig = flow.sigma_grid(8, 3.0)
    out = flow.sample_euler(oracle(x0), noise, actions, None, sig)
    assert torch.allclose(out, x0, atol=1e-5)
    out = flow.sample_consistency(oracle(x0), noise, actions, flow.step_list(2, 3.0), generator=g)
    assert torch.allclose(out, x0, atol=1e-5)


def test_cfg_combination_and_euler_step():
    vc, vu = torch.tensor([2.0]), torch.tensor([1.0])
    assert flow.cfg_velocity(vc, vu, 3.0).item() == 4.0
    assert flow.cfg_velocity(vc, vu, 1.0).item() == 2.0
    x = torch.tensor([[[1.0]]])
    assert flow.euler_step(x, torch.tensor([[[2.0]]]), 0.5, 0.25).item() == 0.5
