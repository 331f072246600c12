"""precision=auto: the choice, the bf16 inference and training paths against fp32, and no change
without matrix units."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import model.precision as P
from model.attention import attention, math_attention
from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer, TransformerConfig

TINY = TransformerConfig(latent_channels=4, latent_size=4, patch=1, width=32, depth=2, heads=2, window=4, sink=1)


@pytest.fixture
def forced(monkeypatch):
    """Force the probe's answer (and forget the cached one before and after)."""
    def force(value: str) -> None:
        monkeypatch.setenv(P.ENV, value)
        P._probe_cached.cache_clear()
    yield force
    P._probe_cached.cache_clear()


def _trained_looking(cfg: TransformerConfig = TINY) -> FrameTransformer:
    """A tiny model whose zero-initialised output and modulation layers are random (as after training)."""
    torch.manual_seed(0)
    net = FrameTransformer(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(0, 0.05)
    return net.eval().requires_grad_(False)


def test_auto_follows_the_probe_and_explicit_names_win(forced):
    forced("1")
    assert P.resolve("auto") == "bf16" and P.probe().reason.startswith("forced")
    assert P.resolve("fp32") == "fp32"
    forced("0")
    assert P.resolve("auto") == "fp32"
    assert P.resolve("bf16") == "bf16"
    with pytest.raises(P.PrecisionError, match="'fp16'"):
        P.resolve("fp16")
    forced("maybe")
    with pytest.raises(P.PrecisionError, match="DREAMSTEP_BF16"):
        P.resolve("auto")


def test_no_bf16_flags_means_fp32_without_a_timing_probe(monkeypatch):
    monkeypatch.delenv(P.ENV, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: ("avx2",))
    monkeypatch.setattr(P, "_matmul_rate", lambda *a, **k: pytest.fail("no probe without bf16 instructions"))
    P._probe_cached.cache_clear()
    try:
        pr = P.probe("cpu")
        assert not pr.bf16_faster and "no native bf16" in pr.reason
        assert P.resolve("auto") == "fp32"
    finally:
        P._probe_cached.cache_clear()


def test_probe_picks_bf16_only_when_measurably_faster(monkeypatch):
    monkeypatch.delenv(P.ENV, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: ("amx_bf16",))
    for fp32, bf16, want in ((100.0, 400.0, True), (100.0, 110.0, False)):
        monkeypatch.setattr(P, "_matmul_rate", lambda dt, f=fp32, b=bf16, **k: b if dt == torch.bfloat16 else f)
        P._probe_cached.cache_clear()
        assert P.probe().bf16_faster is want
        assert P.probe().fp32_gflops == fp32
    P._probe_cached.cache_clear()


@pytest.mark.skipif(not P.packing_available(), reason="this torch build cannot pre-pack bf16 weights")
def test_packed_linear_equals_the_linear_it_replaces():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 48).to(torch.bfloat16).requires_grad_(False)
    mod = torch.nn.Sequential(copy.deepcopy(lin))
    assert P.pack_linears(mod) == 1 and isinstance(mod[0], P.PackedLinear)
    for shape in ((1, 32), (5, 7, 32), (64, 16, 32)):
        x = torch.randn(*shape, dtype=torch.bfloat16)
        assert torch.equal(mod(x), F.linear(x, lin.weight, lin.bias))
    x32 = torch.randn(3, 32)  # another dtype is cast to the module's (a bf16 module computes in bf16)
    assert torch.equal(mod(x32), F.linear(x32.to(torch.bfloat16), lin.weight, lin.bias))
    twin = copy.deepcopy(mod)  # a copy packs its own weight again
    assert isinstance(twin[0], P.PackedLinear) and torch.equal(twin(x32), mod(x32))


def test_math_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    bias = torch.randn(1, 3, 10, 10)
    bias[..., 7:] = float("-inf")
    assert torch.allclose(math_attention(q, k, v, bias), F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                          atol=1e-5)
    # auto takes the explicit path on a CPU when gradients flow, SDPA otherwise: the same values
    qg = q.clone().requires_grad_(True)
    assert torch.allclose(attention(qg, k, v, bias), attention(q, k, v, bias), atol=1e-5)


def _stream(net: FrameTransformer, frames: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(1)
    ctx = torch.randn(2, 2, 4, 4, 4)
    sess = Session(net, 2, generator=torch.Generator().manual_seed(3))
    sess.prime(ctx, torch.zeros(2, 2, dtype=torch.long))
    sampler = SamplerConfig("consistency", steps=2, shift=3.0)
    return [sess.generate(torch.full((2, 1), i % 5), sampler, fuse=True) for i in range(frames)]


def test_bf16_streaming_step_matches_fp32_within_tolerance():
    net = _trained_looking()
    ref = _stream(net)
    bf = P.cast_for_inference(copy.deepcopy(net), torch.bfloat16)
    got = _stream(bf)
    for a, b in zip(ref, got):
        assert b.dtype == torch.float32  # the sampler's state stays fp32
        rel = (a - b).norm() / a.norm()
        assert rel < 0.05, float(rel)


def test_bf16_training_step_matches_fp32_within_tolerance():
    from trainer.stages.teacher import TeacherForcing, TeacherLossConfig, teacher_forcing_loss

    net = _trained_looking().train().requires_grad_(True)
    x0 = torch.randn(4, 3, 4, 4, 4)
    acts = torch.randint(0, 5, (4, 3))
    grads = {}
    losses = {}
    for prec in ("fp32", "bf16"):
        m = TeacherForcing(copy.deepcopy(net))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            loss, _ = teacher_forcing_loss(m, x0, acts, TeacherLossConfig(), TINY.null_action,
                                           torch.Generator().manual_seed(5))
        loss.backward()
        losses[prec] = float(loss.detach())
        grads[prec] = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        assert all(p.dtype == torch.float32 for p in m.parameters())  # fp32 master weights
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
    cos = F.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99, float(cos)


def test_frozen_teacher_is_cast_once_under_autocast():
    net = _trained_looking()
    assert P.frozen_for_autocast(net) is net and net.pos.dtype == torch.float32  # outside autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        P.frozen_for_autocast(net)
    assert net.pos.dtype == torch.bfloat16
    trainable = _trained_looking().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        P.frozen_for_autocast(trainable)
    assert trainable.pos.dtype == torch.float32  # trained weights stay fp32 masters


def test_the_dream_runs_fp32_when_bf16_is_not_faster(forced):
    from world import make_world

    forced("0")
    w = make_world("dream", warmup=False)
    assert w.precision == "fp32" and next(w.model.parameters()).dtype == torch.float32
    assert w.describe()["precision"] == "fp32"
    forced("1")
    w2 = make_world("dream", warmup=False)
    assert w2.precision == "bf16" and next(w2.model.parameters()).dtype == torch.bfloat16
    assert next(w2.ae.encoder.parameters()).dtype == torch.float32  # latents stay the trained ones
    # explicit fp32 wins over a faster bf16
    assert make_world("dream", precision="fp32", warmup=False).precision == "fp32"


def test_a_bad_precision_setting_is_a_clear_error():
    from world import make_world
    from world.core import InvalidSettingError

    with pytest.raises(InvalidSettingError, match="precision must be"):
        make_world("dream", precision="half", warmup=False)
