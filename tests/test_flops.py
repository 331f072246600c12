"""The FLOP formulas of model.flops: a hand count on a tiny model, and torch's flop counter on real calls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import model.transformer as T
from model import flops as FL
from model.autoencoder import Autoencoder, AutoencoderConfig
from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer, TransformerConfig
from tests.trainer_helpers import ROOT


def _count(fn) -> int:
    c = FlopCounterMode(display=False)
    with c:
        fn()
    return int(c.get_total_flops())


@pytest.fixture
def math_attention(monkeypatch):
    """The explicit attention (two batched matmuls), which torch's flop counter sees."""
    orig = T.attention
    monkeypatch.setattr(T, "attention", lambda q, k, v, bias, backend="auto": orig(q, k, v, bias, "math"))


def test_hand_count_of_a_tiny_forward():
    # width 8, 2 heads, depth 1, mlp 2x, 2 latent channels on a 2x2 grid (patch 1): 4 tokens a frame
    cfg = TransformerConfig(latent_channels=2, latent_size=2, patch=1, width=8, depth=1, heads=2, mlp_ratio=2.0,
                            window=4, sink=1)
    # one row, 3 frames (12 tokens) attending to themselves:
    patch_in = 2 * 12 * 2 * 8            # 384
    t_mlp = 3 * 2 * (8 * 8) * 2          # 768
    ada = 2 * 3 * 8 * 48                 # 2,304
    qkv = 2 * 12 * 8 * 24                # 4,608
    attn = 2 * 2 * 12 * 12 * 8           # 4,608
    proj = 2 * 12 * 8 * 8                # 1,536
    mlp = 2 * 2 * 12 * 8 * 16            # 6,144
    final = 2 * 3 * 8 * 16               # 768
    patch_out = 2 * 12 * 8 * 2           # 384
    hand = patch_in + t_mlp + ada + qkv + attn + proj + mlp + final + patch_out
    assert hand == 21_504
    assert FL.transformer_forward(cfg, 1, 3) == hand
    assert FL.transformer_forward(cfg, 5, 3) == 5 * hand
    assert FL.teacher_train_step(cfg, 1, 3) == 3 * FL.transformer_forward(cfg, 1, 6)


def test_formulas_equal_the_flop_counter(math_attention):
    cfg = TransformerConfig(latent_channels=4, latent_size=4, patch=2, width=32, depth=2, heads=2, window=4, sink=1)
    net = FrameTransformer(cfg).eval()
    x, s = torch.randn(3, 5, 4, 4, 4), torch.rand(3, 5)
    a = torch.zeros(3, 5, dtype=torch.long)
    with torch.no_grad():
        assert _count(lambda: net.forward_teacher(x, x, s, a)) == FL.transformer_forward(cfg, 3, 10)
    ae_cfg = AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 8), dec_width=8, dec_fine=8, dec_res_blocks=1,
                               output="palette", palette_size=4, image_size=32)
    ae = Autoencoder(ae_cfg).eval()
    with torch.no_grad():
        assert _count(lambda: ae.encode(torch.randn(2, 3, 32, 32))) == FL.encode(ae_cfg, 2)
        assert _count(lambda: ae.decode(torch.randn(2, 4, 4, 4))) == FL.decode(ae_cfg, 2)
    for guided in (False, True):
        sess = Session(net, 2, generator=torch.Generator().manual_seed(0))
        sess.prime(torch.randn(2, 1, 4, 4, 4), torch.zeros(2, 1, dtype=torch.long))
        sampler = SamplerConfig("consistency", steps=2, cfg=2.0 if guided else 1.0)
        acts = torch.zeros(2, 1, dtype=torch.long)
        with torch.no_grad():
            for _ in range(cfg.window + 1):  # steady state: the ring is full
                sess.generate(acts, sampler, fuse=True)

            def frame(sess: Session = sess, sampler: SamplerConfig = sampler, acts: torch.Tensor = acts) -> None:
                z = sess.generate(acts, sampler, fuse=True)
                ae.decode(z[:, 0])
            assert _count(frame) == FL.dream_step(cfg, ae_cfg, 2, 2, guided)


def test_roofline_quick_report_has_the_fields(tmp_path):
    out = tmp_path / "roofline.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.roofline", "--out", str(out), "--quick", "--rounds", "1",
                        "--frames", "4", "--batch", "4", "--train-batch", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert set(rep["peak_gflops"]) == {"fp32", "bf16"} and all(v > 0 for v in rep["peak_gflops"].values())
    assert isinstance(rep["bf16_faster"], bool) and rep["precision_auto"] in ("fp32", "bf16")
    paths = rep["paths"]
    for name in ("teacher_train", "cd_train", "dream_b1_2step", "dream_b4_2step", "ae_encode", "ae_decode"):
        p = paths[name]
        assert p["gflops"] > 0 and p["pct_of_peak"] > 0 and p["speedup_vs_fp32"] > 0
        assert p["precision"] == rep["precision_auto"]
    assert paths["dream_b1_2step"]["fps"] > 0 and paths["dream_b1_2step"]["first_frame_ms"] > 0
    assert paths["dream_b4_2step"]["env_steps_per_s"] > 0
    assert paths["teacher_train"]["windows_per_s"] > 0 and paths["teacher_train"]["flops"] > 0
    assert rep["machine"]["cpu_flags"] is not None
    assert "| dream_b1_2step |" in out.with_suffix(".md").read_text()


def test_roofline_compiled_training_step_matches_eager_and_is_reported_beside_it():
    """--compile times the teacher step through torch.compile (aot_eager here: no C++ build); the
    compiled step computes the same loss, and its headline sits beside the eager one, against both
    the eager and the compiled fp32 step."""
    import torch

    from benchmarks import roofline as R

    torch.manual_seed(0)
    eager_step, batch = R.training_paths("fp32", 1)["teacher_train"][0]()
    torch.manual_seed(0)
    compiled_step, batch2 = R.training_paths("fp32", 1, "aot_eager")["teacher_train"][0]()
    assert compiled_step.call is not compiled_step.module
    assert compiled_step(batch2) == pytest.approx(eager_step(batch), rel=1e-4)

    def by(s):
        return {"s_per_step": {"median": s}, "windows_per_s": round(8 / s, 2)}

    paths = {"teacher_train": {"flops": 10**11, "windows_per_step": 8,
                               "by_precision": {"fp32": by(1.0), "bf16": by(0.5), "fp32+compile": by(0.8),
                                                "bf16+compile": by(0.25)}}}
    peaks = {"fp32": {"peak": 200.0}, "bf16": {"peak": 1000.0}}
    R.summarise(paths, peaks, "bf16")
    t = paths["teacher_train"]
    assert t["speedup_vs_fp32"] == 2.0 and t["gflops"] == 200.0 and t["pct_of_peak"] == 20.0
    c = t["compiled"]
    assert c["precision"] == "bf16+compile" and c["gflops"] == 400.0 and c["pct_of_peak"] == 40.0
    assert (c["speedup_vs_fp32"], c["speedup_vs_fp32_compiled"], c["speedup_vs_eager"]) == (4.0, 3.2, 2.0)
    assert t["by_precision"]["fp32+compile"]["pct_of_peak"] == 62.5  # against the fp32 peak
