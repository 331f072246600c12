"""Time-boxed parallel sweep of one stage: ``python -m trainer.sweep STAGE --config FILE
--variant NAME="key=value key=value" ... --minutes M``.

Every variant first runs a short probe (all variants at once, so the rate is measured under the
same sharing of the machine as the real runs); each variant's step count is then set so that it
finishes in about ``--minutes`` of training with a full learning-rate schedule, and the variants
run side by side (on one GPU, small models do not fill it: several runs cost little more than
one). The runs land in ``OUT/NAME`` and a summary (steps, rate, final held-out metrics) in
``OUT/sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition("=")
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"--variant {text!r}: expected NAME=\"key=value key=value\" with NAME in "
                         "letters, digits, '_' or '-'")
    overrides = shlex.split(sets)
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"--variant {name}: override {o!r} is not key=value")
    return name, overrides


def _command(stage: str, config: str, run_dir: Path, overrides: list[str], device: str) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", stage, "--config", config, "--device", device, "--fresh",
           "--set", f"run_dir={run_dir}"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _run_all(cmds: dict[str, list[str]], logs: Path) -> dict[str, int]:
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DREAMSTEP_NO_BAR="1")
    procs = {}
    for name, cmd in cmds.items():
        f = open(logs / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), f)
    codes = {}
    for name, (p, f) in procs.items():
        codes[name] = p.wait()
        f.close()
    return codes


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _rate(rows: list[dict]) -> float:
    rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r][1:]  # the first window holds start-up
    if not rates:
        raise RuntimeError("the probe logged no rate; raise --probe-steps or lower train.log_every")
    return sorted(rates)[len(rates) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.sweep", description=__doc__.split("\n")[0])
    p.add_argument("stage")
    p.add_argument("--config", required=True)
    p.add_argument("--variant", action="append", required=True, metavar='NAME="k=v k=v"')
    p.add_argument("--minutes", type=float, required=True, help="training time of each variant")
    p.add_argument("--probe-steps", type=int, default=60)
    p.add_argument("--eval-evals", type=int, default=8, help="held-out evaluations over each run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", required=True, help="folder for the runs and sweep.json")
    args = p.parse_args(argv)
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()  # the trainer runs from the repository root (its path rule)
    t0 = time.time()
    probes = {n: _command(args.stage, args.config, out / f"probe-{n}", o + [
        f"train.steps={args.probe_steps}", "train.log_every=10", "train.eval_every=0",
        f"train.ckpt_every={args.probe_steps * 10}"], args.device) for n, o in variants.items()}
    codes = _run_all(probes, out / "logs-probe")
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        print(f"error: probes failed {bad}; see {out / 'logs-probe'}", file=sys.stderr)
        return 1
    rates = {n: _rate(_metrics(out / f"probe-{n}")) for n in variants}
    steps = {n: max(args.probe_steps, int(r * args.minutes * 60 * 0.95)) for n, r in rates.items()}
    print(f"probe rates (steps/s, all variants at once): {rates}; steps: {steps}", flush=True)
    runs = {n: _command(args.stage, args.config, out / n, o + [
        f"train.steps={steps[n]}", f"train.eval_every={max(1, steps[n] // args.eval_evals)}",
        f"train.ckpt_every={max(1, steps[n] // 4)}", "train.ckpt_minutes=3"], args.device)
        for n, o in variants.items()}
    t1 = time.time()
    codes = _run_all(runs, out / "logs")
    summary: dict = {"stage": args.stage, "config": args.config, "minutes": args.minutes,
                     "probe_s": t1 - t0, "run_s": time.time() - t1, "variants": {}}
    for n in variants:
        rows = _metrics(out / n)
        evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
        summary["variants"][n] = {"overrides": variants[n], "exit_code": codes[n], "steps": steps[n],
                                  "probe_steps_per_s": rates[n], "eval": evals,
                                  "final_loss": next((r["loss"] for r in reversed(rows) if "loss" in r), None)}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    for n, v in summary["variants"].items():
        last = v["eval"][-1] if v["eval"] else {}
        print(f"{n}: exit {v['exit_code']}, {v['steps']} steps, final eval {last}")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
