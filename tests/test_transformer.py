"""Mechanics of the frame-causal transformer: masks, no leakage, KV-cache streaming, rolling window."""

from __future__ import annotations

import pytest
import torch

from model.transformer import (
    FrameTransformer,
    KVCache,
    RingKVCache,
    TransformerConfig,
    frame_mask,
    teacher_forcing_descriptors,
)


def tiny(**kw) -> FrameTransformer:
    cfg = TransformerConfig(latent_channels=3, latent_size=4, patch=2, width=32, depth=2, heads=2,
                            num_actions=5, **kw)
    torch.manual_seed(0)
    model = FrameTransformer(cfg).double().eval()
    # AdaLN-Zero starts as the identity; randomise so the tests see a non-trivial network
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def clip(B=2, F=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, F, 3, 4, 4, generator=g, dtype=torch.float64)
    xt = torch.randn(B, F, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.rand(B, F, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 6, (B, F), generator=g)
    return x0, xt, sigma, actions


def test_teacher_forcing_mask_is_the_one_in_algorithms_md():
    F = 3
    times, clean = teacher_forcing_descriptors(F)
    m = frame_mask(times, clean, times, clean, block=1, window=100, sink=1).int()
    # rows/cols: clean 0,1,2 then noisy 0,1,2
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],   # clean i sees clean <= i
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],   # noisy i sees clean < i and itself
        [1, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 1],
    ])
    assert torch.equal(m, expected)


def test_chunkwise_mask_denoises_blocks_jointly():
    times, clean = teacher_forcing_descriptors(4)
    m = frame_mask(times, clean, times, clean, block=2, window=100, sink=1).int()
    noisy_rows = m[4:]
    # noisy frames 0,1 (block 0) see each other and no clean frame; 2,3 see clean 0,1
    assert noisy_rows[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert noisy_rows[3].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert m[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # clean 1 sees its whole block


def test_window_and_sink_in_mask():
    t = torch.arange(6)
    c = torch.ones(6, dtype=torch.bool)
    m = frame_mask(t, c, t, c, block=1, window=2, sink=1)
    assert m[5].tolist() == [True, False, False, False, True, True]


@pytest.mark.parametrize("block", [1, 2])
def test_no_future_leakage(block):
    model = tiny(block_frames=block, window=16)
    x0, xt, sigma, actions = clip(F=6)
    out = model.forward_teacher(x0, xt, sigma, actions)
    j = 4
    x0b, xtb, ab = x0.clone(), xt.clone(), actions.clone()
    x0b[:, j:] += 1.0
    xtb[:, j:] += 1.0
    ab[:, j:] = (ab[:, j:] + 1) % 6
    out2 = model.forward_teacher(x0b, xtb, sigma, ab)
    first_affected = (j // block) * block  # a block is denoised jointly
    assert torch.allclose(out[:, :first_affected], out2[:, :first_affected], atol=1e-12)
    assert not torch.allclose(out[:, j], out2[:, j])


def stream(model: FrameTransformer, x0, xt, sigma, actions, cache_cls=KVCache) -> tuple[torch.Tensor, list[int]]:
    """Generate frame by frame with the KV cache: noisy pass, then write the clean frame."""
    cache = cache_cls(model.cfg)
    outs, sizes = [], []
    K = model.cfg.block_frames
    for s in range(0, x0.shape[1], K):
        t = torch.arange(s, s + K)
        sl = slice(s, s + K)
        outs.append(model(xt[:, sl], sigma[:, sl], actions[:, sl], t, torch.zeros(K, dtype=torch.bool),
                          cache=cache))
        model(x0[:, sl], torch.zeros_like(sigma[:, sl]), actions[:, sl], t, torch.ones(K, dtype=torch.bool),
              cache=cache, write_cache=True)
        sizes.append(cache.num_frames)
    return torch.cat(outs, 1), sizes


@pytest.mark.parametrize("cache_cls", [KVCache, RingKVCache])
@pytest.mark.parametrize("block", [1, 2])
def test_streaming_with_kv_cache_equals_full_forward(block, cache_cls):
    model = tiny(block_frames=block, window=16)
    x0, xt, sigma, actions = clip(F=6)
    full = model.forward_teacher(x0, xt, sigma, actions)
    streamed, _ = stream(model, x0, xt, sigma, actions, cache_cls)
    assert torch.allclose(full, streamed, atol=1e-10)


@pytest.mark.parametrize("cache_cls", [KVCache, RingKVCache])
@pytest.mark.parametrize("block,window,sink", [(1, 3, 1), (2, 4, 1), (1, 4, 2)])
def test_rolling_window_is_bounded_and_matches_windowed_forward(cache_cls, block, window, sink):
    model = tiny(window=window, sink=sink, block_frames=block)
    x0, xt, sigma, actions = clip(F=12)
    full = model.forward_teacher(x0, xt, sigma, actions)  # the mask applies window + sink
    streamed, sizes = stream(model, x0, xt, sigma, actions, cache_cls)
    assert max(sizes) <= model.cfg.sink + model.cfg.window - 1
    assert torch.allclose(full, streamed, atol=1e-10)
    if (block, window, sink) != (1, 3, 1):
        return
    # the window really limits context: a change in frame 1 does not reach frame 8 (but frame 0 does)
    x0b = x0.clone()
    x0b[:, 1] += 1
    assert torch.allclose(full[:, 8], model.forward_teacher(x0b, xt, sigma, actions)[:, 8], atol=1e-12)
    x0c = x0.clone()
    x0c[:, 0] += 1
    assert not torch.allclose(full[:, 8], model.forward_teacher(x0c, xt, sigma, actions)[:, 8])


def test_cache_snapshot_restores_exactly():
    model = tiny(window=4)
    x0, xt, sigma, actions = clip(F=5)
    cache = KVCache(model.cfg)
    for i in range(3):
        model(x0[:, i:i + 1], torch.zeros(2, 1, dtype=torch.float64), actions[:, i:i + 1],
              torch.tensor([i]), torch.ones(1, dtype=torch.bool), cache=cache, write_cache=True)
    snap = cache.state()
    a = model(xt[:, 3:4], sigma[:, 3:4], actions[:, 3:4], torch.tensor([3]), torch.zeros(1, dtype=torch.bool), cache)
    model(x0[:, 3:4], torch.zeros(2, 1, dtype=torch.float64), actions[:, 3:4], torch.tensor([3]),
          torch.ones(1, dtype=torch.bool), cache=cache, write_cache=True)
    cache.load_state(snap)
    b = model(xt[:, 3:4], sigma[:, 3:4], actions[:, 3:4], torch.tensor([3]), torch.zeros(1, dtype=torch.bool), cache)
    assert torch.equal(a, b)


def test_null_action_and_zero_init_action_embedding():
    cfg = TransformerConfig(latent_channels=3, latent_size=4, patch=2, width=32, depth=1, heads=2)
    model = FrameTransformer(cfg)
    assert model.action_emb.num_embeddings == cfg.num_actions + 1
    assert torch.count_nonzero(model.action_emb.weight) == 0


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="patch 3"):
        TransformerConfig(latent_size=8, patch=3)


def test_chunk_student_initialises_from_a_frame_teacher():
    """A chunk-wise student (blocks of 3) starts from a frame-wise teacher: every weight copied, the
    time-distance bias kept for distances 0..window-1 and the sink, within-block negative distances
    at the teacher's distance-0 value."""
    base = dict(latent_channels=4, latent_size=4, patch=2, width=32, depth=1, heads=2, window=4, sink=1)
    torch.manual_seed(0)
    teacher = FrameTransformer(TransformerConfig(**base, block_frames=1))
    with torch.no_grad():
        teacher.time_bias.normal_()
    student = FrameTransformer(TransformerConfig(**base, block_frames=3))
    student.load_from(teacher)
    tb, sb = teacher.time_bias, student.time_bias
    assert sb.shape == (2, 4 + 2 + 1)
    assert torch.equal(sb[:, 2:6], tb[:, 0:4]) and torch.equal(sb[:, 6:], tb[:, 4:])
    assert torch.equal(sb[:, 0], tb[:, 0]) and torch.equal(sb[:, 1], tb[:, 0])
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(t_state[k], s_state[k]) for k in t_state if k != "time_bias")
    with pytest.raises(ValueError, match="heads"):
        FrameTransformer(TransformerConfig(**{**base, "heads": 4})).load_from(teacher)


def test_a_longer_window_warm_starts_from_a_short_teacher():
    """A long-context teacher (window 10, 2 sinks) from a short one (window 4, 1 sink): every weight
    copied, the bias kept for the distances both know, the farther ones at the farthest trained value;
    on a clip no longer than the old window the two models give the same velocities."""
    base = dict(latent_channels=4, latent_size=4, patch=2, width=32, depth=1, heads=2)
    torch.manual_seed(0)
    short = FrameTransformer(TransformerConfig(**base, window=4, sink=1))
    with torch.no_grad():
        for p in short.parameters():
            p.normal_(0, 0.1)
    long = FrameTransformer(TransformerConfig(**base, window=10, sink=2))
    long.load_from(short)
    tb, lb = short.time_bias, long.time_bias
    assert lb.shape == (2, 10 + 2)
    assert torch.equal(lb[:, :4], tb[:, :4]) and torch.equal(lb[:, 4:10], tb[:, 3:4].expand(2, 6))
    assert torch.equal(lb[:, 10], tb[:, 4]) and torch.equal(lb[:, 11], tb[:, 4])
    s_state, l_state = short.state_dict(), long.state_dict()
    assert all(torch.equal(s_state[k], l_state[k]) for k in s_state if k != "time_bias")
    x, s = torch.randn(2, 4, 4, 4, 4), torch.rand(2, 4)
    a = torch.randint(0, 5, (2, 4))
    long.cfg.sink = 1  # the same sink count for the comparison (the sink bias of frame 0 is the same)
    assert torch.allclose(short.forward_teacher(x, x, s, a), long.forward_teacher(x, x, s, a), atol=1e-5)


def test_a_teacher_init_across_window_sizes(tmp_path):
    """teacher.init from a shorter-window checkpoint goes through load_from (not a shape error)."""
    from safetensors.torch import save_file

    from trainer.models import init_from

    base = dict(latent_channels=4, latent_size=4, patch=2, width=32, depth=1, heads=2)
    short = FrameTransformer(TransformerConfig(**base, window=4, sink=1))
    ck = tmp_path / "step_00000001"
    ck.mkdir()
    save_file({f"net.{k}": v.contiguous() for k, v in short.state_dict().items()}, str(ck / "model.safetensors"))
    import dataclasses
    import json

    (ck / "meta.json").write_text(json.dumps({"step": 1, "config": {"model": dataclasses.asdict(short.cfg)}}))
    long = FrameTransformer(TransformerConfig(**base, window=10, sink=1))
    init_from(long, ck, "teacher")
    assert torch.equal(long.time_bias[:, :4], short.time_bias[:, :4])
    assert torch.equal(long.pos, short.pos)


@pytest.mark.parametrize("block", [1, 3])
def test_teacher_context_once_equals_teacher_forcing(block):
    """The ODE solve computes the clean half's keys/values once and runs only the noisy half."""
    model = tiny(block_frames=block, window=16)
    x0, xt, sigma, actions = clip(F=6)
    ctx = model.teacher_context(x0, actions)
    assert torch.allclose(model.forward_noisy(xt, sigma, actions, ctx), model.forward_teacher(x0, xt, sigma, actions),
                          atol=1e-10)
    # the context is reusable: a second noisy state with the same context
    assert torch.allclose(model.forward_noisy(xt * 0.5, sigma, actions, ctx),
                          model.forward_teacher(x0, xt * 0.5, sigma, actions), atol=1e-10)
    # a clip longer than the window: the context keeps every frame, the mask applies the window
    short = tiny(block_frames=block, window=3)
    assert torch.allclose(short.forward_noisy(xt, sigma, actions, short.teacher_context(x0, actions)),
                          short.forward_teacher(x0, xt, sigma, actions), atol=1e-10)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_solve_teacher_ode_with_context_equals_full_forwards(cfg_scale):
    from model import flow
    from trainer.stages.ode import solve_teacher_ode

    model = tiny()
    x0, xt, _, actions = clip(F=5)
    actions = actions.clamp(max=4)
    grid = flow.sigma_grid(7, 3.0).double()

    class Plain(torch.nn.Module):  # no .net: solve_teacher_ode takes the full-forward path
        def forward(self, c, n, s, a, cs):
            return model.forward_teacher(c, n, s.double(), a, cs.double())

    fast, saved_f, nfe_f = solve_teacher_ode(model, x0, actions, xt, grid, cfg_scale, 5, keep=(0, 3))
    full, saved_s, nfe_s = solve_teacher_ode(Plain(), x0, actions, xt, grid, cfg_scale, 5, keep=(0, 3))
    assert torch.allclose(fast, full, atol=1e-9)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(saved_f, saved_s, strict=True))
    per_step = 2 if cfg_scale != 1.0 else 1
    assert nfe_s == 2 * 6 * per_step and nfe_f == nfe_s + 2 * per_step


def test_recorded_attention_weights_are_the_masked_softmax():
    from model.attention import record_attention, recording_attention

    model = tiny(window=3)
    x0, xt, sigma, actions = clip(F=5)
    with record_attention() as maps:
        model.forward_teacher(x0, xt, sigma, actions)
    assert not recording_attention() and len(maps) == model.cfg.depth
    L = model.cfg.tokens_per_frame
    w = maps[0]  # (B, Nq, Nk) over the teacher-forcing layout's 2 x 5 frames
    assert w.shape == (2, 10 * L, 10 * L) and torch.allclose(w.sum(-1), torch.ones(2, 10 * L))
    # the noisy frame 4 sees clean frames 0 (sink), 2, 3 (window 3) and itself, nothing else
    seen = w[:, (5 + 4) * L:(5 + 5) * L].sum((0, 1)).view(10, L).sum(-1) > 0
    assert seen.tolist() == [True, False, True, True, False, False, False, False, False, True]
    model.forward_teacher(x0, xt, sigma, actions)
    assert len(maps) == model.cfg.depth  # nothing recorded outside the block
