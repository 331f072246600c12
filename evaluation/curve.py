"""``python -m evaluation.curve``: a world model's quality against training steps, on one fixed protocol.

The training loop's own evaluation is the held-out flow-matching loss: cheap, but blind to what a
player notices. This command runs the fidelity protocol (:func:`evaluation.fidelity.evaluate`) on each
checkpoint of a run that the curve does not have yet, with a short fixed protocol (8 held-out
episodes, 16 Euler steps, the 8-episode revisit test, no long rollouts), and keeps every point in
one JSON file. Run it while the run trains (``--watch MINUTES``) so that no checkpoint is pruned
before it is measured; a ``--baseline`` model (for example the shipped weights a run was warm-started
from) is the curve's step-0 point. ``--log FILE`` rewrites the curve's table in a Markdown file
between two marker lines, so a training log stays current without hand-typed numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from world.io import atomic_write_json, atomic_write_text

# the fixed protocol of every point (cheaper than the report's 16 episodes and 48 steps; comparable
# across the points of one curve, not with a full report)
PROTOCOL = {"episodes": 8, "euler_steps": 16, "revisit_episodes": 8, "long_episodes": 0, "seed": 0}
# (label, report key, format) of the Markdown table
COLUMNS = (("revisit PSNR", "revisit_psnr", "{:.2f}"),
           ("revisit from real frames", "revisit_teacher_forced_psnr", "{:.2f}"),
           ("walk hidden (memory)", "revisit_hidden_walk_psnr", "{:.2f}"),
           ("action acc.", "action_accuracy", "{:.3f}"),
           ("acc. key changed", "action_accuracy_switch", "{:.3f}"),
           ("changed PSNR", "changed_psnr_mean_16", "{:.2f}"), ("PSNR 1-16", "psnr_mean_16", "{:.2f}"),
           ("player found", "player_found_16", "{:.3f}"), ("creatures found 1-8", "creatures_found_8", "{:.3f}"))
KEEP = ("psnr_mean_16", "changed_psnr_mean_16", "seen_psnr_mean_16", "player_found_16", "creatures_found_8",
        "creatures_found_at", "action_accuracy", "action_accuracy_switch", "action_accuracy_hold", "action_accuracy_at",
        "action_accuracy_view_moved", "action_accuracy_view_still", "view_moved_share",
        "revisit_psnr", "copy_last_revisit_psnr", "revisit_teacher_forced_psnr", "revisit_hidden_walk_psnr",
        "revisit_hidden_still_psnr", "copy_last_still_psnr", "revisit_psnr_at", "gap_closed_1", "sharpness_ratio_16",
        "revisit_returned", "revisit_hidden_walk_psnr_each", "copy_last_revisit_psnr_each", "revisit_psnr_returned",
        "revisit_hidden_walk_psnr_returned", "copy_last_revisit_psnr_returned")
BEGIN, END = "<!-- curve:{name} begin (python -m evaluation.curve) -->", "<!-- curve:{name} end -->"


class CurveError(ValueError):
    pass


def run_checkpoints(run: Path) -> list[tuple[int, Path, float | None]]:
    """(step, folder, training wall seconds) of the run's complete checkpoints, oldest first."""
    out = []
    for p in sorted((run / "checkpoints").glob("step_*")):
        meta = p / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            out.append((int(m.get("step", int(p.name.split("_")[1]))), p, m.get("wall_s_total")))
    return out


def heldout_losses(run: Path) -> dict[int, float]:
    """The training loop's held-out loss per step (RUN/metrics.jsonl)."""
    out: dict[int, float] = {}
    f = run / "metrics.jsonl"
    if f.is_file():
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "eval/heldout_loss" in rec:
                out[int(rec["step"])] = float(rec["eval/heldout_loss"])
    return out


def measure(checkpoint: str, world: str) -> dict[str, Any]:
    from evaluation.fidelity import evaluate
    from model.io import resolve_full
    from model.rollout import SamplerConfig

    sampler = SamplerConfig.from_card(resolve_full(checkpoint)[1], "euler", PROTOCOL["euler_steps"], cfg=1.0)
    report = evaluate(checkpoint, world, episodes=PROTOCOL["episodes"], sampler=sampler,
                      seed=PROTOCOL["seed"], long_episodes=PROTOCOL["long_episodes"],
                      revisit_episodes=PROTOCOL["revisit_episodes"])
    return {k: report.get(k) for k in KEEP} | {"eval_wall_s": report["provenance"]["wall_s"]}


def load_curve(out: Path, name: str) -> dict[str, Any]:
    if out.is_file():
        try:
            curve = json.loads(out.read_text())
        except json.JSONDecodeError as e:
            raise CurveError(f"{out} is not a curve file ({e}); move it away or pick another --out") from e
        if curve.get("protocol") != PROTOCOL:
            raise CurveError(f"{out} was measured with protocol {curve.get('protocol')}, this command uses "
                             f"{PROTOCOL}; its points would not compare: pick another --out")
        return curve
    return {"name": name, "protocol": PROTOCOL, "points": []}


def update(run: Path, out: Path, world: str, baseline: str | None = None) -> list[dict[str, Any]]:
    """Measure the checkpoints (and baseline) the curve lacks; returns the new points."""
    curve = load_curve(out, run.name)
    done = {(p["label"], p["step"]) for p in curve["points"]}
    todo: list[tuple[str, int, str, float | None]] = []
    if baseline and ("baseline", 0) not in done:
        todo.append(("baseline", 0, baseline, 0.0))
    todo += [("run", s, str(p), w) for s, p, w in run_checkpoints(run) if ("run", s) not in done]
    new = []
    losses = heldout_losses(run)
    for label, step, ckpt, wall in todo:
        if label == "run" and not (Path(ckpt) / "meta.json").is_file():
            continue  # pruned while an earlier point was measured
        t0 = time.time()
        point = {"label": label, "step": step, "checkpoint": ckpt, "train_wall_s": wall, **measure(ckpt, world)}
        point["heldout_loss"] = losses.get(step) if label == "run" else None
        curve["points"].append(point)
        curve["points"].sort(key=lambda p: (p["label"] != "baseline", p["step"]))
        curve["run"], curve["world"] = str(run), world
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, curve, indent=1)
        new.append(point)
        print(f"[curve] {label} step {step}: revisit {_fmt(point.get('revisit_psnr'), '{:.2f}')} dB, action "
              f"{_fmt(point.get('action_accuracy'), '{:.3f}')} ({time.time() - t0:.0f} s)", flush=True)
    return new


def _fmt(v: Any, f: str) -> str:
    return "n/a" if v is None else f.format(v)


def render(curve: dict[str, Any]) -> str:
    p = curve["protocol"]
    lines = [f"Protocol: {p['episodes']} held-out episodes, {p['euler_steps']} Euler steps, CFG 1, horizon 16, "
             f"{p['revisit_episodes']} revisit episodes (held-out seeds; `python -m evaluation.curve`, "
             f"file `{curve.get('file', '')}`).", "",
             "| step | training h | held-out loss | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]
    for pt in curve["points"]:
        step = "0 (" + pt["checkpoint"] + ")" if pt["label"] == "baseline" else str(pt["step"])
        hours = _fmt(None if pt.get("train_wall_s") is None else pt["train_wall_s"] / 3600, "{:.2f}")
        lines.append(f"| {step} | {hours} | {_fmt(pt.get('heldout_loss'), '{:.4f}')} | "
                     + " | ".join(_fmt(pt.get(k), f) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines)


def write_log(log: Path, name: str, table: str) -> None:
    """Replace the text between the curve's marker lines in ``log`` (appended when absent)."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    text = log.read_text() if log.is_file() else ""
    block = f"{begin}\n{table}\n{end}"
    start = text.find(f"<!-- curve:{name} begin")  # whichever command wrote the marker
    if start >= 0 and end in text[start:]:
        text = text[:start] + block + text[text.index(end, start) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    atomic_write_text(log, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the run folder (RUN_DIR of a world-model stage)")
    p.add_argument("--out", required=True, help="the curve's JSON file (points are added to it)")
    p.add_argument("--world", default="adventure")
    p.add_argument("--baseline", help="weights measured as the curve's step 0 (e.g. the run's init)")
    p.add_argument("--log", help="a Markdown file whose curve section is rewritten after each point")
    p.add_argument("--watch", type=float, default=0.0,
                   help="keep measuring new checkpoints every this many minutes until the run's final "
                        "checkpoint is measured (0: once)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the other cores to training)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    run, out = Path(args.run), Path(args.out)
    name = run.name
    from model.io import CheckpointError

    try:
        if not run.is_dir() and not args.watch:
            raise CurveError(f"run folder {run} does not exist; start the run first, or check --run")
        while True:
            if run.is_dir():
                update(run, out, args.world, args.baseline)
                if args.log:
                    curve = load_curve(out, name) | {"file": str(out)}
                    write_log(Path(args.log), name, render(curve))
            final = [c for c in run_checkpoints(run) if json.loads((c[1] / "meta.json").read_text()).get("final")]
            if not args.watch or final:
                break
            time.sleep(60 * args.watch)
    except (CurveError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(load_curve(out, name) | {"file": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
