"""The long-context teacher's memory spans: which context frames are hidden, how, and the config."""

from __future__ import annotations

import pytest
import torch

from trainer.stages.teacher import TeacherLossConfig, memory_spans


def test_a_span_hides_one_run_of_context_frames_after_the_first():
    B, F = 64, 12
    x0 = torch.randn(B, F, 3, 4, 4)
    clean, clean_sigma = x0.clone(), torch.zeros(B, F)
    cfg = TeacherLossConfig(memory_span=6, memory_prob=0.5, memory_sigma=0.3)
    out, sig = memory_spans(x0, clean, clean_sigma, cfg, torch.Generator().manual_seed(0))
    hidden = sig > 0
    assert not hidden[:, 0].any() and not hidden[:, -1].any()  # the first frame (the sink) always seen
    assert 0.2 < hidden.any(1).float().mean() < 0.8            # about memory_prob of the clips
    for b in range(B):
        idx = torch.nonzero(hidden[b]).flatten()
        if len(idx):
            assert 1 <= len(idx) <= 6 and torch.equal(idx, torch.arange(idx[0], idx[0] + len(idx)))  # one run
    assert torch.all(sig[hidden] >= 0.3) and torch.all(sig[hidden] <= 1.0)
    assert torch.equal(out[~hidden], x0[~hidden])               # the rest keeps its context
    assert not torch.allclose(out[hidden], x0[hidden])
    # the noise is the flow's: (1 - s) x0 + s eps, so the residual scales with the level
    r = (out - (1 - sig[..., None, None, None]) * x0)[hidden]
    assert torch.allclose(r.flatten(1).std(1), sig[hidden], rtol=0.6)


def test_memory_settings_are_checked():
    with pytest.raises(ValueError, match="memory_span"):
        TeacherLossConfig(memory_span=-1)
    with pytest.raises(ValueError, match="generated_sigma"):
        TeacherLossConfig(generated_sigma=1.0)


def test_the_teacher_loss_with_memory_spans_trains():
    from model.transformer import FrameTransformer, TransformerConfig
    from trainer.stages.teacher import TeacherForcing, teacher_forcing_loss

    torch.manual_seed(0)
    net = FrameTransformer(TransformerConfig(latent_channels=3, latent_size=4, patch=2, width=32, depth=2, heads=2,
                                             window=8))
    m = TeacherForcing(net)
    x0, acts = torch.randn(4, 8, 3, 4, 4), torch.randint(0, 5, (4, 8))
    cfg = TeacherLossConfig(memory_span=4, memory_prob=1.0)
    _assert_trains(m, lambda g: teacher_forcing_loss(m, x0, acts, cfg, net.cfg.null_action, g)[0])


def _assert_trains(m: torch.nn.Module, loss_of, steps: int = 30) -> None:
    """Adam on ``loss_of(generator)`` (three noise draws in turn): finite, and the last losses below the first."""
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    losses = []
    for i in range(steps):
        loss = loss_of(torch.Generator().manual_seed(i % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])


def _tiny_teacher(window: int = 8):
    from model.transformer import FrameTransformer, TransformerConfig

    torch.manual_seed(0)
    return FrameTransformer(TransformerConfig(latent_channels=3, latent_size=4, patch=2, width=32, depth=2, heads=2,
                                              window=window))


def test_a_rollout_span_replaces_one_run_with_the_models_own_frames():
    from model.rollout import SamplerConfig, Session
    from trainer.stages.teacher import rollout_span

    net = _tiny_teacher()
    x0, acts = torch.randn(3, 8, 3, 4, 4), torch.randint(0, 5, (3, 8))
    cfg = TeacherLossConfig(rollout_span=4, rollout_steps=2)
    ctx, start, length = rollout_span(net, x0, acts, cfg, torch.Generator().manual_seed(5))
    assert 2 <= length <= 4 and start >= 1 and start + length <= 7  # a real frame before and after
    keep = torch.ones(8, dtype=torch.bool)
    keep[start:start + length] = False
    assert torch.equal(ctx[:, keep], x0[:, keep])
    assert not torch.allclose(ctx[:, start:start + length], x0[:, start:start + length])
    # the run is exactly the model's own autoregressive rollout from the real frames before it
    gen = torch.Generator().manual_seed(5)
    torch.randint(1, 2, (1,), generator=gen), torch.randint(1, 2, (1,), generator=gen)  # the two draws above
    with torch.no_grad():
        s = Session(net, 3, generator=gen, cache="dynamic")
        s.prime(x0[:, :start], acts[:, :start])
        want = torch.cat([s.generate(acts[:, t:t + 1], SamplerConfig(steps=2, shift=cfg.shift))
                          for t in range(start, start + length)], 1)
    torch.testing.assert_close(ctx[:, start:start + length], want, atol=1e-5, rtol=1e-4)


def test_a_rollout_span_primes_a_pose_taken_model_with_the_data_s_taken_moves():
    from model.rollout import SamplerConfig, Session
    from tests.test_transformer import tiny
    from trainer.stages.teacher import rollout_span

    net = tiny(window=8, pose_moves=[[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]], pose_radius=2, pose_taken=True)
    x0, acts = torch.randn(2, 8, 3, 4, 4, dtype=torch.float64), torch.full((2, 8), 4)  # RIGHT all along
    taken = torch.zeros(2, 8, dtype=torch.bool)  # every move into a wall
    cfg = TeacherLossConfig(rollout_span=4, rollout_steps=2)
    ctx, start, length = rollout_span(net, x0, acts, cfg, torch.Generator().manual_seed(1), taken)
    assert start == 4  # seed 1: four real frames before the span, at poses 1..4 had their moves been taken
    gen = torch.Generator().manual_seed(1)
    torch.randint(1, 2, (1,), generator=gen), torch.randint(1, 2, (1,), generator=gen)  # the two draws above
    with torch.no_grad():
        s = Session(net, 2, generator=gen, cache="dynamic")
        s.prime(x0[:, :start], acts[:, :start], taken=taken[:, :start])
        assert s.cache.pose_at(start - 1).tolist() == [[0, 0], [0, 0]]  # blocked: the context stood still
        want = torch.cat([s.generate(acts[:, t:t + 1], SamplerConfig(steps=2, shift=cfg.shift))
                          for t in range(start, start + length)], 1)
    torch.testing.assert_close(ctx[:, start:start + length], want.to(ctx.dtype), atol=1e-5, rtol=1e-4)
    blind, _, _ = rollout_span(net, x0, acts, cfg, torch.Generator().manual_seed(1))  # every move taken
    assert not torch.allclose(blind[:, start:start + length], ctx[:, start:start + length], atol=1e-3)


def test_rollout_settings_are_checked():
    with pytest.raises(ValueError, match="rollout_span"):
        TeacherLossConfig(rollout_span=-2)
    with pytest.raises(ValueError, match="rollout_steps"):
        TeacherLossConfig(rollout_span=4, rollout_steps=0)


def test_generated_context_enters_at_the_level_the_sampler_writes_it():
    from trainer.stages.teacher import teacher_forcing_loss

    seen = {}

    def model(clean, noisy, sigma, acts, clean_sigma, pose_actions=None):
        seen.update(clean=clean, clean_sigma=clean_sigma)
        return torch.zeros_like(noisy)

    x0, acts = torch.randn(2, 6, 3, 4, 4), torch.zeros(2, 6, dtype=torch.long)
    ctx = x0.clone()
    ctx[:, 2:4] += 1.0  # the model's own frames
    ctx_sigma = torch.zeros(2, 6)
    ctx_sigma[:, 2:4] = 0.25
    teacher_forcing_loss(model, x0, acts, TeacherLossConfig(), 4, torch.Generator().manual_seed(0), ctx, ctx_sigma)
    assert torch.equal(seen["clean_sigma"], ctx_sigma)
    assert torch.equal(seen["clean"][:, [0, 1, 4, 5]], x0[:, [0, 1, 4, 5]])  # real frames as they are
    r = seen["clean"][:, 2:4] - 0.75 * ctx[:, 2:4]  # (1 - s) x + s eps
    assert abs(r.std().item() - 0.25) < 0.05
    # with context noise on, the generated frames keep their level
    teacher_forcing_loss(model, x0, acts, TeacherLossConfig(context_noise=0.1, context_noise_prob=1.0), 4,
                         torch.Generator().manual_seed(0), ctx, ctx_sigma)
    assert torch.equal(seen["clean_sigma"][:, 2:4], ctx_sigma[:, 2:4]) and (seen["clean_sigma"][:, 4:] <= 0.1).all()


def test_the_teacher_loss_on_rollout_context_trains_toward_the_real_frames():
    from trainer.stages.teacher import TeacherForcing, rollout_span, teacher_forcing_loss

    net = _tiny_teacher()
    m = TeacherForcing(net)
    x0, acts = torch.randn(4, 8, 3, 4, 4), torch.randint(0, 5, (4, 8))
    cfg = TeacherLossConfig(rollout_span=4, rollout_steps=2)

    def loss_of(g: torch.Generator) -> torch.Tensor:
        ctx, _, _ = rollout_span(net, x0, acts, cfg, g)
        return teacher_forcing_loss(m, x0, acts, cfg, net.cfg.null_action, g, ctx)[0]
    _assert_trains(m, loss_of)


def test_the_hidden_walk_enters_as_noise_at_level_one_and_only_later_frames_come_back():
    import numpy as np

    from evaluation.rollouts import generate
    from model.rollout import SamplerConfig

    net = _tiny_teacher(window=12)
    calls = []
    forward = net.forward

    def spy(x, sigma, *a, **k):
        calls.append((x.shape[1], sigma.detach().clone()))
        return forward(x, sigma, *a, **k)
    net.forward = spy

    class AE:  # frames <-> latents of the tiny model's shape
        def encode_frames(self, f):
            return torch.zeros(f.shape[0], f.shape[1], 3, 4, 4)

        def decode_frames(self, z):
            return np.zeros((*z.shape[:2], 8, 8, 3), np.uint8)

    ctx, acts = np.zeros((2, 3, 8, 8, 3), np.uint8), np.zeros((2, 3 + 6), np.int64)
    out = generate(net, AE(), ctx, acts, SamplerConfig(steps=2), seed=0, precision="fp32", hidden=4)
    assert out.shape[:2] == (2, 2)  # 6 frames after the context, 4 hidden: 2 generated
    hidden = [s for n, s in calls if n == 4]
    assert len(hidden) == 1 and torch.all(hidden[0] == 1.0)  # one write of the 4 hidden frames, told level 1
    with pytest.raises(ValueError, match="hidden must be in"):
        generate(net, AE(), ctx, acts, SamplerConfig(steps=2), seed=0, precision="fp32", hidden=6)
