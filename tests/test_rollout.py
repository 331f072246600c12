"""Streaming sessions: shapes, bounded cache, exact snapshot/restore, samplers agree with the full forward."""

from __future__ import annotations

import pytest
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


def test_guided_one_step_consistency_is_cfg_on_the_x0_predictions():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(1, 3, 3, 4, 4, generator=g)
    acts = torch.tensor([[0, 1, 2, 3]])
    null = torch.full_like(acts, model.cfg.null_action)
    noise = torch.randn(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    x_noisy = torch.cat([ctx, noise], 1)
    sigma = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    clean = torch.cat([ctx, torch.zeros_like(noise)], 1)
    with torch.no_grad():
        x0_c = noise - model.forward_teacher(clean, x_noisy, sigma, acts)[:, 3:]
        x0_u = noise - model.forward_teacher(clean, x_noisy, sigma, torch.cat([acts[:, :3], null[:, 3:]], 1))[:, 3:]
    outs = {}
    for scale in (1.0, 2.5):
        s = Session(model, batch=1, generator=torch.Generator().manual_seed(5))
        s.prime(ctx, acts[:, :3])
        outs[scale] = s.generate(acts[:, 3:], SamplerConfig("consistency", steps=1, shift=1.0, cfg=scale))
    assert torch.allclose(outs[1.0], x0_c, atol=1e-5)  # cfg 1: the plain conditional prediction
    assert torch.allclose(outs[2.5], x0_u + 2.5 * (x0_c - x0_u), atol=1e-5)
    assert not torch.allclose(outs[2.5], outs[1.0], atol=1e-3)


@pytest.mark.parametrize("cache", ["ring", "dynamic"])
def test_reset_rows_restarts_one_row_and_leaves_the_others_undisturbed(cache):
    model = tiny_model(window=4)
    sampler = SamplerConfig("consistency", steps=2)
    s = Session(model, batch=3, generator=torch.Generator().manual_seed(5), cache=cache)
    s.prime(torch.randn(3, 1, 3, 4, 4), torch.zeros(3, 1, dtype=torch.long))
    acts = torch.tensor([[1], [2], [4]])
    for _ in range(6):  # past the window: the cache holds the sink and the recent frames
        s.generate(acts, sampler)
    snap = s.snapshot()
    plain = s.generate(acts, sampler)
    s.restore(snap)
    start = torch.randn(1, 3, 4, 4)
    s.reset_rows(torch.tensor([1]), start)
    after = s.generate(acts, sampler)
    assert torch.allclose(after[[0, 2]], plain[[0, 2]], atol=1e-5)  # the other rows stream on
    assert not torch.allclose(after[1], plain[1], atol=1e-3) and torch.isfinite(after).all()
    # the reset row's cache is exactly the start frame's history, computed on its own
    one = Session(model, batch=1, cache=cache)
    s.restore(snap)
    s.reset_rows(torch.tensor([1]), start)
    c = snap["cache"]
    if cache == "dynamic":
        one.cache.load_state({"layers": [(k[1:2], v[1:2]) for k, v in c["layers"]], "times": c["times"]})
    else:
        one.cache.load_state({"buffers": [(k[1:2], v[1:2]) for k, v in c["buffers"]],
                              "slot_times": c["slot_times"], "valid": c["valid"]})
    one.reset_rows(torch.tensor([0]), start)
    for (k1, v1), (k2, v2) in zip(one.cache.layers, s.cache.layers):
        assert torch.allclose(k1[0], k2[1], atol=1e-6) and torch.allclose(v1[0], v2[1], atol=1e-6)


def test_ring_and_dynamic_sessions_agree():
    """The preallocated ring cache streams the same frames as the growing one (past the window)."""
    model = tiny_model(window=3, sink=1)
    outs = {}
    for cache in ("ring", "dynamic"):
        s = Session(model, batch=2, generator=torch.Generator().manual_seed(7), cache=cache)
        s.prime(torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1)),
                torch.zeros(2, 2, dtype=torch.long))
        acts = torch.tensor([[1], [3]])
        outs[cache] = torch.cat([s.generate(acts, SamplerConfig("consistency", steps=2), fuse=i % 2 == 0)
                                 for i in range(10)], 1)
        assert s.cache.num_frames <= 3
    assert torch.allclose(outs["ring"], outs["dynamic"], atol=1e-5)


def test_fused_cache_write_matches_the_separate_write():
    """Writing a finished frame in the next frame's first call gives the same frames (and cache)."""
    model = tiny_model(window=4)
    z0 = torch.randn(2, 1, 3, 4, 4)
    acts = [torch.tensor([[i % 5], [(i + 2) % 5]]) for i in range(8)]
    for sampler in (SamplerConfig("consistency", steps=2, first_frame_steps=3), SamplerConfig("euler", steps=3),
                    SamplerConfig("euler", steps=2, cfg=2.0), SamplerConfig("consistency", steps=2, context_sigma=0.2)):
        outs = {}
        for fuse in (False, True):
            s = Session(model, batch=2, generator=torch.Generator().manual_seed(7))
            s.prime(z0, torch.zeros(2, 1, dtype=torch.long))
            outs[fuse] = [s.generate(a, sampler, fuse=fuse) for a in acts]
            if fuse:  # a snapshot with a frame pending replays exactly
                snap = s.snapshot()
                assert s.pending is not None
                nxt = s.generate(acts[0], sampler, fuse=True)
                s.restore(snap)
                assert torch.equal(s.generate(acts[0], sampler, fuse=True), nxt)
                s.flush()
                assert s.pending is None and s.cache.num_frames <= model.cfg.window + model.cfg.sink
        for a, b in zip(outs[False], outs[True]):
            assert torch.allclose(a, b, atol=1e-4), (sampler, (a - b).abs().max())


def test_generated_frames_enter_the_cache_at_the_card_s_context_sigma():
    """A card's loss.generated_sigma becomes the sampler's context_sigma; the session writes its own
    frames noised to that level and marked so (real frames stay clean), which changes what follows."""
    card = {"loss": {"shift": 3.0, "generated_sigma": 0.25}}
    assert SamplerConfig.from_card(card, "euler", 4).context_sigma == 0.25
    assert SamplerConfig.from_card({"loss": {}}, "euler", 4).context_sigma == 0.0
    with pytest.raises(ValueError, match="context_sigma"):
        SamplerConfig(context_sigma=1.0)
    model = tiny_model(window=4)
    outs = {}
    for sig in (0.0, 0.25):
        s = Session(model, batch=1, generator=torch.Generator().manual_seed(5))
        s.prime(torch.randn(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 1, dtype=torch.long))
        assert s.pending is None
        sampler = SamplerConfig("consistency", steps=1, context_sigma=sig)
        first = s.generate(torch.tensor([[1]]), sampler, fuse=True)
        assert s.pending is not None and torch.all(s.pending[3] == sig)  # the level it is written at
        outs[sig] = (first, s.generate(torch.tensor([[2]]), sampler))
    assert torch.equal(outs[0.0][0], outs[0.25][0])          # the first frame saw only the real frame
    assert not torch.allclose(outs[0.0][1], outs[0.25][1])   # the second read a noised, marked frame


def test_compiled_streaming_step_streams_the_same_frames():
    """``compile_streaming`` of a bf16 model (its pre-packed linears unpacked for inductor): the same
    frames as the eager step to bf16 rounding (fused writes, past the window, a row reset), one graph
    per call shape, none for reset_rows. (About 20 s: two graphs compile.)"""
    import copy

    import torch._dynamo

    from model.precision import cast_for_inference

    eager = cast_for_inference(tiny_model(window=3, sink=1), torch.bfloat16)
    compiled = copy.deepcopy(eager)
    compiled.compile_streaming()
    assert compiled.compiled and not eager.compiled
    torch._dynamo.utils.counters.clear()
    outs = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        s = Session(model, batch=2, generator=torch.Generator().manual_seed(7))
        s.prime(torch.randn(2, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1)),
                torch.zeros(2, 1, dtype=torch.long))
        acts = torch.tensor([[1], [3]])
        frames = []
        for i in range(8):
            if i == 5:
                s.reset_rows(torch.tensor([1]), torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)))
            frames.append(s.generate(acts, SamplerConfig("consistency", steps=2), fuse=True))
        outs[name] = torch.cat(frames, 1).float()
    err = (outs["eager"] - outs["compiled"]).abs().max()
    print("max |eager - compiled|", float(err), "of", float(outs["eager"].abs().max()))
    assert err <= 0.02 * outs["eager"].abs().max()
    assert torch.isfinite(outs["compiled"]).all()
    # the prime/flush call (1 frame) and the fused call (2 frames); reset_rows stays eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    # a deep copy of the compiled model computes with its own weights, not the original's
    clone = copy.deepcopy(compiled)
    with torch.no_grad():
        clone.patch_out.bias.add_(1.0)
    z = torch.randn(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    first = {}
    for name, model in (("compiled", compiled), ("clone", clone)):
        s = Session(model, batch=1, generator=torch.Generator().manual_seed(7))
        s.prime(z, torch.zeros(1, 1, dtype=torch.long))
        first[name] = s.generate(torch.tensor([[1]]), SamplerConfig("consistency", steps=1)).float()
    assert (first["clone"] - first["compiled"]).abs().max() > 0.1
