"""Where an agent's transfer from the dream to the real game is lost, measured on its own trajectories.

:mod:`benchmarks.rl` calls these on every trained agent; each works on any policy ``obs -> action``:

- :func:`play_agent`: the agent's episodes in the real game (held-out seeds), frames, actions,
  rewards and episode ends kept;
- :func:`heads_on_real`: the dream's reward/termination heads read the *real* transitions the agent
  made: recall and precision of coin pickups (reward > 0), penalties (reward < 0) and episode ends.
  A head that misses pickups never pays the agent for them in the dream;
- :func:`dream_follow`: the dream replays the agent's real actions from the same first frame
  (open loop, the way :class:`agent_env.dream_vec.DreamVectorEnv` starts an episode): frame PSNR
  against the real game at each horizon, and the share of real pickups the dream's heads report
  in the dream within ``tolerance`` steps (and how many it reports that the real game did not);
- :func:`coverage`: how often the agent meets each event per 1,000 steps, beside the recorded
  dataset the world model learnt from (a policy that goes where the data never went exploits a
  wrong world).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import BenchmarkError, command


@dataclass
class Trajectory:
    seed: int
    frames: np.ndarray      # (T + 1, H, W, 3) uint8: the reset frame and one per step
    actions: np.ndarray     # (T,) int64
    rewards: np.ndarray     # (T,) float64
    terminated: np.ndarray  # (T,) bool


def play_agent(world: str, settings: dict[str, Any], policy: Callable[[np.ndarray], int], episodes: int,
               steps: int, seed_base: int) -> list[Trajectory]:
    """``episodes`` real-game episodes of ``policy`` on seeds ``seed_base + i`` (at most ``steps`` steps)."""
    from world import make_world

    w = make_world(world, **settings)
    out = []
    for i in range(episodes):
        obs, _ = w.reset(seed=seed_base + i)
        frames, acts, rews, ends = [obs], [], [], []
        for _ in range(steps):
            a = int(policy(obs))
            r = w.step(a)
            obs = r.frame
            frames.append(obs)
            acts.append(a)
            rews.append(r.reward)
            ends.append(r.terminated)
            if r.terminated or r.truncated:
                break
        out.append(Trajectory(seed_base + i, np.stack(frames), np.asarray(acts, np.int64),
                              np.asarray(rews, np.float64), np.asarray(ends, bool)))
    w.close()
    return out


def event_scores(real: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Recall and precision of boolean events (None where undefined: no real / no predicted event)."""
    real, predicted = np.asarray(real, bool), np.asarray(predicted, bool)
    hit = int((real & predicted).sum())
    return {"real": int(real.sum()), "predicted": int(predicted.sum()), "hits": hit,
            "recall": hit / int(real.sum()) if real.any() else None,
            "precision": hit / int(predicted.sum()) if predicted.any() else None}


def heads_on_real(dreamer: Any, trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """The dreamer's heads on the real transitions of ``trajs``: pickups, penalties, episode ends."""
    import torch

    rew, end, real_r, real_t = [], [], [], []
    for tr in trajs:
        if not len(tr.actions):
            continue
        z = dreamer.encode(tr.frames)
        r, t = dreamer.outcomes(z[:-1], z[1:], torch.from_numpy(tr.actions))
        rew.append(r)
        end.append(t)
        real_r.append(tr.rewards)
        real_t.append(tr.terminated)
    r, t = np.concatenate(rew), np.concatenate(end)
    rr, rt = np.concatenate(real_r), np.concatenate(real_t)
    return {"transitions": int(len(r)), "pickup": event_scores(rr > 0, r > 0),
            "penalty": event_scores(rr < 0, r < 0), "termination": event_scores(rt, t)}


def matched_events(real: np.ndarray, predicted: np.ndarray, tolerance: int) -> tuple[int, int]:
    """(real events with a predicted one within ``tolerance`` steps, predicted events with no real
    one within ``tolerance`` steps) of two boolean sequences; each predicted event matches once."""
    used = np.zeros(len(predicted), bool)
    hits = 0
    pred_idx = np.flatnonzero(predicted)
    for i in np.flatnonzero(real):
        near = [j for j in pred_idx if abs(j - i) <= tolerance and not used[j]]
        if near:
            used[min(near, key=lambda j: abs(j - i))] = True
            hits += 1
    return hits, int((predicted & ~used).sum())


@dataclass
class Replay:
    frames: list[np.ndarray]    # H batches of dreamed frames (B, H, W, 3): frames[j] after action j
    raw_rewards: np.ndarray     # (B, H) the heads on the raw dreamed latents
    frame_rewards: np.ndarray   # (B, H) the heads on the dreamed frames encoded again


def replay(dreamer: Any, start: Any, actions: Any, seed: int = 0) -> Replay:
    """The dream from latents ``start`` (B, C, h, w), one frame as a dream episode starts, under the
    given actions (B, H) (open loop), read by the heads two ways at each step."""
    import torch

    B, H = actions.shape
    sess = dreamer.session(B, torch.Generator().manual_seed(seed))
    seq = [start]
    with torch.no_grad(), dreamer.autocast():
        sess.prime(start[:, None], torch.zeros(B, 1, dtype=torch.long))
        for j in range(H):
            seq.append(sess.generate(actions[:, j:j + 1], dreamer.sampler, fuse=True)[:, 0].float())
    frames = [dreamer.decode(z) for z in seq[1:]]
    re = [start] + [dreamer.encode(f) for f in frames]  # what the frames show, as pixels encoded again
    raw = np.stack([dreamer.outcomes(seq[j], seq[j + 1], actions[:, j])[0] for j in range(H)], 1)
    fr = np.stack([dreamer.outcomes(re[j], re[j + 1], actions[:, j])[0] for j in range(H)], 1)
    return Replay(frames, raw, fr)


def dream_follow(dreamer: Any, trajs: Sequence[Trajectory], horizon: int, seed: int = 0,
                 tolerance: int = 2) -> dict[str, Any]:
    """The dream replays each trajectory's real actions from its first frame, ``horizon`` steps
    (shorter episodes are left out): PSNR against the real frames by step, and pickups."""
    import torch

    from evaluation.metrics import psnr_batch

    keep = [tr for tr in trajs if len(tr.actions) >= horizon]
    if not keep:
        return {"episodes": 0, "horizon": horizon, "psnr_at": [], "note": f"no episode lasted {horizon} steps"}
    B = len(keep)
    acts = torch.from_numpy(np.stack([tr.actions[:horizon] for tr in keep]))
    rep = replay(dreamer, dreamer.encode(np.stack([tr.frames[0] for tr in keep])), acts, seed)
    psnr = [float(psnr_batch(rep.frames[t], np.stack([tr.frames[t + 1] for tr in keep])).mean())
            for t in range(horizon)]
    d_rew, f_rew = rep.raw_rewards, rep.frame_rewards  # (B, horizon)
    hits = false = n_real = f_hits = 0
    for b, tr in enumerate(keep):
        real = tr.rewards[:horizon] > 0
        h, f = matched_events(real, d_rew[b] > 0, tolerance)
        hits, false, n_real = hits + h, false + f, n_real + int(real.sum())
        f_hits += matched_events(real, f_rew[b] > 0, tolerance)[0]
    return {"episodes": B, "horizon": horizon, "psnr_at": psnr, "tolerance": tolerance,
            "real_pickups": n_real, "dream_pickups_matched": hits, "dream_pickups_unmatched": false,
            "pickup_recall": hits / n_real if n_real else None,
            # the same heads on the dreamed frames re-encoded: a pickup they find but the raw read
            # misses is the heads' miss, one both miss the dream did not draw
            "frames_pickup_recall": f_hits / n_real if n_real else None,
            "dream_pickups_agreement": read_agreement(d_rew > 0, f_rew > 0),
            "real_return": float(np.mean([tr.rewards[:horizon].sum() for tr in keep])),
            "dream_return": float(d_rew.sum(1).mean())}


def read_agreement(raw: np.ndarray, frames: np.ndarray) -> dict[str, Any]:
    """How the heads' read of the raw dreamed latents agrees with their read of the same frames
    re-encoded, step by step: pickups both saw, only the frames, only the raw latents."""
    return {"both": int((raw & frames).sum()), "frames_only": int((frames & ~raw).sum()),
            "raw_only": int((raw & ~frames).sum())}


def event_rates(rewards: np.ndarray, terminated: np.ndarray) -> dict[str, float]:
    n = max(len(rewards), 1)
    return {"steps": int(len(rewards)), "pickups_per_1000": 1000.0 * float((rewards > 0).sum()) / n,
            "penalties_per_1000": 1000.0 * float((rewards < 0).sum()) / n,
            "ends_per_1000": 1000.0 * float(np.asarray(terminated, bool).sum()) / n}


def coverage(trajs: Sequence[Trajectory], dataset: str | None, max_episodes: int = 64) -> dict[str, Any]:
    """Events per 1,000 steps of the agent, and of the dataset the world model was trained on."""
    out: dict[str, Any] = {"agent": event_rates(np.concatenate([t.rewards for t in trajs]),
                                                np.concatenate([t.terminated for t in trajs])),
                           "agent_actions": np.bincount(np.concatenate([t.actions for t in trajs])).tolist()}
    if dataset and not (Path(dataset) / "data" / "metadata.json").is_file():
        out["dataset"] = {"path": str(dataset), "note": "not here: regenerate it to compare (make dataset)"}
    elif dataset:
        from world.dataset import iter_episodes, open_dataset

        n = min(open_dataset(dataset).total_episodes, max_episodes)
        rs, ts = [], []
        for ep in iter_episodes(dataset, range(n)):
            rs.append(ep.rewards)
            ts.append(ep.terminations)
        out["dataset"] = {"path": str(dataset), "episodes": n, **event_rates(np.concatenate(rs), np.concatenate(ts))}
    return out


def pickups_by_horizon(dreamer: Any, trajs: Sequence[Trajectory], horizons: Sequence[int], tolerance: int = 1,
                       seed: int = 0) -> list[dict[str, Any]]:
    """For every real pickup at transition t and each horizon k, the dream starts from the real frame
    k - 1 steps before it (one frame, as a dream episode starts) and replays the real actions to
    k + ``tolerance`` steps. A pickup is found when the heads report one within ``tolerance`` steps of
    step k: reading the raw dreamed latents (``raw_recall``) or the dreamed frames encoded again
    (``frames_recall``). ``psnr_at_pickup``: the dreamed frame at step k against the real one."""
    import torch

    from evaluation.metrics import psnr_batch

    zs = [dreamer.encode(tr.frames) for tr in trajs]
    events = [(i, int(t)) for i, tr in enumerate(trajs) for t in np.flatnonzero(tr.rewards > 0)]
    out = []
    for k in horizons:
        ev = [(i, t) for i, t in events if t - k + 1 >= 0 and t + tolerance < len(trajs[i].actions)]
        row: dict[str, Any] = {"horizon": int(k), "events": len(ev)}
        if not ev:
            out.append({**row, "raw_recall": None, "frames_recall": None, "psnr_at_pickup": None})
            continue
        H = k + tolerance
        start = torch.stack([zs[i][t - k + 1] for i, t in ev])
        acts = torch.from_numpy(np.stack([trajs[i].actions[t - k + 1:t - k + 1 + H] for i, t in ev]))
        rep = replay(dreamer, start, acts, seed)
        raw, fr = rep.raw_rewards > 0, rep.frame_rewards > 0
        win = slice(max(0, k - 1 - tolerance), k + tolerance)
        real = np.stack([trajs[i].frames[t + 1] for i, t in ev])
        out.append({**row, "raw_recall": float(raw[:, win].any(1).mean()), "frames_recall": float(fr[:, win].any(1).mean()),
                    "psnr_at_pickup": float(psnr_batch(rep.frames[k - 1], real).mean())})
    return out


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.transfer --agent AGENT.zip --out FILE.json``: a trained agent's real
    pickups, read by the heads in the real game and found again in the dream by horizon."""
    import argparse
    import json

    import torch

    from benchmarks.rl import CONFIG, _fmt, load_rl_config, real_settings

    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=main.__doc__)
    p.add_argument("--agent", required=True, help="an SB3 PPO agent (.zip), e.g. runs/rl_agents/real_seed1.zip")
    p.add_argument("--config", default=str(CONFIG), help="the RL benchmark's config (world, dream checkpoint, heads)")
    p.add_argument("--heads", default=None, help="heads to read with (default: the config's dream.heads)")
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--seed-base", type=int, default=2_000_000, help="real-game seeds (held out: >= 1,000,000)")
    p.add_argument("--horizons", default="1,2,4,8,16,32")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not Path(a.agent).is_file():
        raise BenchmarkError(f"agent {a.agent} not found; train one with make rl (runs/rl_agents/*.zip)")
    try:
        horizons = [int(x) for x in a.horizons.split(",")]
    except ValueError:
        raise BenchmarkError(f"--horizons must be comma-separated ints, got {a.horizons!r}") from None
    if min(horizons) < 1:
        raise BenchmarkError(f"every horizon must be >= 1, got {horizons}")
    from stable_baselines3 import PPO

    from model.dreamer import Dreamer

    cfg = load_rl_config(a.config)
    heads = a.heads or cfg.dream.heads
    dreamer = Dreamer.load(cfg.dream.checkpoint, sampler="consistency", steps=cfg.dream.steps, heads=heads)
    if dreamer.heads is None:
        raise BenchmarkError(f"no reward heads for {cfg.dream.checkpoint} (heads={heads!r}); give --heads PATH")
    agent = PPO.load(a.agent, device="cpu")
    torch.manual_seed(0)
    trajs = play_agent(cfg.world, real_settings(cfg), lambda o: int(agent.predict(o, deterministic=False)[0]),
                       a.episodes, a.steps, a.seed_base)
    rep = {"command": "python -m benchmarks.transfer " + " ".join(sys.argv[1:] if argv is None else argv),
           "agent": a.agent, "checkpoint": cfg.dream.checkpoint, "heads": heads,
           "heads_on_real": heads_on_real(dreamer, trajs),
           "by_horizon": pickups_by_horizon(dreamer, trajs, horizons)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print(f"heads on the real transitions: pickup recall {rep['heads_on_real']['pickup']['recall']}")
    print("horizon  events  raw latents  frames re-encoded  PSNR at pickup")
    for r in rep["by_horizon"]:
        print(f"{r['horizon']:7d}  {r['events']:6d}  {_fmt(r['raw_recall']):>11}  {_fmt(r['frames_recall']):>17}  "
              f"{_fmt(r['psnr_at_pickup'], '{:.1f}'):>14}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
