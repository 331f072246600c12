"""``python -m trainer.export``: ship a trained run as ``assets/checkpoints/NAME.safetensors``
(fp16 or bf16) with its model card ``NAME.yaml`` (config, data, steps, wall time, git commit,
command, evaluation numbers, and the quality-against-steps curve from the run's metrics and
any evaluation reports given)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from trainer.checkpoint import CheckpointError, content_hash, latest_checkpoint, load_weights
from trainer.models import SHIPPED, strip_prefix
from world.io import atomic_write_text, git, parse_key_values

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# buffers that must keep full precision (normalisation statistics)
KEEP_FP32 = ("latent_mean", "latent_std", "palette")
# fields of trainer.evaluate reports kept in a card's quality-against-steps curve
CURVE_FIELDS = ("psnr_mean_16", "gap_closed_1", "changed_psnr_mean_16", "copy_last_changed_psnr_mean_16",
                "seen_psnr_mean_16", "player_found_16", "sharpness_ratio_16", "action_accuracy",
                "frechet_early", "frechet_late")


def eval_curve(run: Path) -> list[dict[str, Any]]:
    out = []
    f = run / "metrics.jsonl"
    if f.is_file():
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            ev = {k[5:]: v for k, v in rec.items() if k.startswith("eval/")}
            if ev:
                out.append({"step": rec["step"], **ev, **({"wall_s": rec["wall_s"]} if "wall_s" in rec else {})})
    return out


# config keys that name the runs a stage was built from (autoencoder, weights, teacher, generator, ODE data)
UPSTREAM_KEYS = ("autoencoder", "init", "teacher", "generator", "trajectories")


def run_commands(run: Path) -> list[str]:
    """The distinct commands recorded in ``RUN/commands.jsonl`` since the run's last fresh start."""
    f = run / "commands.jsonl"
    if not f.is_file():
        return []
    recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    starts = [i for i, r in enumerate(recs) if r.get("fresh")]
    out: list[str] = []
    for r in recs[starts[-1] if starts else 0:]:
        if r["command"] not in out:
            out.append(r["command"])
    return out


def command_lineage(run: Path, config: dict[str, Any]) -> list[str]:
    """The recorded commands of the runs this one was built from (upstream first), then its own:
    a pasteable recipe for the whole chain (runs without a record, e.g. shipped files, are skipped)."""
    seen: set[Path] = set()

    def walk(path: Path, cfg: dict[str, Any]) -> list[str]:
        key = path.resolve()
        if key in seen:
            return []
        seen.add(key)
        out: list[str] = []
        for k in UPSTREAM_KEYS:
            up = Path(str(cfg.get(k) or ""))
            if str(up) not in ("", ".") and up.is_dir():
                conf = up / "config.json"
                out += walk(up, json.loads(conf.read_text()) if conf.is_file() else {})
        return out + [c for c in run_commands(path) if c not in out]

    return walk(run, config)


def _loss_curve(run: Path, every: int) -> list[list[float]]:
    out = []
    f = run / "metrics.jsonl"
    if f.is_file():
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec and rec["step"] % every == 0:
                out.append([rec["step"], round(float(rec["loss"]), 5)])
    return out


def stage2_cost(run: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The Stage 2 cost of a distilled run (for a DMD run: of its generator's Stage 2 run):
    teacher forwards, wall time (trajectory generation + training) and bytes stored."""
    stage = config.get("stage")
    if stage == "dmd":
        gen = Path(str(config.get("generator", "")))
        if gen.is_dir() and latest_checkpoint(gen) is not None:
            meta = json.loads((latest_checkpoint(gen) / "meta.json").read_text())
            return stage2_cost(gen, meta["config"])
        card = gen.with_suffix(".yaml")
        if gen.suffix == ".safetensors" and card.is_file():  # a shipped Stage 2 student: its card's cost
            return (yaml.safe_load(card.read_text()) or {}).get("stage2")
        return None
    if stage not in ("cd", "ode"):
        return None
    meta = json.loads((latest_checkpoint(run) / "meta.json").read_text())
    wall = float(meta.get("wall_s_total", 0.0))
    if stage == "cd":
        nfe, nfe_at = 0, {}
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "teacher_nfe" in rec:
                nfe = nfe_at[rec["step"]] = int(rec["teacher_nfe"])
        # the forwards grow by the same number every step; an evaluation between log lines takes the rate
        last = max(nfe_at) if nfe_at else 0
        per = nfe_at[last] / last if last else 0.0
        curve = [{**e, "teacher_nfe": nfe_at.get(e["step"], round(e["step"] * per))} for e in eval_curve(run)]
        return {"method": "causal_cd", "run": str(run), "steps": meta["step"], "teacher_nfe": nfe,
                "wall_s": round(wall, 1), "bytes_stored": 0, "quality_vs_cost": curve}
    traj = Path(str(config.get("trajectories", ""))) / "trajectories.json"
    cost = json.loads(traj.read_text()) if traj.is_file() else {}
    t_wall = float(cost.get("wall_s", 0.0))
    # every point of the regression has paid for the whole trajectory set first
    curve = [{**e, "teacher_nfe": cost.get("teacher_nfe"), "wall_s": round(t_wall + e["wall_s"], 1)}
             if "wall_s" in e else {**e, "teacher_nfe": cost.get("teacher_nfe")} for e in eval_curve(run)]
    return {"method": "causal_ode", "run": str(run), "steps": meta["step"], "teacher_nfe": cost.get("teacher_nfe"),
            "wall_s": round(wall + t_wall, 1), "bytes_stored": cost.get("bytes_stored"),
            "trajectory_wall_s": cost.get("wall_s"), "training_wall_s": round(wall, 1), "quality_vs_cost": curve}


def _evaluations(paths: list[str]) -> list[dict[str, Any]]:
    evals = []
    for path in paths:
        rep = json.loads(Path(path).read_text())
        keep = {k: v for k, v in rep.items() if isinstance(v, (int, float)) or v is None}
        keep["sampler"] = rep.get("sampler")
        keep["file"] = str(path)
        keep["command"] = rep.get("provenance", {}).get("command")
        keep["checkpoint_step"] = rep.get("provenance", {}).get("step")
        evals.append(keep)
    return evals


def _curve(specs: list[str]) -> list[dict[str, Any]]:
    """Curve points from reports, each ``REPORT.json`` or ``STEP=REPORT.json`` (STEP: the total training
    steps of that checkpoint, for runs continued from another run's weights)."""
    curve = []
    for spec in specs:
        step_text, sep, path = spec.partition("=")
        if not sep:
            step_text, path = "", spec
        rep = json.loads(Path(path).read_text())
        step = int(step_text) if step_text else rep.get("provenance", {}).get("step")
        curve.append({"step": step, **{k: rep.get(k) for k in CURVE_FIELDS}, "sampler": rep.get("sampler"),
                      "file": str(path)})
    return sorted(curve, key=lambda r: r["step"] or 0)


def _yaml_value(value: Any) -> Any:
    """A --set value: a mapping or list written as YAML (e.g. the sampler the card plays with), else the string."""
    return yaml.safe_load(value) if isinstance(value, str) and value[:1] in "{[" else value


def annotate(card_path: str | Path, evaluations: list[str] | None = None, curve_reports: list[str] | None = None,
             continued_from: str | None = None, notes: str | None = None, name: str | None = None,
             rewrite: dict[str, str] | None = None) -> Path:
    """Add evaluation reports, a quality curve, the card of the run whose weights this run started
    from, or notes to an existing model card (the weights are not touched); ``name`` renames the
    card for weights shipped as NAME.safetensors, ``rewrite`` sets top-level config values."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card {card_path} not found")
    card = yaml.safe_load(card_path.read_text())
    if name:
        card["name"], card["weights"] = name, f"{name}.safetensors"
    for key, value in (rewrite or {}).items():  # "card.FIELD" sets a field of the card itself
        value = _yaml_value(value)
        if key.startswith("card."):
            card[key[5:]] = value
        else:
            card["config"][key] = value
    if continued_from:
        prev = yaml.safe_load(Path(continued_from).read_text())
        card["continued_from"] = {k: prev.get(k) for k in ("name", "steps", "wall_time_s", "git_commit", "command",
                                                           "weights_from", "training_eval_curve", "continued_from")
                                  if prev.get(k) is not None}
        card["total_steps"] = int(card["steps"]) + int(prev.get("total_steps", prev["steps"]))
        card["total_wall_time_s"] = round(float(card["wall_time_s"])
                                          + float(prev.get("total_wall_time_s", prev["wall_time_s"])), 1)
    if evaluations:
        card["evaluation"] = _evaluations(evaluations)
    if curve_reports:
        card["quality_vs_steps"] = _curve(curve_reports)
    if notes:
        card["notes"] = notes
    header = card_path.read_text().splitlines()[0]
    if name:
        header = f"# Model card of {card['weights']} (written by python -m trainer.export)"
    atomic_write_text(card_path, header + "\n" + yaml.safe_dump(card, sort_keys=False, width=110))
    return card_path


def export(run: str | Path, name: str, dtype: str = "fp16", command: str | None = None,
           evaluations: list[str] | None = None, rewrite: dict[str, str] | None = None,
           notes: str | None = None, out_dir: Path = SHIPPED, curve_reports: list[str] | None = None,
           weights_name: str | None = None, checkpoint: str | None = None, force: bool = False) -> Path:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise CheckpointError(f"--name {name!r} must be a plain file name (letters, digits, '_', '-', '.'), with no "
                              f"folder in it; the files go to --out-dir ({out_dir})")
    from world.paths import ensure_writable

    ensure_writable(out_dir / f"{name}.safetensors", "the exported weights (--out-dir)")
    if not force and ((out_dir / f"{name}.safetensors").exists() or (out_dir / f"{name}.yaml").exists()):
        raise CheckpointError(f"{out_dir / name}.safetensors/.yaml already exist; pass --force to replace them, or "
                              f"choose another --name")
    run = Path(run)
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run)
    if ckpt is None or not (ckpt / "meta.json").is_file():
        raise CheckpointError(f"run folder {run} has no complete checkpoint to export")
    meta = json.loads((ckpt / "meta.json").read_text())
    use = weights_name or ("ema" if (ckpt / "ema.safetensors").is_file() else "model")
    state = strip_prefix(load_weights(ckpt, use), "net.")
    tensors = {k: (v.float() if k.split(".")[-1] in KEEP_FP32 else v.to(DTYPES[dtype])).contiguous()
               for k, v in state.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"name": name, "step": str(meta["step"]), "dtype": dtype})
    tmp.chmod(0o644)
    tmp.replace(weights)
    config = dict(meta["config"])
    if config.get("world"):
        from world.dataset import recorded_settings

        learned = recorded_settings((config.get("data") or {}).get("dataset"), config["world"])
        if learned:
            config["world_settings"] = learned  # the real world it learned, for clones without the data
    for key, value in (rewrite or {}).items():  # e.g. autoencoder -> the shipped autoencoder
        config[key] = _yaml_value(value)
    card: dict[str, Any] = {
        "name": name,
        "stage": meta.get("stage"),
        "weights": weights.name,
        "dtype": dtype,
        "parameters": int(sum(v.numel() for v in state.values())),
        "sha256": content_hash(weights),  # checked at every load (trainer.checkpoint.check_content)
        "weights_from": f"{ckpt} ({use})",
        "steps": int(meta["step"]),
        "wall_time_s": round(float(meta.get("wall_s_total", 0.0)), 1),
        # a copy of the tree whose .git is not the code's (e.g. on a lent GPU machine) passes the commit in
        "git_commit": os.environ.get("DREAMSTEP_GIT_COMMIT") or git("rev-parse", "HEAD"),
        "command": command or " && ".join(run_commands(run)) or None,
        "commands": command_lineage(run, config),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": json.loads(json.dumps(config.get("data"))),  # a copy: no YAML anchors
        "config": config,
        "training_eval_curve": eval_curve(run),
        "loss_curve": _loss_curve(run, max(1, int(config.get("train", {}).get("log_every", 25))) * 4),
    }
    s2 = stage2_cost(run, config)
    if s2:
        card["stage2"] = s2
    if notes:
        card["notes"] = notes
    if evaluations:
        card["evaluation"] = _evaluations(evaluations)
    if curve_reports:
        card["quality_vs_steps"] = _curve(curve_reports)
    card_path = weights.with_suffix(".yaml")
    atomic_write_text(card_path, f"# Model card of {weights.name} (written by python -m trainer.export)\n"
                      + yaml.safe_dump(card, sort_keys=False, width=110))
    return weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run folder (its latest checkpoint is exported, EMA if present)")
    p.add_argument("--name", help="file name in assets/checkpoints, e.g. adventure_ae")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--command", help="the training command, recorded in the card")
    p.add_argument("--eval", action="append", default=[], help="trainer.evaluate report(s) to record")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="rewrite a top-level config value in the card, e.g. autoencoder=assets/checkpoints/x.safetensors")
    p.add_argument("--curve", action="append", default=[],
                   help="trainer.evaluate reports of intermediate checkpoints (quality against steps), "
                        "REPORT.json or TOTAL_STEPS=REPORT.json")
    p.add_argument("--weights", choices=["ema", "model"], help="which weights (default: the EMA if the run has one)")
    p.add_argument("--checkpoint", help="a checkpoint folder of the run (default: its latest)")
    p.add_argument("--notes")
    p.add_argument("--force", action="store_true", help="replace an existing export of the same --name")
    p.add_argument("--out-dir", default=str(SHIPPED))
    p.add_argument("--card", help="annotate this existing model card instead of exporting (with --eval, "
                                   "--curve, --continued-from, --notes)")
    p.add_argument("--continued-from", help="with --card: the card of the weights this run was initialised from")
    a = p.parse_args(argv)
    rewrite = {}
    try:
        rewrite.update(parse_key_values(a.set, "--set", "notes=...", yaml_values=False))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if a.card:
            print(f"updated {annotate(a.card, a.eval, a.curve, a.continued_from, a.notes, a.name, rewrite)}")
            return 0
        if not a.run or not a.name:
            print("error: --run and --name are required (or --card to annotate a card)", file=sys.stderr)
            return 2
        w = export(a.run, a.name, a.dtype, a.command, a.eval, rewrite, a.notes, Path(a.out_dir), a.curve, a.weights,
                   a.checkpoint, a.force)
    except (CheckpointError, FileNotFoundError, OSError) as e:  # OutputError: an unwritable --out-dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {w} ({w.stat().st_size / 1e6:.1f} MB) and {w.with_suffix('.yaml')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
