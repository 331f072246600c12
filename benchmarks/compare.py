"""``python -m benchmarks.compare --out FILE.json``: the few-step variants in one
run on one machine: the fidelity fields of ``trainer.evaluate`` (same held-out seeds and
noise for all), first-frame latency and steady-state frame time (decode included, batch 1,
variants interleaved after warm-up, medians with min/max), and each distilled variant's
Stage 2 cost from its model card (teacher forwards, wall time, bytes stored). Renders
``docs/RESULTS.md`` from the JSON, with the flow-map reports of ``python -m benchmarks.stage2``.

``--timing-only --timing-batch B`` measures only the speed fields, with B streams generated at
once (a vector env; at batch 1 a forward on a CPU costs about the same for 1 frame as for 3, so
the first-frame comparison of frame-wise and chunk-wise students also depends on the batch);
the Markdown adds such reports as a section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks import BenchmarkError, command
from model.io import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 4  # real frames every variant starts from
VARIANTS = ("teacher", "cf_chunk4", "cfpp_frame2", "cfpp_frame1", "ode_frame2")
DEFAULT_FILES = {"teacher": "adventure_teacher", "cf_chunk4": "adventure_cf_chunk4",
                 "cfpp_frame2": "adventure_cfpp_frame2", "cfpp_frame1": "adventure_cfpp_frame1",
                 "ode_frame2": "adventure_ode_dmd_frame2"}


def sampler_for(name: str, card_cfg: dict[str, Any], teacher_steps: int, teacher_cfg: float):
    from model.rollout import SamplerConfig

    if name == "teacher" or (card_cfg.get("sampler") or {}).get("kind", "euler") == "euler":
        return SamplerConfig.from_card(card_cfg, "euler", teacher_steps, cfg=teacher_cfg)
    return SamplerConfig.from_card(card_cfg, "consistency", default_steps=2)


def time_variant(model, ae, sampler, context: np.ndarray, frames: int, seed: int, batch: int = 1
                 ) -> tuple[float, list[float]]:
    """(first-frame ms, per-frame ms of ``frames`` streamed frames), decode included; with
    ``batch`` > 1 that many streams at once (a vector env), a frame being one for every stream."""
    from model.rollout import Session

    K = model.cfg.block_frames
    sess = Session(model, batch, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = ae.encode_frames(context)[None].expand(batch, -1, -1, -1, -1)
        sess.prime(z, torch.zeros(batch, len(context), dtype=torch.long))
        times = []
        for i in range(0, frames, K):
            acts = torch.randint(0, model.cfg.num_actions, (batch, K), generator=torch.Generator().manual_seed(i))
            t0 = time.perf_counter()
            x = sess.generate(acts, sampler)
            ae.decode_frames(x.flatten(0, 1), batch=len(x) * K)
            dt = (time.perf_counter() - t0) * 1000 / K
            times.extend([dt] * K)
    return times[0] * K, times[K:]


def timings(models: dict[str, tuple[Any, Any]], ae, ctx_frames: np.ndarray, frames: int, seed: int, batch: int = 1,
            rounds: int = 3) -> dict[str, dict[str, float]]:
    """Speed of each (model, sampler): ``rounds`` interleaved rounds after a warm-up round;
    first-frame and per-frame medians with min/max (ms), decode included."""
    C = len(ctx_frames)
    firsts: dict[str, list[float]] = {n: [] for n in models}
    steady: dict[str, list[float]] = {n: [] for n in models}
    for rnd in range(rounds + 1):
        for name, (model, sampler) in models.items():
            K = model.cfg.block_frames
            ctx = ctx_frames[C - (C - C % K if K > 1 and C % K else C):]
            f, s = time_variant(model, ae, sampler, ctx, frames if rnd else 2 * K, seed + rnd, batch)
            if rnd:
                firsts[name].append(f)
                steady[name].extend(s)
    out = {}
    for name in models:
        med = statistics.median(steady[name])
        out[name] = {"first_frame_ms": statistics.median(firsts[name]), "first_frame_ms_min": min(firsts[name]),
                     "first_frame_ms_max": max(firsts[name]), "frame_ms_median": med,
                     "frame_ms_min": min(steady[name]), "frame_ms_max": max(steady[name]), "fps": 1000.0 / med}
    return out


def load_variants(paths: dict[str, Path], teacher_steps: int, teacher_cfg: float):
    """Each variant as (model, config, model id, card, sampler), with the one autoencoder that
    decodes them all, the world and its recorded settings."""
    from model.io import load_autoencoder, load_world_model
    from world.dataset import recorded_settings

    loaded = {}
    for name, path in paths.items():
        model, cfg, mid = load_world_model(path)
        card = yaml.safe_load(Path(path).with_suffix(".yaml").read_text()) if str(path).endswith(".safetensors") else {}
        loaded[name] = (model, cfg, mid, card, sampler_for(name, cfg, teacher_steps, teacher_cfg))
    first_cfg = next(iter(loaded.values()))[1]
    for name, (_m, cfg, *_rest) in loaded.items():  # one autoencoder decodes every variant
        if Path(str(cfg["autoencoder"])).name != Path(str(first_cfg["autoencoder"])).name:
            raise BenchmarkError(f"variant {name} ({paths[name]}) uses autoencoder {cfg['autoencoder']}, the "
                             f"others {first_cfg['autoencoder']}; compare variants of one world model family "
                             f"(override or drop it with --variant {name}=...)")
    ae, ae_id = load_autoencoder(first_cfg["autoencoder"])
    world = first_cfg.get("world", "adventure")
    settings = recorded_settings((first_cfg.get("data") or {}).get("dataset"), world)
    settings.update(first_cfg.get("world_settings") or {})
    return loaded, ae, ae_id, world, settings


def timing_only(paths: dict[str, Path], teacher_steps: int, teacher_cfg: float, frames: int, seed: int,
                batch: int, precision: str = "auto") -> dict[str, Any]:
    """Only the speed fields of :func:`compare`, at ``batch`` streams (first frame = the first frame
    of every stream, frame time per batched frame), on the same context frames, every variant in
    ``precision`` (auto: bf16 where measurably faster here; weights and decoder cast once, as in the
    dream)."""
    import copy

    from evaluation.rollouts import EVAL_SEED_BASE, inference_model, play_real
    from model.precision import DTYPES, cast_for_inference, resolve

    loaded, ae, ae_id, world, settings = load_variants(paths, teacher_steps, teacher_cfg)
    precision = resolve(precision)
    if precision != "fp32":
        ae = copy.deepcopy(ae)
        cast_for_inference(ae.decoder, DTYPES[precision])
    real = play_real(world, settings, 1, CONTEXT, EVAL_SEED_BASE)
    speed = timings({n: (inference_model(v[0], precision), v[4]) for n, v in loaded.items()}, ae,
                    real.frames[0, :CONTEXT], frames, seed, batch)
    for name, (*_rest, sampler) in loaded.items():
        speed[name]["checkpoint"] = str(paths[name])
        speed[name]["sampler"] = {"kind": sampler.kind, "steps": sampler.steps,
                                  "first_frame_steps": sampler.first_frame_steps}
    return {"timing": speed, "protocol": {"batch": batch, "timing_frames": frames, "context": CONTEXT,
                                          "precision": precision,
                                          "threads": torch.get_num_threads(), "seed": seed, "autoencoder_id": ae_id}}


def stage2_cost(card: dict[str, Any]) -> dict[str, Any]:
    s2 = card.get("stage2") or {}
    return {"stage2_teacher_nfe": s2.get("teacher_nfe"), "stage2_wall_s": s2.get("wall_s"),
            "stage2_bytes_stored": s2.get("bytes_stored"), "stage2_method": s2.get("method")}


def matched_cost(cd: dict[str, Any] | None, ode: dict[str, Any] | None, key: str = "x0_mse_2step"
                 ) -> dict[str, Any] | None:
    """Stage 2 cost of causal CD to reach the causal ODE student's final quality (held-out
    teacher-forced x0 error of 2-step sampling, logged by both trainings on the same windows),
    as fractions of the ODE student's whole Stage 2 cost. None without both curves."""
    cd_curve = [p for p in (cd or {}).get("quality_vs_cost") or [] if key in p]
    ode_curve = [p for p in (ode or {}).get("quality_vs_cost") or [] if key in p]
    if not cd_curve or not ode_curve:
        return None
    target = float(ode_curve[-1][key])
    out: dict[str, Any] = {"quality": key, "ode_final": target, "ode_teacher_nfe": ode.get("teacher_nfe"),
                           "ode_wall_s": ode.get("wall_s"), "ode_bytes_stored": ode.get("bytes_stored"),
                           "cd_best": min(float(p[key]) for p in cd_curve), "cd_final": float(cd_curve[-1][key])}
    hit = next((p for p in cd_curve if float(p[key]) <= target), None)
    out["reached"] = hit is not None
    if hit is not None:
        out.update({"cd_step": hit["step"], "cd_teacher_nfe": hit.get("teacher_nfe"), "cd_wall_s": hit.get("wall_s")})
        if hit.get("teacher_nfe") is not None and ode.get("teacher_nfe"):
            out["nfe_ratio"] = float(hit["teacher_nfe"]) / float(ode["teacher_nfe"])
        if hit.get("wall_s") is not None and ode.get("wall_s"):
            out["wall_ratio"] = float(hit["wall_s"]) / float(ode["wall_s"])
    return out


def write_variant_strip(real: np.ndarray, gens: dict[str, np.ndarray], path: str | Path, episodes: int = 2,
                        scale: int = 2) -> None:
    """A PNG per held-out episode: the real frames on top, then one row per variant (in the order of
    ``gens``), at horizons 1, 2, 4, 8, 12, 16; the first column is the last context frame."""
    from PIL import Image

    from evaluation.report import STRIP_HORIZONS

    H = min(g.shape[1] for g in gens.values())
    hs = [h for h in STRIP_HORIZONS if h <= H]
    rows = []
    for m in range(min(episodes, len(real))):
        rows.append(np.concatenate([real[m, 0]] + [real[m, h] for h in hs], 1))
        for g in gens.values():
            rows.append(np.concatenate([real[m, 0]] + [g[m, h - 1] for h in hs], 1))
        rows.append(np.zeros_like(rows[-1][:4]))
    img = np.concatenate(rows[:-1], 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def compare(paths: dict[str, Path], episodes: int, teacher_steps: int, teacher_cfg: float, timing_frames: int,
            long_episodes: int, seed: int, strip: str | None = None) -> dict[str, Any]:
    from evaluation.fidelity import fidelity
    from evaluation.rollouts import EVAL_SEED_BASE, generate, play_real
    from model.io import default_idm, load_idm

    loaded, ae, ae_id, world, settings = load_variants(paths, teacher_steps, teacher_cfg)
    idm_src = default_idm(world)
    idm = load_idm(idm_src)[0] if idm_src else None
    C, H = CONTEXT, 16
    real = play_real(world, settings, episodes, C + H, EVAL_SEED_BASE)
    long_real = play_real(world, settings, long_episodes, C + 256, EVAL_SEED_BASE + 10_000) if long_episodes else None
    from evaluation import metrics as M
    from evaluation.fidelity import idm_features

    out: dict[str, Any] = {}
    stage2: dict[str, Any] = {}
    gens: dict[str, np.ndarray] = {}
    for name, (model, _cfg, mid, card, sampler) in loaded.items():
        if model.cfg.block_frames > 1 and C % model.cfg.block_frames:
            ctx = C - C % model.cfg.block_frames
        else:
            ctx = C
        gen = generate(model, ae, real.frames[:, C - ctx:C], real.actions[:, C - ctx:], sampler, seed, "fp32")
        rep = fidelity(real, gen, C, ae, idm, world, model.cfg.num_actions)
        gens[name] = gen
        if long_real is not None and idm is not None:
            lg = generate(model, ae, long_real.frames[:, C - ctx:C], long_real.actions[:, C - ctx:], sampler, seed,
                          "fp32")
            lt = long_real.frames[:, C:]
            rep["frechet_early"] = M.frechet_distance(idm_features(idm, lg[:, :32]), idm_features(idm, lt[:, :32]))
            rep["frechet_late"] = M.frechet_distance(idm_features(idm, lg[:, -32:]), idm_features(idm, lt[:, -32:]))
        rep.update(stage2_cost(card))
        rep["distilled_from"] = (card.get("config") or {}).get("teacher")
        stage2[name] = card.get("stage2")
        rep["sampler"] = {"kind": sampler.kind, "steps": sampler.steps, "cfg": sampler.cfg,
                          "first_frame_steps": sampler.first_frame_steps}
        rep["checkpoint"] = str(paths[name])
        rep["model_id"] = mid
        rep["block_frames"] = model.cfg.block_frames
        out[name] = rep
    if strip:
        write_variant_strip(real.frames[:, C - 1:], gens, strip)
    for name, speed in timings({n: (v[0], v[4]) for n, v in loaded.items()}, ae, real.frames[0, :C], timing_frames,
                               seed).items():
        out[name].update(speed)
    # Stage 2's cost at equal quality compares two students of one teacher on its held-out windows; a
    # frame-2 student distilled from another teacher (the long-context one) has no ODE student beside it
    cd_from, ode_from = (out.get(n, {}).get("distilled_from") for n in ("cfpp_frame2", "ode_frame2"))
    other_teacher = cd_from is not None and ode_from is not None and cd_from != ode_from
    return {"variants": out,
            "stage2_matched": None if other_teacher else matched_cost(stage2.get("cfpp_frame2"), stage2.get("ode_frame2")),
            "stage2_unmatched": (f"cfpp_frame2 was distilled from {cd_from}, ode_frame2 from {ode_from}: no Stage 2 "
                                 "comparison") if other_teacher else None,
            "protocol": {"episodes": episodes, "context": C, "horizon": H,
                                          "long_episodes": long_episodes, "timing_frames": timing_frames,
                                          "threads": torch.get_num_threads(), "seed": seed,
                                          "eval_seeds_from": EVAL_SEED_BASE, "autoencoder_id": ae_id}}


ROWS = [("changed PSNR 1-16 (dB)", "changed_psnr_mean_16"), ("seen PSNR 1-16 (dB)", "seen_psnr_mean_16"),
        ("PSNR 1-16 (dB)", "psnr_mean_16"), ("player found 1-16", "player_found_16"),
        ("sharpness ratio 1-16", "sharpness_ratio_16"), ("action accuracy (IDM)", "action_accuracy"),
        ("Fréchet early", "frechet_early"), ("Fréchet late", "frechet_late"),
        ("first frame (ms)", "first_frame_ms"), ("frame time median (ms)", "frame_ms_median"),
        ("Stage 2 teacher forwards", "stage2_teacher_nfe"), ("Stage 2 wall (s)", "stage2_wall_s"),
        ("Stage 2 bytes stored", "stage2_bytes_stored")]


def render_markdown(report: dict[str, Any], command: str) -> str:
    names = list(report["variants"])
    lines = ["# Results: the few-step variants side by side (CF++ frame-2 and frame-1, the ODE ablation, the chunk-wise baseline, the teacher)", "",
             f"Written by `{command}` from `benchmarks/results/compare.json`; do not edit by hand.", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in ROWS:
        cells = []
        for n in names:
            v = report["variants"][n].get(key)
            cells.append("n/a" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    samplers = ", ".join(f"{n}: {report['variants'][n]['sampler']['kind']} {report['variants'][n]['sampler']['steps']}"
                         for n in names)
    lines += ["", f"Samplers: {samplers}.", ""]
    froms = [f"{n}: {report['variants'][n]['distilled_from']}" for n in names
             if report["variants"][n].get("distilled_from")]
    if froms:
        lines += [f"Distilled from (each card's `config.teacher`): {', '.join(froms)}.", ""]
    if report.get("strip"):
        rel = Path(report["strip"]["path"]).name
        lines += [f"Frames (horizons 1, 2, 4, 8, 12, 16 after the last context frame), rows top to bottom: "
                  f"{', '.join(report['strip']['rows'])}; two held-out episodes:", "", f"![variants](media/{rel})", ""]
    lines += first_frame_ratio(report["variants"])
    if report.get("timings"):
        lines += ["## First frame and frame time by number of streams", ""]
        for t in report["timings"]:
            lines += timing_section(t)
    m = report.get("stage2_matched")
    if report.get("stage2_unmatched"):
        lines += ["## Stage 2 cost at equal quality", "", report["stage2_unmatched"] + " (`python -m benchmarks.stage2` "
                  "measures the two methods on one teacher).", ""]
    if m:
        lines += ["## Stage 2 cost at equal quality", "",
                  f"Quality: `{m['quality']}` (held-out x0 error of 2-step sampling, teacher-forced, from both "
                  f"trainings' logs). The causal ODE student ends at {m['ode_final']:.4g} after "
                  f"{m['ode_teacher_nfe']} teacher forwards, {m['ode_wall_s']} s and {m['ode_bytes_stored']} bytes stored."]
        if m["reached"]:
            lines.append(f"Causal CD reaches it at step {m['cd_step']}: {m['cd_teacher_nfe']} teacher forwards "
                         f"({m.get('nfe_ratio', float('nan')):.2f} x), {m.get('cd_wall_s', float('nan')):.0f} s "
                         f"({m.get('wall_ratio', float('nan')):.2f} x), nothing stored.")
        else:
            lines.append(f"Causal CD does not reach it in its run: best {m['cd_best']:.4g}, final {m['cd_final']:.4g}.")
        if stage2_maps(report):
            lines.append("This quality rewards the conditional mean of the next frame, which neither method is "
                         "trained towards (the ODE student regresses sampled teacher endpoints); the flow-map "
                         "comparison below measures the map both learn.")
        lines.append("")
    maps = stage2_maps(report)
    if maps:
        lines += ["## Stage 2 cost at equal flow-map error", ""]
        for f in maps:
            lines += flow_map_section(f, len(maps) > 1)
    return "\n".join(lines)


def stage2_maps(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The flow-map reports of ``python -m benchmarks.stage2`` in a compare report."""
    return [f for f in report.get("stage2_flow_maps") or [] if f.get("matched")]


def flow_map_section(f: dict[str, Any], titled: bool) -> list[str]:
    """Markdown for one causal CD run's flow-map curve against the causal ODE student."""
    fm, ode, pr = f["matched"], f["causal_ode"], f["protocol"]
    g = f["causal_cd"].get("grid") or {}
    lines = []
    if titled:
        knobs = ", ".join(f"{k.replace('_', ' ')} {g[k]}" for k in ("points", "target_decay", "lr", "cfg")
                          if g.get(k) is not None)
        lines += [f"### Causal CD run `{f['causal_cd']['run']}`" + (f": {knobs}" if knobs else ""), ""]
    lines += [f"From `{f['command']}`: on {pr['windows']} held-out windows, teacher-forced, the MSE between a "
              f"student's 1-step prediction from noise and the teacher's own {pr['solve_steps']}-step solution "
              f"from the same noise (CFG {pr['cfg']}), the map both Stage 2 methods learn. The causal ODE "
              f"student: {ode['flow_mse_1step']:.4g} after {ode['teacher_nfe']} teacher forwards, {ode['wall_s']} s "
              f"and {ode['bytes_stored']} bytes stored."]
    if g.get("teacher_solution_flow_mse") is not None:
        lines.append(f"The teacher's own Euler solution on this CD run's {g['points']}-point grid is at "
                     f"{g['teacher_solution_flow_mse']:.4g} (the floor a CD student on that grid converges to, "
                     f"up to its learning error).")
    lines += ["", "| causal CD step | teacher forwards | wall (s) | wall where the ODE student was timed (s) | "
              "flow-map MSE | x0 MSE vs ground truth |", "|---|---|---|---|---|---|"]
    for p in f["causal_cd"]["curve"]:
        lines.append(f"| {p['step']} | {p['teacher_nfe']} | {p['wall_s']} | {p.get('card_wall_s', 'n/a')} | "
                     f"{p['flow_mse_1step']:.4g} | {p['x0_mse_1step']:.4g} |")
    lines.append("")
    if fm["reached"]:
        lines.append(f"Causal CD reaches the ODE student's flow-map error at step {fm['cd_step']}: "
                     f"{fm.get('nfe_ratio', float('nan')):.2f} x its teacher forwards, "
                     f"{fm.get('wall_ratio', float('nan')):.2f} x its wall time"
                     + (f" ({fm['card_wall_ratio']:.2f} x timed on the ODE student's machine)"
                        if "card_wall_ratio" in fm else "") + ", nothing stored.")
    else:
        lines.append(f"Causal CD does not reach the ODE student's flow-map error in its run (best "
                     f"{fm['cd_best']:.4g}).")
    budget = 0.35 * float(ode["teacher_nfe"])
    within = [p for p in f["causal_cd"]["curve"] if p["teacher_nfe"] <= budget]
    if within:
        last = within[-1]
        lines.append(f"At the claim's budget, 0.35 x the ODE student's teacher forwards ({budget:.0f}), the "
                     f"last CD checkpoint within it (step {last['step']}, {last['teacher_nfe']} forwards) has "
                     f"flow-map MSE {last['flow_mse_1step']:.4g} against the ODE student's "
                     f"{ode['flow_mse_1step']:.4g}.")
    sched = [(p["step"], p["schedule_steps"]) for p in f["causal_cd"]["curve"] if "schedule_steps" in p]
    for (a, sa), (_, sb) in zip(sched, sched[1:], strict=False):
        if sb != sa:
            lines.append(f"Schedule: the CD run trained to step {a} under a cosine learning-rate schedule of "
                         f"{sa} steps and was then resumed with {sb} steps, so the decay restarts there; the "
                         f"later points are a continuation, not a run planned for {sb} steps.")
    lines.append("")
    return lines


def _reports(files: list[str] | None, pattern: str, flag: str, writer: str) -> list[dict[str, Any]]:
    """The JSON reports named by a repeatable flag (``files``; None: every ``benchmarks/results/``
    file matching ``pattern``); a named file that is missing is a clear error."""
    if files is None:
        paths = sorted((ROOT / "benchmarks" / "results").glob(pattern))
    else:
        paths = [Path(f) for f in files if f]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BenchmarkError(f"{flag} {missing[0]} does not exist ({writer} writes it; {flag} '' adds none)")
    return [json.loads(p.read_text()) for p in paths]


def add_stage2(report: dict[str, Any], files: list[str] | None) -> None:
    """Put the flow-map reports of ``python -m benchmarks.stage2`` (``files``; None: every
    ``benchmarks/results/stage2*.json``) into ``report["stage2_flow_maps"]``."""
    report.pop("stage2_flow_map", None)  # the single report of older compare JSONs
    report["stage2_flow_maps"] = _reports(files, "stage2*.json", "--stage2", "python -m benchmarks.stage2 --out FILE")


def add_timing(report: dict[str, Any], files: list[str] | None) -> None:
    """Put ``--timing-only`` reports (``files``; None: every ``benchmarks/results/compare_timing*.json``)
    into ``report["timings"]``."""
    report["timings"] = _reports(files, "compare_timing*.json", "--timing",
                                 "python -m benchmarks.compare --timing-only --out FILE")


def timing_section(t: dict[str, Any]) -> list[str]:
    """Markdown for one ``--timing-only`` report: first frame and frame time per variant."""
    pr, v = t["protocol"], t["timing"]
    names = list(v)
    lines = [f"### {pr['batch']} stream{'s' if pr['batch'] > 1 else ''} at once", "",
             f"From `{t['command']}` ({pr['threads']} threads, {pr['timing_frames']} frames, decode included; a "
             f"frame is one for every stream).", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in (("first frame (ms)", "first_frame_ms"), ("first frame min-max (ms)", None),
                       ("frame time median (ms)", "frame_ms_median")):
        if key is None:
            cells = [f"{v[n]['first_frame_ms_min']:.4g}-{v[n]['first_frame_ms_max']:.4g}" for n in names]
        else:
            cells = [f"{v[n][key]:.4g}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""] + first_frame_ratio(v, pr["batch"])


def first_frame_ratio(v: dict[str, Any], batch: int = 1) -> list[str]:
    """The issue's first-frame comparison (CF++ frame-2 over the CF chunk-wise baseline) as a line."""
    if "cfpp_frame2" not in v or "cf_chunk4" not in v:
        return []
    r = v["cfpp_frame2"]["first_frame_ms"] / v["cf_chunk4"]["first_frame_ms"]
    return [f"First frame of CF++ frame-2 against the CF chunk-wise baseline with {batch} stream"
            f"{'s' if batch > 1 else ''} at once: {r:.2f} x.", ""]


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help=f"override or add a variant's checkpoint (names: {', '.join(VARIANTS)})")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--teacher-steps", type=int, default=48)
    p.add_argument("--teacher-cfg", type=float, default=1.0)
    p.add_argument("--timing-frames", type=int, default=200)
    p.add_argument("--long-episodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage2", action="append", default=None, metavar="FILE",
                   help="a flow-map Stage 2 comparison of python -m benchmarks.stage2 (repeatable; default: every "
                        "benchmarks/results/stage2*.json); '' for none")
    p.add_argument("--md", default=str(ROOT / "docs" / "RESULTS.md"))
    p.add_argument("--strip", default=str(ROOT / "docs" / "media" / "compare_strip.png"),
                   help="PNG of real frames above every variant's, 2 held-out episodes ('' for none)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: add --stage2 and --timing to the existing --out JSON and render the "
                        "Markdown again")
    p.add_argument("--timing-only", action="store_true",
                   help="measure only first-frame and frame times (at --timing-batch streams) into --out; no "
                        "Markdown (a later compare or --render-only adds it with --timing)")
    p.add_argument("--timing-batch", type=int, default=1, help="streams generated at once by --timing-only")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="--timing-only: the variants' compute precision (auto: bf16 where measurably faster here)")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help=f"measure only these variants (repeatable; names: {', '.join(VARIANTS)})")
    p.add_argument("--timing", action="append", default=None, metavar="FILE",
                   help="a --timing-only report to render (repeatable; default: every "
                        "benchmarks/results/compare_timing*.json); '' for none")
    a = p.parse_args(argv)
    if a.timing_batch < 1:
        print(f"error: --timing-batch must be >= 1, got {a.timing_batch}", file=sys.stderr)
        return 2
    bad = [n for n in a.only or [] if n not in VARIANTS]
    if bad:
        print(f"error: --only {bad[0]!r} is not a variant; valid: {list(VARIANTS)}", file=sys.stderr)
        return 2
    if a.render_only:
        out = Path(a.out)
        if not out.is_file():
            print(f"error: --render-only needs an existing report, {out} does not exist", file=sys.stderr)
            return 2
        report = json.loads(out.read_text())
        add_stage2(report, a.stage2)
        add_timing(report, a.timing)
        out.write_text(json.dumps(report, indent=1))
        Path(a.md).write_text(render_markdown(report, report["command"]))
        print(render_markdown(report, report["command"]))
        return 0
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    paths = {n: SHIPPED / f"{f}.safetensors" for n, f in DEFAULT_FILES.items()}
    for item in a.variant:
        name, _, path = item.partition("=")
        if name not in VARIANTS or not path:
            print(f"error: --variant wants NAME=CHECKPOINT with NAME in {list(VARIANTS)}, got {item!r}", file=sys.stderr)
            return 2
        paths[name] = Path(path)
    if a.only:
        paths = {n: p for n, p in paths.items() if n in a.only}
    present = {n: p for n, p in paths.items() if Path(p).exists()}
    missing = sorted(set(paths) - set(present))
    if not present:
        print(f"error: none of the variants' checkpoints exist ({[str(p) for p in paths.values()]})", file=sys.stderr)
        return 2
    command = "python -m benchmarks.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.timing_only:
        rep = timing_only(present, a.teacher_steps, a.teacher_cfg, a.timing_frames, a.seed, a.timing_batch,
                          a.precision)
        rep["command"], rep["missing_variants"] = command, missing
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=1))
        print("\n".join(timing_section(rep)))
        return 0
    report = compare(present, a.episodes, a.teacher_steps, a.teacher_cfg, a.timing_frames, a.long_episodes, a.seed,
                     a.strip or None)
    if a.strip:
        report["strip"] = {"path": a.strip, "rows": ["real", *present]}
    report["missing_variants"] = missing
    add_stage2(report, a.stage2)
    add_timing(report, a.timing)
    report["command"] = command
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    md = Path(a.md)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render_markdown(report, command))
    print(render_markdown(report, command))
    if missing:
        print(f"note: no checkpoint for {missing}; they are listed as missing_variants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
