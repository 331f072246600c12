"""``python -m evaluation`` (also ``python -m trainer.evaluate``): the fidelity protocol of docs/EVALUATION.md.

For M held-out seeds the real world is played by an evaluation policy (explorer and random,
alternating; or a given action script) for C context frames and H more frames. The model gets
the C real context frames and the H actions and generates H frames open loop. Reported per
horizon and averaged over 1..16: PSNR/SSIM against the real frames, the copy-last-frame and
autoencoder-ceiling baselines, gap closed at one step, changed-region and seen-region PSNR,
the player's presence and position error, sharpness, action accuracy judged by the
inverse-dynamics model (IDM), Fréchet distances early and late in long rollouts (IDM
features), and revisit consistency. Writes a JSON report, a Markdown table and a plot.

Evaluation seeds start at :data:`EVAL_SEED_BASE`; :func:`check_heldout` asserts that no
training episode used one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from evaluation.fidelity import evaluate
from evaluation.report import render_markdown, render_plot
from evaluation.rollouts import EVAL_SEED_BASE, HORIZON, EvaluationError
from model.rollout import SamplerConfig
from world.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="world-model run folder, checkpoint folder or .safetensors")
    p.add_argument("--world", default="adventure")
    p.add_argument("--episodes", type=int, default=16, help="held-out episodes (M)")
    p.add_argument("--out", required=True, help="report JSON (a .md table and .png plot are written beside it)")
    p.add_argument("--actions", help="JSON action script (names or indices) used after the reset of every episode")
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--horizon", type=int, default=HORIZON)
    p.add_argument("--sampler", choices=["euler", "consistency"], default=None,
                   help="default: the card's sampler (a distilled student's consistency sampler; euler for a teacher)")
    p.add_argument("--steps", type=int, default=None,
                   help="default: the card's steps for its own sampler kind, else 48 (euler)")
    p.add_argument("--cfg", type=float, default=None,
                   help="action CFG scale on each sampling step (1 = off); default: the card's sampler cfg when "
                        "--sampler is the card's kind, else 1")
    p.add_argument("--shift", type=float, default=None, help="default: the checkpoint's training shift")
    p.add_argument("--first-frame-steps", type=int, default=None, help="default: the card's (consistency)")
    p.add_argument("--context-sigma", type=float, default=None,
                   help="noise level the model's own frames enter its cache at (default: the card's "
                        "loss.generated_sigma, else 0)")
    p.add_argument("--first-seed", type=int, default=EVAL_SEED_BASE,
                   help=f"first held-out seed (>= {EVAL_SEED_BASE}); another range than the report's to tune "
                        "a setting without tuning it on the test episodes")
    p.add_argument("--idm", help="IDM checkpoint (default: the shipped one, else runs/<world>_idm)")
    p.add_argument("--long-episodes", type=int, default=4, help="long rollouts for the Fréchet drift (0: skip)")
    p.add_argument("--long-horizon", type=int, default=256)
    p.add_argument("--revisit-episodes", type=int, default=4)
    p.add_argument("--strip", help="also write a PNG of real (upper) and generated (lower) frames per episode at "
                                   "horizons 1, 2, 4, 8, 12, 16")
    p.add_argument("--rollouts", help="a recorded held-out dataset (seeds >= 1,000,000) to evaluate on instead of "
                                      "playing the real game: for games without get_state/set_state")
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="the world model's compute precision (auto: bf16 where measurably faster here)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from model.io import CheckpointError
    from world.core import WorldError

    try:
        from model.io import resolve_full

        for name in ("episodes", "horizon", "context", "long_horizon"):
            if getattr(args, name) < 1:
                raise EvaluationError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.first_seed < EVAL_SEED_BASE:
            raise EvaluationError(f"--first-seed must be >= {EVAL_SEED_BASE} (held-out seeds), got {args.first_seed}")
        for name in ("long_episodes", "revisit_episodes"):
            if getattr(args, name) < 0:
                raise EvaluationError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        from world.paths import ensure_writable

        ensure_writable(args.out, "the report (--out)")  # before minutes of evaluation, not after
        card = resolve_full(args.checkpoint)[1]
        sampler = SamplerConfig.from_card(card, args.sampler, args.steps, args.first_frame_steps, args.cfg, args.shift,
                                          context_sigma=args.context_sigma)
        report = evaluate(args.checkpoint, args.world, args.episodes, args.context, args.horizon, sampler,
                          args.seed, args.actions, args.idm, args.long_episodes, args.long_horizon,
                          args.revisit_episodes, args.precision, first_seed=args.first_seed, rollouts=args.rollouts,
                          strip=args.strip)
    except (EvaluationError, CheckpointError, WorldError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report, indent=1)
    out.with_suffix(".md").write_text(render_markdown(report))
    render_plot(report, out.with_suffix(".png"))
    print(render_markdown(report))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
