"""Larger worlds and the GPU options, as far as a CPU can check them: the gpu-base preset's sizes,
a 128x128 world through the whole pipeline at a tiny size, torch.compile in the trainer, and the
GPU benchmark's refusal without CUDA."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from model.autoencoder import Autoencoder, AutoencoderConfig
from model.idm import IDMConfig, InverseDynamics
from model.transformer import FrameTransformer
from tests.trainer_helpers import ROOT, record_tiny_dataset, tiny_ae_config
from trainer.config import load_config, parse_overrides
from trainer.pipeline import TRAINED, load_preset
from trainer.stages.teacher import TeacherExperiment

ENV = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}


def test_gpu_base_preset_is_a_128px_world_with_a_100m_transformer():
    preset = load_preset("gpu-base")
    assert preset["settings"]["resolution"] == 128
    over = {k: v for k, v in preset["teacher"].items()}
    cfg = load_config(TeacherExperiment, ROOT / "assets/configs/adventure_teacher.yaml",
                      {**parse_overrides([f"{k}={json.dumps(v)}" for k, v in over.items()]),
                       "model.latent_size": preset["autoencoder"]["model.image_size"] // 8})
    with torch.device("meta"):
        net = FrameTransformer(cfg.model)
    n = sum(p.numel() for p in net.parameters())
    assert 90e6 <= n <= 120e6, n
    assert cfg.model.tokens_per_frame == 64  # 16x16 latents in 2x2 patches


def test_128px_autoencoder_and_idm_shapes():
    ae = Autoencoder(AutoencoderConfig(image_size=128, latent_channels=8, enc_channels=(8, 8, 8), dec_width=8,
                                       dec_fine=8, dec_res_blocks=1))
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 8, 16, 16) and ae.decode(z).shape == (2, 3, 128, 128)
    idm = InverseDynamics(IDMConfig(width=8, feature_dim=16, image_size=128))
    assert idm(x, x).shape == (2, 5)
    with pytest.raises(ValueError, match="multiple of 8"):
        AutoencoderConfig(image_size=100)


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    """A run's logged ``key`` by step, from its metrics.jsonl."""
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs if key in r}


def test_a_128px_world_runs_the_whole_pipeline_and_its_autoencoder_and_heads_learn(tmp_path):
    tiny = yaml.safe_load((ROOT / "tests" / "pipeline_tiny.yaml").read_text())
    tiny["settings"] = {"resolution": 128}
    tiny["autoencoder"]["model.image_size"] = 128
    for stage in TRAINED:
        tiny[stage]["train.log_every"] = 1  # every step's loss in metrics.jsonl
    # the autoencoder and the heads at full rate from the first step (the recipes warm up over 100s of steps):
    # in the preset's 12 and 10 steps their losses fall clearly (on 4 training seeds: the autoencoder's
    # by 2-4% over its last 3 steps against its first 3, the heads' by 60-90%)
    for stage in ("autoencoder", "heads"):
        tiny[stage].update({"train.lr": 0.003, "train.warmup": 1})
    preset = tmp_path / "tiny128.yaml"
    preset.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(out),
                        "--preset", str(preset)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # every trained stage logged a finite loss at each of its steps
    for stage in TRAINED:
        losses = _losses(out / stage)
        assert sorted(losses) == list(range(1, tiny[stage]["train.steps"] + 1)), (stage, sorted(losses))
        assert all(math.isfinite(v) for v in losses.values()), (stage, losses)
    assert all(math.isfinite(v) for v in _losses(out / "dmd", "fake_loss").values())
    for stage, drop in (("autoencoder", 0.01), ("heads", 0.3)):
        v = list(_losses(out / stage).values())
        assert v[-1] < v[0] and sum(v[-3:]) < (1 - drop) * sum(v[:3]), (stage, v)
    # the 128x128 frames went through every stage: a 16x16 latent grid, and finite fidelity at 128 pixels
    assert json.loads((out / "autoencoder" / "config.json").read_text())["model"]["image_size"] == 128
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["settings"]["resolution"] == 128
    assert report["provenance"]["config"]["model"]["latent_size"] == 16
    assert len(report["psnr_at"]) == tiny["evaluate"]["horizon"]
    fidelity = [*report["psnr_at"], *report["ssim_at"], report["psnr_mean_16"], report["ssim_mean_16"],
                report["changed_psnr_mean_16"], report["seen_psnr_mean_16"], report["ae_ceiling_psnr"],
                report["copy_last_psnr_mean_16"], report["sharpness_ratio_16"]]
    assert all(isinstance(v, float) and math.isfinite(v) for v in fidelity), fidelity
    assert 0 < report["psnr_mean_16"] < 100 and 0 < report["ae_ceiling_psnr"] < 100
    from agent_env import make_dream_env

    env = make_dream_env(str(out), steps=1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (128, 128, 3)
    env.close()


def test_trainer_compiles_the_trained_module(tmp_path):
    ds = record_tiny_dataset(tmp_path / "tiny-v0", episodes=3, steps=16)
    cfg = tiny_ae_config(tmp_path, ds, "ae", steps=3, precision="fp32", threads=1)
    r = subprocess.run([sys.executable, "-m", "trainer", "autoencoder", "--config", str(cfg), "--set",
                        "train.compile=true", "--set", "train.compile_backend=aot_eager", "--set", "train.log_every=1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.compile: mode default, backend aot_eager" in r.stdout
    losses = [json.loads(ln)["loss"] for ln in Path(tmp_path / "ae" / "metrics.jsonl").read_text().splitlines()
              if "loss" in ln]
    assert len(losses) == 3 and all(map(lambda v: v == v, losses))


def test_gpu_benchmark_says_it_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(out)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "CUDA" in r.stdout + r.stderr and "skipped" in (r.stdout + r.stderr)
    assert not out.exists()  # no result file without a measurement
