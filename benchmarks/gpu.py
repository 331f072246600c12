"""The dream and the trainer on a CUDA GPU.

    python -m benchmarks.gpu --out benchmarks/results/gpu.json [--checkpoint CKPT]

Without CUDA it says so and exits without writing anything (there is nothing to measure).
Measured on ``cuda:0``, medians with min/max, decode to host pixels included:
- ``fps_1step``, ``fps_2step``, ``first_frame_ms``: one dream stream (``DreamWorld`` with
  ``device=cuda``: bf16 autocast, fp32 weights);
- ``env_steps_per_s`` for batch sizes 1 to 1024 (``DreamVectorEnv``, one batched forward);
- ``train``: tokens/s and peak GPU memory of the trainer's own stages (``python -m trainer
  teacher|cd|dmd --device cuda``, a few hundred steps each on a dataset recorded here), for the
  shipped model size and the ``gpu-base`` preset's 105M-parameter transformer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.dream import single_stream, vector_rate, write_report

ROOT = Path(__file__).resolve().parent.parent


def _train_rate(stage: str, config: str, sets: list[str], run: Path, steps: int) -> dict[str, Any]:
    """Run one trainer stage on CUDA for ``steps`` steps; its logged tokens/s and peak memory."""
    cmd = [sys.executable, "-m", "trainer", stage, "--config", config, "--device", "cuda", "--fresh",
           "--set", f"run_dir={run}", "--set", f"train.steps={steps}", "--set", "train.log_every=10",
           "--set", "train.eval_every=0", "--set", f"train.ckpt_every={steps}", *sets]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DREAMSTEP_NO_BAR": "1"}, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-1500:], "command": " ".join(cmd)}
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [x for x in recs if "tokens_per_s" in x][1:]  # the first window holds the warm-up
    tps = [x["tokens_per_s"] for x in recs]
    mem = [x.get("peak_mem_gb", 0.0) for x in recs]
    return {"tokens_per_s": round(statistics.median(tps)), "tokens_per_s_minmax": [round(min(tps)), round(max(tps))],
            "steps_per_s": round(statistics.median(x["steps_per_s"] for x in recs), 2),
            "peak_mem_gb": round(max(mem), 2), "wall_s": round(time.time() - t0, 1), "command": " ".join(cmd)}


def train_rates(tmp: Path, steps: int) -> dict[str, Any]:
    from trainer.pipeline import load_preset

    data = tmp / "data" / "bench-v0"
    subprocess.run([sys.executable, "-m", "world.record", "--world", "adventure", "--episodes", "64", "--steps",
                    "256", "--seed", "0", "--out", str(data), "--quiet"], cwd=ROOT, check=True)
    cfgs = ROOT / "assets" / "configs"
    common = [f"data.dataset={data}", f"latent_cache_dir={tmp / 'latents'}"]
    teacher = str(ROOT / "assets" / "checkpoints" / "adventure_teacher.safetensors")
    out: dict[str, Any] = {}
    big = {k: v for k, v in load_preset("gpu-base")["teacher"].items() if k.startswith("model.") or k == "frames"}
    variants = {
        "teacher": ("teacher", "adventure_teacher.yaml", ["train.batch_size=256", "train.precision=bf16"]),
        "teacher_105m_64px": ("teacher", "adventure_teacher.yaml",
                              ["train.batch_size=64", "train.precision=bf16",
                               *[f"{k}={json.dumps(v)}" for k, v in big.items()]]),
        "cd": ("cd", "adventure_cd_frame2.yaml", [f"teacher={teacher}", "train.batch_size=64", "train.precision=bf16"]),
    }
    for name, (stage, cfg, sets) in variants.items():
        flat = [x for s in common + sets for x in ("--set", s)]
        out[name] = _train_rate(stage, str(cfgs / cfg), flat, tmp / name, steps)
        print(f"train {name}: {out[name]}", flush=True)
    if "error" not in out["cd"]:
        flat = [x for s in common + [f"teacher={teacher}", f"generator={tmp / 'cd'}", "train.batch_size=32",
                                     "train.precision=bf16"] for x in ("--set", s)]
        out["dmd"] = _train_rate("dmd", str(cfgs / "adventure_cfpp_frame2.yaml"), flat, tmp / "dmd", max(20, steps // 5))
        print(f"train dmd: {out['dmd']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped default dream)")
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", default="1,8,64,256,1024")
    p.add_argument("--env-steps", type=int, default=8192)
    p.add_argument("--train-steps", type=int, default=200, help="steps per trainer stage (0: skip training)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.gpu: skipped: CUDA is not available on this machine (torch "
              f"{torch.__version__}); run it where `torch.cuda.is_available()` is True. Nothing was written.")
        return 0
    from world.dream import DEFAULT_CHECKPOINT

    ckpt = a.checkpoint or str(DEFAULT_CHECKPOINT)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rep: dict[str, Any] = {"checkpoint": ckpt, "command": "python -m benchmarks.gpu " + " ".join(argv or sys.argv[1:])}
    for steps in (1, 2):
        s = single_stream(ckpt, steps, a.frames, a.repeats, device="cuda")
        rep[f"fps_{steps}step"] = s["fps"]["median"]
        rep[f"fps_{steps}step_minmax"] = [s["fps"]["min"], s["fps"]["max"]]
        if steps == 2:
            rep["first_frame_ms"] = s["first_frame_ms"]["median"]
            rep["first_frame_ms_minmax"] = [s["first_frame_ms"]["min"], s["first_frame_ms"]["max"]]
        print(f"{steps}-step: {s}", flush=True)
    rep["env_steps_per_s"] = {}
    for b in [int(x) for x in a.batches.split(",")]:
        torch.cuda.reset_peak_memory_stats()
        r = vector_rate(ckpt, 1, b, max(a.env_steps, 4 * b), max(2, a.repeats // 2), device="cuda")
        r["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        rep["env_steps_per_s"][str(b)] = r
        print(f"batch {b}: {r} env steps/s (1-step)", flush=True)
    if a.train_steps:
        with tempfile.TemporaryDirectory() as tmp:
            rep["train"] = train_rates(Path(tmp), a.train_steps)
    write_report(rep, a.out, {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
