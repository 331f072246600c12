"""Streaming sessions: shapes, bounded cache, exact snapshot/restore, samplers agree with the full forward."""

from __future__ import annotations

import torch

from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer, TransformerConfig


def tiny_model(**kw) -> FrameTransformer:
    torch.manual_seed(0)
    m = FrameTransformer(TransformerConfig(latent_channels=3, latent_size=4, patch=2, width=32, depth=2,
                                           heads=2, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_session_generates_and_restores_bit_exactly():
    model = tiny_model(window=4)
    s = Session(model, batch=2, generator=torch.Generator().manual_seed(3))
    s.prime(torch.randn(2, 2, 3, 4, 4), torch.zeros(2, 2, dtype=torch.long))
    snap = s.snapshot()
    acts = torch.tensor([[1], [2]])
    samplers = [SamplerConfig("euler", steps=4, cfg=2.0), SamplerConfig("consistency", steps=2)]
    outs = [s.generate(acts, samplers[i % 2]) for i in range(6)]
    assert s.cache.num_frames <= model.cfg.sink + model.cfg.window - 1
    s.restore(snap)
    again = [s.generate(acts, samplers[i % 2]) for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert outs[0].shape == (2, 1, 3, 4, 4)


def test_one_euler_step_equals_x0_prediction_of_the_full_forward():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(1, 3, 3, 4, 4, generator=g)
    acts = torch.tensor([[0, 1, 2, 3]])
    s = Session(model, batch=1, generator=torch.Generator().manual_seed(5))
    s.prime(ctx, acts[:, :3])
    out = s.generate(acts[:, 3:], SamplerConfig("euler", steps=1, shift=1.0))
    noise = torch.randn(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    # teacher forcing on [ctx, anything] with the last frame at sigma=1
    x_noisy = torch.cat([ctx, noise], 1)
    sigma = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    with torch.no_grad():
        v = model.forward_teacher(torch.cat([ctx, torch.zeros_like(noise)], 1), x_noisy, sigma, acts)[:, 3:]
    assert torch.allclose(out, noise - v, atol=1e-5)
