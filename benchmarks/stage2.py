"""``python -m benchmarks.stage2 --out FILE.json``: the Stage 2 claim of Causal Forcing++ measured
on the flow map both methods learn (the Stage 2 cost claim).

Causal ODE distillation regresses the teacher's PF-ODE endpoint from noise; causal consistency
distillation learns the same map without solving it. So the quality that makes their costs
comparable is the *flow-map error*: on held-out windows, teacher-forced on the true history,
the MSE between a student's 1-step prediction from noise ``eps`` and the teacher's own
``solve_steps``-step Euler solution from the same ``eps`` (same CFG as the ODE trajectories).
The held-out x0 error against the ground truth is reported beside it, but it rewards the
conditional mean (blur) and is not what either method is trained towards.

Every checkpoint of a causal CD run is measured (its teacher forwards and wall time come from
its log and checkpoint), step 0 being the teacher itself; the causal ODE student's cost comes
from its model card (trajectory generation + regression, bytes stored). The result names the
first CD checkpoint whose flow-map error is at or below the ODE student's, with the cost ratios.
Beside the curve, the floor of the CD run's grid: the teacher's own Euler solution on the run's
``n_points`` grid (with the run's guidance) against the reference, the map a CD student on that
grid converges to, up to its learning error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks import BenchmarkError, command
from model import flow


def _cd_checkpoints(run: Path) -> list[Path]:
    ck = run / "checkpoints"
    return sorted(p for p in ck.glob("step_*") if (p / "meta.json").is_file()) if ck.is_dir() else []


def _cd_nfe(run: Path) -> dict[int, int]:
    """Teacher forwards at each logged step of a CD run (they grow by batch x (1 or 2) a step)."""
    mfile = run / "metrics.jsonl"
    recs = [json.loads(line) for line in mfile.read_text().splitlines()] if mfile.is_file() else []
    return {int(r["step"]): int(r["teacher_nfe"]) for r in recs if "teacher_nfe" in r}


def _card_walls(run: Path, card_path: str) -> dict[int, float]:
    """Wall times per evaluation step from a model card's Stage 2 curve, when the card's CD run is
    this run reproduced: every evaluation in the card equals the run's within 1% (same seed, data
    and schedule; float rounding differs between CPUs, and two such runs of the default CD were
    0.4% apart by step 300). Wall time depends on the machine; the card's was measured where the
    ODE student's was. Empty when they differ."""
    from trainer.export import eval_curve

    card_file = Path(card_path)
    if not card_file.is_file() or not (run / "metrics.jsonl").is_file():
        return {}
    qc = ((yaml.safe_load(card_file.read_text()) or {}).get("stage2") or {}).get("quality_vs_cost") or []
    logged = {int(e["step"]): e for e in eval_curve(run)}
    walls = {}
    for pt in qc:
        ev = logged.get(int(pt["step"]))
        keys = [k for k in pt if k.startswith("x0_mse")]
        if ev is None or not keys or any(ev.get(k) is None or abs(ev[k] - pt[k]) > 1e-2 * abs(pt[k]) for k in keys):
            return {}
        walls[int(pt["step"])] = round(float(pt["wall_s"]), 1)
    return walls


@torch.no_grad()
def flow_map_report(teacher_path: str | None, cd_run: Path, ode_path: str | None, windows: int, solve_steps: int,
                    cfg_scale: float | None, seed: int, cd_card: str | None = None) -> dict[str, Any]:
    from model.io import load_world_model
    from model.transformer import TransformerConfig
    from trainer.config import from_dict
    from trainer.stages.autoencoder import DataConfig
    from trainer.stages.ode import solve_teacher_ode
    from trainer.stages.teacher import ClipData, TeacherForcing

    cks = _cd_checkpoints(cd_run)
    if not cks:
        raise BenchmarkError(f"{cd_run} has no checkpoints (train it with python -m trainer cd ... and "
                         f"train.keep_checkpoints large enough to keep every evaluation point)")
    cd_cfg = json.loads((cks[-1] / "meta.json").read_text())["config"]
    teacher_path = teacher_path or cd_cfg["teacher"]
    card_file = Path(ode_path).with_suffix(".yaml") if ode_path else None
    card = yaml.safe_load(card_file.read_text()) if card_file is not None and card_file.is_file() else {}
    if cfg_scale is None:  # the guidance the ODE trajectories were solved with
        cfg_scale = float(((card.get("config") or {}).get("ode") or {}).get("cfg", 1.0))
    teacher, tcfg, teacher_id = load_world_model(teacher_path)
    shift = float(cd_cfg.get("loss", {}).get("shift") or tcfg.get("loss", {}).get("shift", 3.0))
    mcfg = from_dict(TransformerConfig, dict(tcfg["model"]), "teacher model")
    data = ClipData(tcfg["autoencoder"], from_dict(DataConfig, cd_cfg["data"], "cd data"), int(cd_cfg["frames"]),
                    cd_cfg.get("latent_cache_dir", "data/latents"), mcfg, windows, int(cd_cfg["train"]["seed"]))
    if not len(data.eval_windows):
        raise BenchmarkError("the CD run's data has no held-out windows (data.holdout_episodes = 0)")
    tf = TeacherForcing(teacher).eval()
    grid = flow.sigma_grid(solve_steps + 1, shift)
    batches = []
    t0 = time.time()
    for i in range(0, len(data.eval_windows), 16):
        x0, a = data.clips(data.eval_windows[i:i + 16], torch.device("cpu"))
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
        end, _, _ = solve_teacher_ode(tf, x0, a, eps, grid, cfg_scale, mcfg.null_action)
        batches.append((x0, a, torch.zeros(x0.shape[:2]), eps, end))
    ref_wall = time.time() - t0
    # the floor of the CD run's own grid: the teacher's Euler solution on it (the map a causal CD
    # student on that grid converges to, up to learning error) against the reference solution
    loss_cfg = cd_cfg.get("loss") or {}
    n_points = int(loss_cfg.get("n_points", 48))
    cd_grid, cd_guidance = flow.sigma_grid(n_points, shift), float(loss_cfg.get("cfg", cfg_scale))
    grid_mse = []
    for x0, a, _zeros, eps, end in batches:
        sol, _, _ = solve_teacher_ode(tf, x0, a, eps, cd_grid, cd_guidance, mcfg.null_action)
        grid_mse.append(float((sol - end).pow(2).mean()))

    def measure(net: torch.nn.Module) -> dict[str, float]:
        w = TeacherForcing(net).eval()
        fm, gt = [], []
        for x0, a, zeros, eps, end in batches:
            sigma = torch.ones(x0.shape[:2])
            pred = flow.x0_from_v(eps, sigma, w(x0, eps, sigma, a, zeros).float())
            fm.append(float((pred - end).pow(2).mean()))
            gt.append(float((pred - x0).pow(2).mean()))
        return {"flow_mse_1step": float(np.mean(fm)), "x0_mse_1step": float(np.mean(gt))}

    card_wall = _card_walls(cd_run, cd_card) if cd_card else {}
    nfe_at = _cd_nfe(cd_run)
    per_step = (max(nfe_at.values()) / max(nfe_at)) if nfe_at else 0.0
    curve = [{"step": 0, "teacher_nfe": 0, "wall_s": 0.0, **measure(teacher)}]
    for ck in cks:
        meta = json.loads((ck / "meta.json").read_text())
        net, _, _ = load_world_model(ck)
        step = int(meta["step"])
        curve.append({"step": step, "teacher_nfe": nfe_at.get(step, round(step * per_step)),
                      "wall_s": round(float(meta.get("wall_s_total", 0.0)), 1),
                      # the run's train.steps when this checkpoint was written (its cosine schedule's
                      # length: a run resumed with more steps restarts the decay from there)
                      "schedule_steps": int(meta["config"]["train"]["steps"]), **measure(net)})
        if step in card_wall:
            curve[-1]["card_wall_s"] = card_wall[step]
    if card_wall:
        curve[0]["card_wall_s"] = 0.0
    out: dict[str, Any] = {"protocol": {"windows": int(len(data.eval_windows)), "frames": int(cd_cfg["frames"]),
                                        "solve_steps": solve_steps, "cfg": cfg_scale, "shift": shift, "seed": seed,
                                        "reference_wall_s": round(ref_wall, 1), "teacher": str(teacher_path),
                                        "teacher_id": teacher_id},
                           "causal_cd": {"run": str(cd_run), "curve": curve,
                                         "grid": {"points": n_points, "target_decay": loss_cfg.get("target_decay"),
                                                  "cfg": cd_guidance, "lr": cd_cfg["train"].get("lr"),
                                                  "teacher_solution_flow_mse": float(np.mean(grid_mse))}}}
    if ode_path:
        ode_net, _, ode_id = load_world_model(ode_path)
        s2 = card.get("stage2") or {}
        ode = {"checkpoint": str(ode_path), "model_id": ode_id, **measure(ode_net),
               "teacher_nfe": s2.get("teacher_nfe"), "wall_s": s2.get("wall_s"),
               "bytes_stored": s2.get("bytes_stored"), "steps": s2.get("steps")}
        out["causal_ode"] = ode
        hit = next((p for p in curve if p["flow_mse_1step"] <= ode["flow_mse_1step"]), None)
        m: dict[str, Any] = {"quality": "flow_mse_1step", "ode": ode["flow_mse_1step"],
                             "cd_best": min(p["flow_mse_1step"] for p in curve), "reached": hit is not None}
        if hit is not None:
            m.update({"cd_step": hit["step"], "cd_teacher_nfe": hit["teacher_nfe"], "cd_wall_s": hit["wall_s"]})
            if ode["teacher_nfe"]:
                m["nfe_ratio"] = hit["teacher_nfe"] / float(ode["teacher_nfe"])
            if ode["wall_s"]:
                m["wall_ratio"] = hit["wall_s"] / float(ode["wall_s"])
                if "card_wall_s" in hit:  # the same run timed on the machine that timed the ODE student
                    m["card_wall_ratio"] = hit["card_wall_s"] / float(ode["wall_s"])
        out["matched"] = m
    return out


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage2", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cd-run", default="runs/adventure_cd_frame", help="a causal CD run folder (every checkpoint)")
    p.add_argument("--ode", default="runs/exports/adventure_ode_frame2.safetensors",
                   help="the causal ODE student (an exported file with its card, as `make variants` writes it; "
                        "'' for none)")
    p.add_argument("--cd-card", default="assets/checkpoints/adventure_cfpp_frame2.yaml",
                   help="a card whose Stage 2 curve timed this CD run elsewhere ('' for none): used beside the "
                        "run's own wall times when its evaluations match the run's (within 1%)")
    p.add_argument("--teacher", default="", help="default: the CD run's teacher")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--solve-steps", type=int, default=48)
    p.add_argument("--cfg", type=float, default=None, help="teacher guidance (default: the ODE card's ode.cfg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.ode and not Path(a.ode).exists():
        print(f"error: --ode {a.ode!r} does not exist: `make variants` trains and exports the causal ODE student "
              f"there (or pass --ode '' to measure the CD run alone)", file=sys.stderr)
        return 2
    rep = flow_map_report(a.teacher or None, Path(a.cd_run), a.ode or None, a.windows, a.solve_steps, a.cfg, a.seed,
                          a.cd_card or None)
    rep["command"] = "python -m benchmarks.stage2 " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    for pt in rep["causal_cd"]["curve"]:
        print(f"cd step {pt['step']:>5}: flow-map MSE {pt['flow_mse_1step']:.4f}  x0 MSE {pt['x0_mse_1step']:.4f}  "
              f"teacher forwards {pt['teacher_nfe']}  wall {pt['wall_s']} s"
              + (f" (card: {pt['card_wall_s']} s)" if "card_wall_s" in pt else ""))
    g = rep["causal_cd"]["grid"]
    print(f"the teacher's own Euler solution on the CD grid ({g['points']} points): flow-map MSE "
          f"{g['teacher_solution_flow_mse']:.4f}")
    if "causal_ode" in rep:
        o = rep["causal_ode"]
        print(f"ode student: flow-map MSE {o['flow_mse_1step']:.4f}  x0 MSE {o['x0_mse_1step']:.4f}  "
              f"teacher forwards {o['teacher_nfe']}  wall {o['wall_s']} s  bytes {o['bytes_stored']}")
        print("matched:", json.dumps(rep["matched"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
