"""Tiny datasets and configs for the trainer tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def record_tiny_dataset(out: Path, episodes: int = 6, steps: int = 40, seed: int = 0) -> Path:
    """Record a small dataset of the default world with the project's recorder."""
    subprocess.run([sys.executable, "-m", "world.record", "--world", "adventure", "--policy", "explorer",
                    "--episodes", str(episodes), "--steps", str(steps), "--seed", str(seed),
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True, text=True)
    return out


def write_config(path: Path, base: str, **sections) -> Path:
    data = {"base": str(ROOT / "assets" / "configs" / base), **sections}
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_ae_config(tmp: Path, dataset: Path, run: str, **train) -> Path:
    t = {"steps": 24, "batch_size": 8, "ckpt_every": 8, "log_every": 2, "eval_every": 0, "lr": 0.003,
         "warmup": 2, "ema_decay": 0.0, **train}
    return write_config(tmp / f"{run}.yaml", "adventure_ae.yaml", run_dir=str(tmp / run),
                        data={"dataset": str(dataset), "holdout_episodes": 1},
                        model={"latent_channels": 8, "enc_channels": [16, 16, 16], "dec_width": 16,
                               "dec_fine": 8, "dec_res_blocks": 1},
                        train=t, eval_frames=16)
