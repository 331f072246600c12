"""Speed and endurance of the dream on this machine's CPU cores.

    python -m benchmarks.dream --out benchmarks/results/dream.json [--checkpoint CKPT]
        [--session-frames 10000] [--precision auto|fp32|bf16] [--compile]

The dream runs in ``--precision`` (default auto: bf16 weights cast once at load where this machine
runs bf16 measurably faster, :mod:`model.precision`); the report records the precision that ran.
``--compile`` compiles the streaming step (``FrameTransformer.compile_streaming``; ``compiled`` in
the report; each batch size compiles in its warm-up at load, outside the timings).

Measured, decode included, medians with min/max over repeats:
- ``fps_1step``, ``fps_2step``: single-stream frames per second of the few-step sampler
  (``DreamWorld.step``: sample, write the frame to the KV cache, decode, reward heads);
- ``sampler_cfg``: the action guidance the dream sampled with (its card's; above 1 a step batches
  a conditional and a null-action forward);
- ``first_frame_ms``: from ``reset`` (real start frame encoded, cache primed) to the first
  dreamed frame, with the checkpoint's first-frame steps;
- ``action_to_display_ms``: from an action to the frame ready for the window (a step plus the
  upscale to the 512-pixel view);
- ``env_steps_per_s`` for batch sizes 1, 8 and 64 (``DreamVectorEnv``, one batched forward),
  with each batch's floating-point work per env step (``model.flops``, from the configs) and achieved GFLOP/s,
  beside ``matmul_gflops`` (this machine's matrix-multiply rate in the precision that ran) and
  ``batch_speedup_ceiling`` (that rate over batch 1's: the most batching can give here).
With ``--session-frames N``: one N-frame session under a random policy with its resident
memory after warm-up and at the end, NaN/inf checks, and the Fréchet distance (IDM features)
of its last 256 frames and of its first 256 frames against real frames of the same game; the
session runs without termination heads (one unbroken session), and ``--session-strip PNG`` saves
8 evenly spaced frames of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _stats(xs: list[float], nd: int = 2) -> dict[str, float]:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd)}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_report(rep: dict[str, Any], out: str, machine: dict[str, Any]) -> None:
    """Add the machine and the date to a benchmark report and write it as JSON."""
    rep["machine"] = {**machine, "platform": platform.platform(), "torch": torch.__version__}
    rep["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rep, indent=2))
    print(f"wrote {out}")


def single_stream(checkpoint: str, steps: int, frames: int, repeats: int, seed: int = 0,
                  **settings: Any) -> dict[str, Any]:
    from world import make_world

    w = make_world("dream", checkpoint=checkpoint, sampler="consistency", steps=steps, **settings)
    rng = np.random.default_rng(seed)
    fps, first, a2d = [], [], []
    for rep in range(repeats):
        t0 = time.perf_counter()
        w.reset(seed=seed + rep)
        w.step(0)
        first.append(1000 * (time.perf_counter() - t0))
        for a in rng.integers(0, w.num_actions, 8):  # warm-up
            w.step(int(a))
        actions = rng.integers(0, w.num_actions, frames).tolist()
        t0 = time.perf_counter()
        for a in actions:
            t1 = time.perf_counter()
            r = w.step(a)
            w.render(512)
            a2d.append(1000 * (time.perf_counter() - t1))
            if r.terminated or r.truncated:
                w.reset(seed=seed + rep)
        fps.append(frames / (time.perf_counter() - t0))
    sampler = w.sampler
    w.close()
    return {"fps": _stats(fps, 1), "first_frame_ms": _stats(first), "action_to_display_ms": _stats(a2d),
            "sampler": {"steps": sampler.steps, "first_frame_steps": sampler.first_frame_steps, "cfg": sampler.cfg}}


def vector_rate(checkpoint: str, steps: int, batch: int, env_steps: int, repeats: int,
                **settings: Any) -> dict[str, float]:
    from agent_env import DreamVectorEnv

    envs = DreamVectorEnv(batch, checkpoint=checkpoint, sampler="consistency", steps=steps, **settings)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    na = int(envs.single_action_space.n)
    for _ in range(3):
        envs.step(rng.integers(0, na, batch))
    from model import flops as FL

    # the floating-point work of one batched step, from the model configs (model.flops)
    d = envs.dreamer
    flops = FL.dream_step(d.model.cfg, d.ae.cfg, batch, d.sampler.steps, d.sampler.cfg != 1.0)
    rates = []
    n = max(2, env_steps // batch)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            envs.step(rng.integers(0, na, batch))
        rates.append(n * batch / (time.perf_counter() - t0))
    envs.close()
    out = _stats(rates, 1)
    out["gflop_per_env_step"] = round(flops / batch / 1e9, 3)
    out["gflops"] = float(f"{out['median'] * flops / batch / 1e9:.3g}")  # achieved (3 digits: a tiny model is not 0)
    out["precision"] = d.precision
    return out


def matmul_gflops(repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The machine's matrix-multiply rate in ``dtype`` at the benchmark's thread count, on the shape of
    the world model's largest layers at batch 64 (12,288 tokens x 256 -> 1,024): the ceiling that
    batched stepping can approach."""
    a, b = torch.randn(12288, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        rates.append(10 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t0) / 1e9)
    return _stats(rates, 1)


def long_session(checkpoint: str, steps: int, frames: int, seed: int = 0, strip: str | None = None,
                 **settings: Any) -> dict[str, Any]:
    from evaluation import metrics as M
    from evaluation.fidelity import idm_features
    from model.io import default_idm, load_idm
    from world import make_world

    # no termination heads: one unbroken session of ``frames`` frames (with them, an episode the heads
    # end, in lava for instance, would stop it: the play window and the envs reset there)
    w = make_world("dream", checkpoint=checkpoint, sampler="consistency", steps=steps, max_steps=frames + 1,
                   heads="", **settings)
    rng = np.random.default_rng(seed)
    w.reset(seed=seed)
    keep = 256
    head, tail, bad = [], [], 0
    shots = {(k + 1) * frames // 8 - 1 for k in range(8)}  # 8 evenly spaced frames for ``strip``
    strip_frames = []
    rss_warm = None
    t0 = time.perf_counter()
    for i in range(frames):
        f = w.step(int(rng.integers(0, w.num_actions))).frame
        if i < keep:
            head.append(f)
        elif i >= frames - keep:
            tail.append(f)
        if i in shots:
            strip_frames.append(f)
        if i == min(500, frames - 1):
            rss_warm = _rss_mb()
        if not np.isfinite(w._z.cpu().numpy()).all():
            bad += 1
    wall = time.perf_counter() - t0
    rss_end = _rss_mb()
    real_world = make_world(w.real_world_name, **w.real_settings)
    real = [real_world.reset(seed=10_000 + seed)[0]]
    for _ in range(2 * keep - 1):
        r = real_world.step(int(rng.integers(0, w.num_actions)))
        real.append(r.frame)
        if r.terminated or r.truncated:
            real.append(real_world.reset(seed=10_000 + seed + len(real))[0])
    out: dict[str, Any] = {"frames": frames, "wall_s": round(wall, 1), "rss_mb_after_warmup": round(rss_warm, 1),
                           "rss_mb_end": round(rss_end, 1),
                           "rss_growth": round(rss_end / rss_warm - 1, 4), "non_finite_frames": bad,
                           "heads": "off (one unbroken session)", "frechet_frames": [len(head), len(tail)]}
    if strip:
        from PIL import Image

        img = np.concatenate(strip_frames, 1)
        Path(strip).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(strip)
        out["strip"] = {"path": str(strip), "frames": sorted(i + 1 for i in shots)}
    idm_path = default_idm(w.real_world_name)
    if idm_path is not None:
        idm, _ = load_idm(idm_path)
        fr = idm_features(idm, np.stack(real))
        out["frechet_first_256"] = round(M.frechet_distance(idm_features(idm, np.stack(head)), fr), 2)
        out["frechet_last_256"] = round(M.frechet_distance(idm_features(idm, np.stack(tail)), fr), 2)
        out["frechet_ratio"] = round(out["frechet_last_256"] / max(out["frechet_first_256"], 1e-9), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dream", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped default dream)")
    p.add_argument("--frames", type=int, default=200, help="frames per single-stream repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--env-steps", type=int, default=512, help="env steps per vector-env repeat")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--session-frames", type=int, default=0, help="also run one session this long (0: skip)")
    p.add_argument("--session-strip", default=None,
                   help="PNG of 8 evenly spaced frames of that session (does the world hold together?)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the dream's compute precision (auto: bf16 where measurably faster here)")
    p.add_argument("--compile", action="store_true",
                   help="compile the streaming step (torch.compile; each batch size compiles at load)")
    a = p.parse_args(argv)
    from world.dream import DEFAULT_CHECKPOINT

    ckpt = a.checkpoint or str(DEFAULT_CHECKPOINT)
    if not Path(ckpt).exists():
        print(f"error: checkpoint {ckpt!r} not found", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    from model.precision import probe, resolve

    rep: dict[str, Any] = {"checkpoint": ckpt, "command": "python -m benchmarks.dream " + " ".join(argv or sys.argv[1:]),
                           "precision": resolve(a.precision), "precision_asked": a.precision, "probe": probe().as_dict(),
                           "compiled": a.compile}
    for steps in (1, 2):
        s = single_stream(ckpt, steps, a.frames, a.repeats, precision=a.precision, compile=a.compile)
        rep[f"fps_{steps}step"] = s["fps"]["median"]
        rep[f"fps_{steps}step_minmax"] = [s["fps"]["min"], s["fps"]["max"]]
        if steps == 2:
            # the card's action guidance (cfg != 1 runs a conditional and a null-action forward per step)
            rep["sampler_cfg"] = s["sampler"]["cfg"]
            rep["first_frame_ms"] = s["first_frame_ms"]["median"]
            rep["first_frame_ms_minmax"] = [s["first_frame_ms"]["min"], s["first_frame_ms"]["max"]]
            rep["action_to_display_ms"] = s["action_to_display_ms"]["median"]
            rep["action_to_display_ms_minmax"] = [s["action_to_display_ms"]["min"], s["action_to_display_ms"]["max"]]
        print(f"{steps}-step: {s}", flush=True)
    rep["env_steps_per_s"] = {}
    for b in [int(x) for x in a.batches.split(",")]:
        r = vector_rate(ckpt, 2, b, a.env_steps, max(2, a.repeats // 2), precision=a.precision, compile=a.compile)
        rep["env_steps_per_s"][str(b)] = r
        print(f"batch {b}: {r} env steps/s (2-step)", flush=True)
    bs = sorted(rep["env_steps_per_s"], key=int)
    if len(bs) > 1:
        rep["batch_speedup"] = round(rep["env_steps_per_s"][bs[-1]]["median"] / rep["env_steps_per_s"][bs[0]]["median"], 2)
    # how far batching can go here: the fp32 matmul ceiling over what batch 1 already achieves
    rep["matmul_gflops"] = matmul_gflops(dtype=torch.bfloat16 if rep["precision"] == "bf16" else torch.float32)
    achieved = rep["env_steps_per_s"][bs[0]]["gflops"]  # rounded to 0.1: a tiny model can read 0
    rep["batch_speedup_ceiling"] = round(rep["matmul_gflops"]["max"] / achieved, 2) if achieved > 0 else None
    print(f"{rep['precision']} matmul {rep['matmul_gflops']} GFLOP/s; batch {bs[0]} achieves "
          f"{rep['env_steps_per_s'][bs[0]]['gflops']}: batching can give at most {rep['batch_speedup_ceiling']}x",
          flush=True)
    if a.session_frames:
        rep["long_session"] = long_session(ckpt, 2, a.session_frames, strip=a.session_strip, precision=a.precision,
                                          compile=a.compile)
        print(f"long session: {rep['long_session']}", flush=True)
    write_report(rep, a.out, {"cpu_count": torch.get_num_threads(), "processor": platform.processor()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
