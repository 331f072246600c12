"""How close each hot path comes to this machine's measured matrix-multiply peak, fp32 and bf16.

    python -m benchmarks.roofline --out benchmarks/results/roofline.json [--rounds 5] [--quick] [--compile inductor]

1. **Peaks.** fp32 and bf16 matrix multiplies (``F.linear``) at a few square sizes and at the world
   model's widest layer shape, each timed ``--rounds`` times (min/median/max GFLOP/s); a dtype's peak
   is its best median.
2. **Hot paths**, each run in fp32 and in ``precision=auto`` (what this machine's probe picks,
   :mod:`model.precision`), interleaved round by round so that a noisy neighbour hits both alike:
   - ``teacher_train``, ``cd_train``, ``dmd_train``: one training step of the shipped configs
     (``assets/configs/adventure_teacher.yaml``, ``adventure_cd_frame2.yaml``,
     ``adventure_cfpp_frame2.yaml``) with the shipped weights, on random latents of the clip shape:
     forward under the stage's precision, backward, gradient clipping, AdamW, EMA/target update;
   - ``dream_b1_1step``/``dream_b1_2step``: the single dream (``DreamWorld.step``, decode and reward
     heads included), plus ``first_frame_ms`` (reset to the first dreamed frame);
   - ``dream_b64_1step``/``dream_b64_2step``: the batched vector env (``DreamVectorEnv.step``);
   - ``ae_encode``/``ae_decode``: the shipped autoencoder on 64 frames.
   For each: wall time per unit of work, achieved GFLOP/s, % of the peak of the precision it ran in,
   and the speed-up over fp32.

FLOP counts come from :mod:`model.flops` (from the model configs), except the DMD step, whose
self-rollout and critic updates are counted by ``torch.utils.flop_counter`` on one real step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.io import SHIPPED
from world.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "assets" / "configs"


def _stats(xs: list[float], nd: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd)}


# ----------------------------------------------------------------------------- peaks
def matmul_peaks(rounds: int, quick: bool = False) -> dict[str, Any]:
    """GFLOP/s of ``F.linear`` per dtype and shape (m, k, n), min/median/max over ``rounds``."""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 256, 1024)] if not quick else [(1024, 1024, 1024)]
    out: dict[str, Any] = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        per: dict[str, Any] = {}
        for m, k, n in shapes:
            x, w = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt)
            reps = max(2, int(4e9 / (2 * m * k * n)))
            for _ in range(2):
                torch.nn.functional.linear(x, w)
            rates = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(reps):
                    torch.nn.functional.linear(x, w)
                rates.append(reps * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
            per[f"{m}x{k}x{n}"] = _stats(rates)
        out[name] = {"by_shape": per, "peak": max(v["median"] for v in per.values())}
    return out


# ----------------------------------------------------------------------------- training steps
class _Step:
    """One training step of a stage's loss as :func:`trainer.loop.train` runs it."""

    def __init__(self, stage: Any, module: torch.nn.Module, lr: float, ema_decay: float, precision: str,
                 compile_backend: str = "") -> None:
        from model.precision import resolve

        self.stage, self.module = stage, module
        # the loss reads the module through torch.compile, as trainer.loop does with train.compile
        self.call = torch.compile(module, backend=compile_backend) if compile_backend else module
        self.precision = resolve(precision)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.99))
        self.ema = copy.deepcopy(module).requires_grad_(False) if ema_decay > 0 else None
        self.ema_decay = ema_decay

    def __call__(self, batch: Any) -> float:
        from model.distill import ema_update
        from trainer.loop import autocast

        with autocast(torch.device("cpu"), self.precision):
            critic = getattr(self.stage, "critic_step", None)
            if critic is not None:  # DMD's fake score steps its own optimizer first (as the loop does)
                batch = critic(self.call, batch, 0)
            loss, _ = self.stage.loss(self.call, batch, 0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        if self.ema is not None:
            ema_update(self.ema, self.module, self.ema_decay)
        after = getattr(self.stage, "after_step", None)
        if after is not None:
            after(self.module)
        return float(loss.detach())


def _bare(cls: type, **attrs: Any) -> Any:
    """A stage object with only the attributes its ``loss`` reads (no dataset needed)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def _config(stage: str, name: str) -> Any:
    from trainer.__main__ import build

    return build(stage, str(CONFIGS / name), {})[0]


def training_paths(precision: str, batch: int = 0, compile_backend: str = "") -> dict[str, tuple[Callable[[], Any], int, int]]:
    """name -> (make a step function and its batch, FLOPs per step or 0 (count it), windows per step);
    ``batch`` replaces the shipped configs' batch sizes (0: keep them); ``compile_backend`` runs the
    teacher and CD losses through ``torch.compile`` (the DMD step is always eager)."""
    from model import flops as FL
    from model.io import load_world_model
    from trainer.stages.cd import CDStage
    from trainer.stages.dmd import DMDStage, GeneratorModule
    from trainer.stages.teacher import TeacherForcing, TeacherLossConfig, TeacherStage

    teacher_path = SHIPPED / "adventure_teacher.safetensors"
    out: dict[str, tuple[Callable[[], Any], int, int]] = {}

    def batch_of(cfg: Any, B: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(B, frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g),
                torch.randint(0, cfg.num_actions, (B, frames), generator=g))

    tc = _config("teacher", "adventure_teacher.yaml")
    cc = _config("cd", "adventure_cd_frame2.yaml")
    dc = _config("dmd", "adventure_cfpp_frame2.yaml")
    for c in (tc, cc, dc):
        c.train.batch_size = batch or c.train.batch_size

    def teacher() -> tuple[Callable, Any]:
        net, _cfg, _ = load_world_model(teacher_path)
        net.train().requires_grad_(True)
        stage = _bare(TeacherStage, cfg=tc, gen=torch.Generator().manual_seed(0))
        return _Step(stage, TeacherForcing(net), tc.train.lr, tc.train.ema_decay, precision, compile_backend), \
            batch_of(net.cfg, tc.train.batch_size, tc.frames)

    out["teacher_train"] = (teacher, FL.teacher_train_step(tc.model, tc.train.batch_size, tc.frames),
                            tc.train.batch_size)
    def cd() -> tuple[Callable, Any]:
        t, tcfg, _ = load_world_model(teacher_path)
        student, _c, _ = load_world_model(teacher_path)
        student.train().requires_grad_(True)
        wrapped = TeacherForcing(student)
        stage = _bare(CDStage, cfg=cc, teacher=TeacherForcing(t).eval(), target=copy.deepcopy(wrapped).requires_grad_(False),
                      shift=float(tcfg["loss"]["shift"]), model_cfg=t.cfg, gen=torch.Generator().manual_seed(0),
                      teacher_nfe=0, samples=0)
        return _Step(stage, wrapped, cc.train.lr, cc.train.ema_decay, precision, compile_backend), \
            batch_of(t.cfg, cc.train.batch_size, cc.frames)

    t_model = load_world_model(teacher_path)[0].cfg
    out["cd_train"] = (cd, FL.cd_train_step(t_model, cc.train.batch_size, cc.frames, cc.loss.cfg), cc.train.batch_size)
    def dmd() -> tuple[Callable, Any]:
        t, tcfg, _ = load_world_model(teacher_path)
        g, _gcfg, _ = load_world_model(SHIPPED / "adventure_cfpp_frame2.safetensors")
        fake = TeacherForcing(copy.deepcopy(t)).requires_grad_(True)
        shift = float(tcfg["loss"]["shift"])
        stage = _bare(DMDStage, cfg=dc, real=TeacherForcing(t).requires_grad_(False).eval(), fake=fake,
                      fake_train=fake, fake_opt=torch.optim.AdamW(fake.parameters(), lr=dc.dmd.critic_lr),
                      gen=torch.Generator().manual_seed(0), shift=shift, model_cfg=g.cfg,
                      fm=TeacherLossConfig(shift=shift, action_dropout=0.0, change_weight=0.0))
        gen = GeneratorModule(g.train().requires_grad_(True))
        return _Step(stage, gen, dc.train.lr, dc.train.ema_decay, precision), batch_of(g.cfg, dc.train.batch_size, dc.frames)

    out["dmd_train"] = (dmd, 0, dc.train.batch_size)
    return out


def count_flops(step: Callable, batch: Any) -> int:
    """FLOPs of one step by torch's flop counter, with the explicit attention (which it counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    import model.transformer as T

    orig = T.attention
    T.attention = lambda q, k, v, bias, backend="auto": orig(q, k, v, bias, "math")
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            step(batch)
        return int(counter.get_total_flops())
    finally:
        T.attention = orig


def time_training(rounds: int, quick: bool, auto: str, batch: int = 0, compile_backend: str = "") -> dict[str, Any]:
    """Interleaved fp32 / auto step times of each training path; with ``compile_backend``, the teacher
    and CD steps also compiled, in both precisions (keys ``fp32+compile``, ``bf16+compile``)."""
    res: dict[str, Any] = {}
    for name, (make, flops, windows) in training_paths("fp32", batch).items():
        if quick and name == "dmd_train":
            continue
        makes = {"fp32": make}
        if auto != "fp32":
            makes[auto] = training_paths(auto, batch)[name][0]
        if compile_backend and name != "dmd_train":
            for prec in dict.fromkeys(("fp32", auto)):
                makes[f"{prec}+compile"] = training_paths(prec, batch, compile_backend)[name][0]
        steps = {p: m() for p, m in makes.items()}
        if not flops:
            flops = count_flops(*steps["fp32"])
        times: dict[str, list[float]] = {p: [] for p in steps}
        for p, (fn, clip) in steps.items():  # warm-up: allocator, oneDNN kernels, autocast caches
            for _ in range(2 if p.endswith("+compile") else 1):  # a compiled step: compiling, then a settled one
                fn(clip)
        for _ in range(rounds):
            for p, (fn, clip) in steps.items():
                t0 = time.perf_counter()
                fn(clip)
                times[p].append(time.perf_counter() - t0)
        res[name] = {"flops": flops, "windows_per_step": windows,
                     "by_precision": {p: {"s_per_step": _stats(t, 3),
                                          "windows_per_s": round(windows / statistics.median(t), 2)}
                                      for p, t in times.items()}}
        print(f"{name}: " + ", ".join(f"{p} {statistics.median(t):.3f} s/step" for p, t in times.items()), flush=True)
        del steps
    return res


# ----------------------------------------------------------------------------- dream and autoencoder
def _dream_settings(key: str) -> dict[str, Any]:
    """``fp32``, ``bf16``, ``fp32+compile``, ...: the dream settings of a timed variant."""
    prec, _, comp = key.partition("+")
    return {"precision": prec, "compile": comp == "compile"}


def time_dream(rounds: int, auto: str, batch_big: int, frames: int, compile: bool = False,
               quick: bool = False) -> dict[str, Any]:
    """The dream's paths in fp32 and the auto precision; with ``compile`` also both with the streaming
    step compiled (``--compile``; each compiles at load, in its warm-up); ``quick``: 2 steps only."""
    from agent_env import DreamVectorEnv
    from world import make_world

    res: dict[str, Any] = {}
    precs = ["fp32"] + ([auto] if auto != "fp32" else [])
    if compile:
        precs += [f"{p}+compile" for p in precs]
    for steps in (2,) if quick else (1, 2):
        worlds = {p: make_world("dream", sampler="consistency", steps=steps, **_dream_settings(p)) for p in precs}
        fps: dict[str, list[float]] = {p: [] for p in precs}
        first: dict[str, list[float]] = {p: [] for p in precs}
        rng = np.random.default_rng(0)
        for r in range(rounds + 1):
            acts = rng.integers(0, 5, frames).tolist()
            for p, w in worlds.items():
                t0 = time.perf_counter()
                w.reset(seed=r)
                w.step(0)
                f_ms = 1000 * (time.perf_counter() - t0)
                t0 = time.perf_counter()
                for a in acts:
                    if w.step(a).terminated:
                        w.reset(seed=r)
                rate = frames / (time.perf_counter() - t0)
                if r:  # round 0 warms up
                    fps[p].append(rate)
                    first[p].append(f_ms)
        w = worlds["fp32"]
        res[f"dream_b1_{steps}step"] = {
            "sampler": {"steps": w.sampler.steps, "first_frame_steps": w.sampler.first_frame_steps, "cfg": w.sampler.cfg},
            "by_precision": {p: {"fps": _stats(fps[p]), "s_per_frame": round(1 / statistics.median(fps[p]), 5),
                                 "first_frame_ms": _stats(first[p])} for p in precs}}
        print(f"dream b1 {steps}-step: " + ", ".join(f"{p} {statistics.median(fps[p]):.1f} fps, first "
                                                     f"{statistics.median(first[p]):.0f} ms" for p in precs), flush=True)
        for w in worlds.values():
            w.close()
        envs = {p: DreamVectorEnv(batch_big, sampler="consistency", steps=steps, **_dream_settings(p)) for p in precs}
        rates: dict[str, list[float]] = {p: [] for p in precs}
        n = 4
        for e in envs.values():
            e.reset(seed=0)
            e.step(np.zeros(batch_big, np.int64))
        for _ in range(rounds):
            for p, e in envs.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    e.step(rng.integers(0, 5, batch_big))
                rates[p].append(n * batch_big / (time.perf_counter() - t0))
        res[f"dream_b{batch_big}_{steps}step"] = {
            "batch": batch_big,
            "by_precision": {p: {"env_steps_per_s": _stats(rates[p]), "s_per_env_step":
                                 round(1 / statistics.median(rates[p]), 6)} for p in precs}}
        print(f"dream b{batch_big} {steps}-step: " + ", ".join(f"{p} {statistics.median(rates[p]):.0f} env steps/s"
                                                               for p in precs), flush=True)
        for e in envs.values():
            e.close()
    return res


def time_autoencoder(rounds: int, auto: str, batch: int = 64) -> dict[str, Any]:
    from model.io import load_autoencoder
    from model.precision import DTYPES, cast_for_inference

    ae32, _ = load_autoencoder(SHIPPED / "adventure_ae.safetensors")
    aes = {"fp32": ae32}
    if auto != "fp32":
        aes[auto] = cast_for_inference(copy.deepcopy(ae32), DTYPES[auto])
    x = torch.rand(batch, 3, 64, 64) * 2 - 1
    z = torch.randn(batch, ae32.cfg.latent_channels, ae32.cfg.latent_size, ae32.cfg.latent_size)
    res: dict[str, Any] = {"ae_encode": {"frames": batch, "by_precision": {}},
                           "ae_decode": {"frames": batch, "by_precision": {}}}
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for r in range(rounds + 1):
            for p, ae in aes.items():
                dt = DTYPES[p]
                for what, fn in (("ae_encode", lambda ae=ae, dt=dt: ae.encoder(x.to(dt))),
                                 ("ae_decode", lambda ae=ae: ae.decode(z))):
                    t0 = time.perf_counter()
                    fn()
                    if r:
                        times.setdefault((what, p), []).append(time.perf_counter() - t0)
    for (what, p), t in times.items():
        res[what]["by_precision"][p] = {"ms_per_frame": round(1000 * statistics.median(t) / batch, 4),
                                        "s_per_batch": _stats(t, 5)}
    return res


# ----------------------------------------------------------------------------- report
def summarise(paths: dict[str, Any], peaks: dict[str, Any], auto: str) -> None:
    """Add each path's headline fields: the auto precision's GFLOP/s, % of its peak, speed-up."""
    from model import flops as FL
    from model.autoencoder import AutoencoderConfig
    from model.io import load_autoencoder, load_world_model

    net, cfg, _ = load_world_model(SHIPPED / "adventure_cfpp_frame2.safetensors")
    ae_cfg: AutoencoderConfig = load_autoencoder(cfg["autoencoder"])[0].cfg
    for name, rep in paths.items():
        by = rep["by_precision"]
        if name.startswith("dream_b"):
            steps = int(name.rsplit("_", 1)[1][0])
            guided = float(rep.get("sampler", {}).get("cfg", 1.0)) != 1.0

            rep["flops_per_frame"] = FL.dream_step(net.cfg, ae_cfg, 1, steps, guided)
            unit = "s_per_frame" if "s_per_frame" in by["fp32"] else "s_per_env_step"
            per_s = {p: 1 / v[unit] for p, v in by.items()}
            flops = rep["flops_per_frame"]
        elif name.startswith("ae_"):
            fn = FL.encode if name == "ae_encode" else FL.decode
            flops = fn(ae_cfg, 1)
            rep["flops_per_frame"] = flops
            per_s = {p: 1000 / v["ms_per_frame"] for p, v in by.items()}
        else:
            flops = rep["flops"]
            per_s = {p: 1 / v["s_per_step"]["median"] for p, v in by.items()}
        for p, v in by.items():
            v["gflops"] = round(flops * per_s[p] / 1e9, 1)
            v["pct_of_peak"] = round(100 * v["gflops"] / peaks[p.split("+")[0]]["peak"], 1)
        rep["precision"] = auto
        rep["gflops"] = by[auto]["gflops"]
        rep["pct_of_peak"] = by[auto]["pct_of_peak"]
        rep["speedup_vs_fp32"] = round(per_s[auto] / per_s["fp32"], 2)
        if f"{auto}+compile" in by:  # torch.compile (train.compile / the dream's compile): against eager
            c = f"{auto}+compile"    # fp32 and compiled fp32
            rate = {k: (by[c][k]["median"] if isinstance(by[c][k], dict) else by[c][k])
                    for k in ("windows_per_s", "fps", "env_steps_per_s", "first_frame_ms") if k in by[c]}
            rep["compiled"] = {"precision": c, "gflops": by[c]["gflops"], "pct_of_peak": by[c]["pct_of_peak"],
                               **rate,
                               "speedup_vs_fp32": round(per_s[c] / per_s["fp32"], 2),
                               "speedup_vs_fp32_compiled": round(per_s[c] / per_s["fp32+compile"], 2),
                               "speedup_vs_eager": round(per_s[c] / per_s[auto], 2)}
    for name in ("dream_b1_1step", "dream_b1_2step"):
        if name in paths:
            by = paths[name]["by_precision"][auto]
            paths[name]["fps"] = by["fps"]["median"]
            paths[name]["first_frame_ms"] = by["first_frame_ms"]["median"]
    for name in paths:
        if name.startswith("dream_b") and "env_steps_per_s" in paths[name]["by_precision"][auto]:
            paths[name]["env_steps_per_s"] = paths[name]["by_precision"][auto]["env_steps_per_s"]["median"]
        if name.endswith("_train"):
            paths[name]["windows_per_s"] = paths[name]["by_precision"][auto]["windows_per_s"]


def render_markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    pk = rep["peak_gflops"]
    lines = [
        "# Roofline: the hot paths against this machine's matrix-multiply peak", "",
        f"`{rep['command']}` on {m['processor'] or m['cpu_model']} ({m['threads']} threads, torch {m['torch']}), "
        f"{rep['date']}.", "",
        f"CPU flags seen: {', '.join(m['cpu_flags']) or 'none of the bf16/matrix-unit flags'}. "
        f"Probe: {rep['probe']['reason']}; `precision=auto` runs **{rep['precision_auto']}**.", "",
        f"Peaks (best median of `F.linear` over shapes): fp32 **{pk['fp32']:.0f}** GFLOP/s, "
        f"bf16 **{pk['bf16']:.0f}** GFLOP/s.", "",
        "| path | precision | per unit | GFLOP/s | % of peak | fp32 per unit | fp32 GFLOP/s | speed-up vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in rep["paths"].items():
        by = p["by_precision"]
        a, f = by[p["precision"]], by["fp32"]

        def unit(v: dict[str, Any]) -> str:
            if "s_per_step" in v:
                return f"{v['s_per_step']['median']:.3f} s/step ({v['windows_per_s']} windows/s)"
            if "fps" in v:
                return f"{1000 * v['s_per_frame']:.1f} ms/frame ({v['fps']['median']} fps, first {v['first_frame_ms']['median']:.0f} ms)"
            if "env_steps_per_s" in v:
                return f"{1000 * v['s_per_env_step']:.2f} ms/env step ({v['env_steps_per_s']['median']:.0f}/s)"
            return f"{v['ms_per_frame']:.3f} ms/frame"
        lines.append(f"| {name} | {p['precision']} | {unit(a)} | {a['gflops']} | {a['pct_of_peak']}% | {unit(f)} | "
                     f"{f['gflops']} | {p['speedup_vs_fp32']}x |")
        if "compiled" in p:
            c = p["compiled"]
            lines.append(f"| {name} | {c['precision']} | {unit(by[c['precision']])} | {c['gflops']} | "
                         f"{c['pct_of_peak']}% | {unit(by['fp32+compile'])} (compiled) | {by['fp32+compile']['gflops']} | "
                         f"{c['speedup_vs_fp32']}x ({c['speedup_vs_fp32_compiled']}x vs compiled fp32) |")
    lines += ["", "FLOPs from `model.flops` (matrix products only; a training step is 3x its forward), "
              "the DMD step's from torch's flop counter. Interleaved rounds, medians."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per path and precision (interleaved)")
    p.add_argument("--frames", type=int, default=60, help="dream frames per single-stream round")
    p.add_argument("--batch", type=int, default=64, help="vector-env batch of the batched dream paths")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--only", choices=["peaks", "train", "dream", "ae"], action="append",
                   help="measure only these groups (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="one peak shape, no DMD step, the dream at 2 steps only (for tests)")
    p.add_argument("--compile", default="", metavar="BACKEND",
                   help="also time the teacher and CD steps under torch.compile with this backend (inductor, as "
                        "train.compile: true runs them), and the dream with its streaming step compiled "
                        "(compile: true of the dream settings), in fp32 and in the auto precision")
    p.add_argument("--train-batch", type=int, default=0,
                   help="batch size of the training steps (default 0: the shipped configs')")
    a = p.parse_args(argv)
    if a.rounds < 1:
        print(f"error: --rounds must be >= 1, got {a.rounds}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    from model.precision import cpu_flags, probe, resolve

    groups = set(a.only or ["peaks", "train", "dream", "ae"])
    auto = resolve("auto")
    rep: dict[str, Any] = {"command": "python -m benchmarks.roofline " + " ".join(sys.argv[1:] if argv is None else argv),
                           "probe": probe().as_dict(), "precision_auto": auto, "bf16_faster": probe().bf16_faster}
    peaks = matmul_peaks(a.rounds, a.quick)
    rep["peak_gflops"] = {k: v["peak"] for k, v in peaks.items()}
    rep["peaks"] = peaks
    print(f"peaks: fp32 {peaks['fp32']['peak']:.0f}, bf16 {peaks['bf16']['peak']:.0f} GFLOP/s; auto runs {auto} "
          f"({probe().reason})", flush=True)
    paths: dict[str, Any] = {}
    if "train" in groups:
        paths.update(time_training(a.rounds, a.quick, auto, a.train_batch, a.compile))
    if "dream" in groups:
        paths.update(time_dream(a.rounds, auto, a.batch, a.frames, compile=bool(a.compile), quick=a.quick))
    if "ae" in groups:
        paths.update(time_autoencoder(a.rounds, auto))
    summarise(paths, peaks, auto)
    rep["paths"] = paths
    import torch.backends.mkldnn as mk

    cpu_model = ""
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rep["machine"] = {"cpu_flags": list(cpu_flags()), "cpu_model": cpu_model, "processor": platform.processor(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "mkldnn": mk.is_available(),
                      "platform": platform.platform()}
    rep["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, rep, indent=2)
    md = render_markdown(rep)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
