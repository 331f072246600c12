"""``python -m evaluation.memory_probe``: where a world model looks, and what it draws, in the memory test.

The memory test of the revisit (``revisit_hidden_walk_psnr``, docs/EVALUATION.md): a few real context
frames, then a walk of 31 frames entered as noise at level 1 (only their actions real), then the return
frame, generated. This command replays that test on the evaluation's revisit seeds and reports per
checkpoint:

- the return frame's attention, averaged over layers, heads, its tokens and the sampler's steps, split
  by key frame: the context frames, the hidden walk (its first and last 8 frames), the frame itself;
- per episode, the PSNR of the drawn return frame, its PSNR at the best shift of up to ``--max-shift``
  pixels (and that shift: a view drawn in the wrong place rather than wrong), and the PSNR of copying
  the last context frame (100 where the walk ends exactly where it began, e.g. 35+ where creatures moved);
- the same return frame drawn from the same noise with its key hidden (the null action, as action
  dropout hides it in training; a pose model's poses still follow the pressed key): whether a view
  drawn in the wrong place comes from the frame's own action (``null_action``);
- for a pose model, the return frame redrawn with the hidden walk's frames moved out of the pose bias's
  radius (``hidden_far``): whether the frames one step from the return pull the view off; and with
  the context frames moved one step each way (``context_moved``): which displacement it draws in place.

It runs the model in fp32 with the dynamic cache (the weights are recomputed for the record), so its
PSNR can differ from the report's by sampling numerics, not by protocol.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import metrics as M
from evaluation.fidelity import REVISIT_SEED_OFFSET, revisit_pairs, revisit_script
from evaluation.rollouts import EVAL_SEED_BASE, EvaluationError, play_real
from model.attention import record_attention
from model.rollout import SamplerConfig, Session
from world.io import atomic_write_json

WALK = 32  # the revisit's steps: 16 out and 16 back; all but the return frame hidden


def probe(checkpoint: str, world: str = "adventure", episodes: int = 8, context: int = 4, steps: int = 16,
          seed: int = 0, max_shift: int = 8, first_seed: int = EVAL_SEED_BASE) -> dict[str, Any]:
    from model.io import load_autoencoder, load_world_model
    from world import make_world
    from world.dataset import recorded_settings

    model, cfg, _ = load_world_model(checkpoint)
    ae, _ = load_autoencoder(cfg["autoencoder"])
    settings = recorded_settings(cfg.get("data", {}).get("dataset"), world)
    settings.update(cfg.get("world_settings", {}) or {})
    pairs = revisit_pairs(list(make_world(world, **settings).action_names))
    if not pairs:
        raise EvaluationError(f"world {world!r} has no pair of opposite moves: the revisit cannot be played")
    if model.cfg.block_frames != 1:
        raise EvaluationError(f"the memory probe generates one frame at a time; {checkpoint} denoises blocks of "
                              f"{model.cfg.block_frames}")
    real = play_real(world, settings, episodes, context + WALK, first_seed + REVISIT_SEED_OFFSET,
                     script_fn=lambda i: revisit_script(i, context, pairs=pairs))
    acts = torch.from_numpy(real.actions).long()
    B, hidden = acts.shape[0], WALK - 1
    c = model.cfg
    gen = torch.Generator().manual_seed(seed)
    sess = Session(model, B, generator=gen, cache="dynamic")
    taken = torch.from_numpy(real.effective == real.actions)  # the moves the game took (pose_taken models)
    ctx_latents = ae.encode_frames(real.frames[:, :context])
    sess.prime(ctx_latents, acts[:, :context], taken=taken[:, :context])
    sess.write(torch.randn(B, hidden, c.latent_channels, c.latent_size, c.latent_size, generator=gen),
               acts[:, context:context + hidden], sigma=1.0, taken=taken[:, context:context + hidden])
    key_times = torch.cat([sess.cache.times, torch.tensor([sess.t])])  # the cache's frames, then the drawn one
    shift_s = float((cfg.get("loss") or {}).get("shift", 3.0))
    snap = sess.snapshot()
    with record_attention() as maps:
        x = sess.generate(acts[:, -1:], SamplerConfig(kind="euler", steps=steps, shift=shift_s),
                          write=False)  # the denoising calls only
    x_null = redraw(sess, snap, acts[:, -1:], steps, shift_s)
    x_far, x_ctx, x_keys = None, {}, None
    if model.cfg.pose_moves is not None:  # the hidden walk's frames out of the pose bias's reach
        x_far = redraw(sess, snap, acts[:, -1:], steps, shift_s, null_key=False,
                       moved_times=torch.arange(context, context + hidden))
        # the context frames moved one step each way: which displacement does the model draw in place?
        x_ctx = {f"{dx},{dy}": redraw(sess, snap, acts[:, -1:], steps, shift_s, null_key=False,
                                      moved_times=torch.arange(context), offset=(dx, dy))
                 for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))}
        # the hidden walk's keys hidden (null action tokens) with its poses kept: does the model take
        # the walk's motion from its keys, and draw the return one move further along it?
        x_keys = redraw_hidden_keys_null(model, ctx_latents, acts, taken, context, hidden, seed, steps, shift_s)
    L = c.tokens_per_frame
    calls = [m for m in maps if m.shape[-1] == len(key_times) * L]
    mass = torch.stack(calls).mean(0).view(B, -1, len(key_times), L).sum(-1).mean((0, 1))  # per key frame
    t = key_times
    end = context + hidden

    def share(sel: torch.Tensor) -> float:
        return float(mass[sel].sum())

    target = real.frames[:, -1]

    def scores(x: torch.Tensor | None) -> dict[str, Any] | None:
        """The drawn return frame's PSNR, PSNR at the best shift, that shift, and the mean PSNR."""
        if x is None:
            return None
        d = ae.decode_frames(x.float())[:, -1]
        _, b, sh = M.shift_aligned_psnr(d, target, max_shift)
        p = M.psnr_batch(d, target)
        return {"psnr": p.tolist(), "aligned_psnr": np.atleast_1d(b).tolist(), "shift_px": np.atleast_2d(sh).tolist(),
                "psnr_mean": float(p.mean())}

    drawn = scores(x)
    assert drawn is not None
    return {
        "checkpoint": checkpoint, "episodes": B, "seeds": list(real.seeds), "euler_steps": steps,
        "attention": {"context": share(t < context), "hidden": share((t >= context) & (t < end)),
                      "hidden_first_8": share((t >= context) & (t < context + 8)),
                      "hidden_last_8": share((t >= end - 8) & (t < end)), "own": share(t == end),
                      "per_key_frame": [round(v, 4) for v in mass.tolist()], "key_times": t.tolist()},
        **drawn,
        "copy_last_psnr": M.psnr_batch(real.frames[:, context - 1], target).tolist(),
        "model_calls_recorded": len(calls),
        "null_action": scores(x_null),
        "hidden_far": scores(x_far),
        "context_moved": {k: scores(v) for k, v in x_ctx.items()} or None,
        "hidden_keys_null": scores(x_keys),
        "pose_bias": pose_bias_summary(model),
    }


@torch.no_grad()
def redraw(sess: Session, snap: dict[str, object], pressed: torch.Tensor, steps: int, shift: float,
           null_key: bool = True, moved_times: torch.Tensor | None = None,
           offset: tuple[int, int] | None = None) -> torch.Tensor:
    """The frame ``sess.generate(pressed)`` drew from the state ``snap``, redrawn from the same noise:
    with ``null_key`` the null action in the model's embedding (the frame's pose still follows
    ``pressed``); with ``moved_times`` the cached frames at those times moved out of the pose bias's
    radius, or by ``offset`` (dx, dy) steps when given (a pose model; the drawn frame keeps its pose)."""
    from model import flow

    sess.restore(snap)
    sess.flush()
    model = sess.model
    times = torch.tensor([sess.t])
    noisy = torch.zeros(1, dtype=torch.bool)
    noise = torch.randn(sess._shape(1), generator=sess.gen, dtype=torch.float32).to(sess.device, sess.dtype)
    poses = model.call_poses(pressed, times, noisy, sess.cache) if model.cfg.pose_moves is not None else None
    if moved_times is not None and poses is not None and isinstance(sess.cache.poses, torch.Tensor):
        far = torch.isin(sess.cache.times, moved_times)
        sess.cache.poses[:, far] += torch.tensor(offset if offset is not None else (4 * model.cfg.pose_radius, 0))
    key = torch.full_like(pressed, model.cfg.null_action) if null_key else pressed
    x = noise
    sig = flow.sigma_grid(steps + 1, shift)
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist()):
        sigma = torch.full(x.shape[:2], s, dtype=x.dtype)
        x = flow.euler_step(x, model(x, sigma, key, times, noisy, cache=sess.cache, poses=poses), s, s_next)
    sess.restore(snap)  # the cache as it was
    return x


def redraw_hidden_keys_null(model: Any, ctx_latents: torch.Tensor, acts: torch.Tensor, taken: torch.Tensor, context: int,
                            hidden: int, seed: int, steps: int, shift: float) -> torch.Tensor:
    """The return frame of the memory test drawn from the same noise as :func:`probe`'s, the hidden
    walk written with the null action in its frames' action tokens while their poses still follow the
    pressed keys (a pose model)."""
    c = model.cfg
    B = acts.shape[0]
    gen = torch.Generator().manual_seed(seed)
    sess = Session(model, B, generator=gen, cache="dynamic")
    sess.prime(ctx_latents, acts[:, :context], taken=taken[:, :context])
    noise = torch.randn(B, hidden, c.latent_channels, c.latent_size, c.latent_size, generator=gen)
    sess.flush()
    times = torch.arange(sess.t, sess.t + hidden)
    ones = torch.ones(hidden, dtype=torch.bool)
    pressed = acts[:, context:context + hidden]
    poses = model.call_poses(pressed, times, ones, sess.cache, taken=taken[:, context:context + hidden])
    null = torch.full_like(pressed, c.null_action)
    sig = torch.ones(B, hidden, dtype=sess.dtype)
    model(noise.to(sess.dtype), sig, null, times, ones, cache=sess.cache, write_cache=True, poses=poses)
    sess.t += hidden
    return redraw(sess, sess.snapshot(), acts[:, -1:], steps, shift, null_key=False)


def pose_bias_summary(model: Any) -> dict[str, list[float]] | None:
    """Per head, the learned pose bias (times its gain, in logits) at zero displacement, the mean
    within one step per axis, and the shared entry beyond the radius; with pose values, per block the
    largest weight of their layer (``values_weight_max``); None without pose attention."""
    if model.cfg.pose_moves is None:
        return None
    R = model.cfg.pose_radius
    table = model.pose_bias.detach().float() * model.cfg.pose_gain
    grid = table[:, :(2 * R + 1) ** 2].view(-1, 2 * R + 1, 2 * R + 1)
    out = {"zero": [round(v, 3) for v in grid[:, R, R].tolist()],
           "within_1": [round(v, 3) for v in grid[:, R - 1:R + 2, R - 1:R + 2].mean((1, 2)).tolist()],
           "beyond_radius": [round(v, 3) for v in table[:, -1].tolist()]}
    if model.cfg.pose_values:  # per block, the largest weight of the layer the attended displacement enters by
        out["values_weight_max"] = [round(float(b.attn.pose_out.weight.abs().max()), 4) for b in model.blocks]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.memory_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="a world model (repeat to compare)")
    p.add_argument("--world", default="adventure")
    p.add_argument("--episodes", type=int, default=8, help="revisit episodes (the curve's 8 by default)")
    p.add_argument("--steps", type=int, default=16, help="Euler steps of the return frame")
    p.add_argument("--max-shift", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="a JSON file for the results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    results = []
    for ck in args.checkpoint:
        try:
            r = probe(ck, args.world, args.episodes, steps=args.steps, max_shift=args.max_shift)
        except EvaluationError as e:
            raise SystemExit(f"memory probe: {e}") from None
        results.append(r)
        a = r["attention"]
        print(f"{ck}\n  attention: context {a['context']:.3f}, hidden {a['hidden']:.3f} (first 8 "
              f"{a['hidden_first_8']:.3f}, last 8 {a['hidden_last_8']:.3f}), own {a['own']:.3f}\n"
              f"  PSNR {r['psnr_mean']:.2f}: " + " ".join(f"{v:.1f}" for v in r["psnr"]) +
              "\n  at best shift: " + " ".join(f"{v:.1f}" for v in r["aligned_psnr"]) +
              f" (shifts {r['shift_px']})\n  copy last: " + " ".join(f"{v:.1f}" for v in r["copy_last_psnr"]))
        for label, key in (("key hidden (null action)", "null_action"), ("hidden walk out of pose reach", "hidden_far")):
            n = r[key]
            if n:
                print(f"  {label}: PSNR {n['psnr_mean']:.2f}: " + " ".join(f"{v:.1f}" for v in n["psnr"]) +
                      "\n    at best shift: " + " ".join(f"{v:.1f}" for v in n["aligned_psnr"]) +
                      f" (shifts {n['shift_px']})")
        for k, n in (r.get("context_moved") or {}).items():
            print(f"  context moved by ({k}) steps: PSNR " + " ".join(f"{v:.1f}" for v in n["psnr"]) +
                  f" (best shifts {n['shift_px']})")
        if r["pose_bias"]:
            print(f"  pose bias per head (logits): zero displacement {r['pose_bias']['zero']}, beyond the "
                  f"radius {r['pose_bias']['beyond_radius']}")
            if "values_weight_max" in r["pose_bias"]:
                print(f"  pose values' largest weight per block: {r['pose_bias']['values_weight_max']}")
    if args.out:
        atomic_write_json(Path(args.out), {"command": "python -m evaluation.memory_probe", "results": results,
                                           "wall_s": time.time() - t0}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
