"""The online mode of the RL benchmark (DIAMOND's loop): real play, heads fine-tuned, dream training.

In ``rounds`` rounds, the agent being trained

1. plays the real game for its share of the real-step budget (training seeds, below the held-out
   range; the first round with the untrained agent), every real step counted;
2. the dream's reward/termination heads are fine-tuned on all real transitions collected so far
   (the world model stays frozen: it is the shipped student);
3. the frames it met become the dream's start-state buffer
   (:meth:`agent_env.dream_vec.DreamVectorEnv.set_start_frames`): dream episodes start where the
   agent has been, not only at the map's first frame;
4. PPO continues in the dream for its share of the dream steps.

The agent's real steps are ``real_steps`` of its run (exact: the budget is never overrun), plus
the real steps the world model and heads were trained on before (``equal_data``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.transfer import Trajectory, play_agent

COLLECT_SEED_BASE = 500_000  # real-play seeds of the online rounds: below the held-out 1,000,000


def round_budgets(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` integer shares that sum to it exactly (earlier ones larger)."""
    if rounds < 1 or total < 0:
        raise ValueError(f"need rounds >= 1 and a budget >= 0, got {rounds} and {total}")
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def collect(world: str, settings: dict[str, Any], policy: Callable[[np.ndarray], int], budget: int,
            episode_steps: int, seed_base: int) -> list[Trajectory]:
    """Real episodes of ``policy`` until exactly ``budget`` steps are played (the last one cut short)."""
    out: list[Trajectory] = []
    used = 0
    i = 0
    while used < budget:
        (tr,) = play_agent(world, settings, policy, 1, min(episode_steps, budget - used), seed_base + i)
        out.append(tr)
        used += len(tr.actions)
        i += 1
    return out


def transitions(dreamer: Any, trajs: Sequence[Trajectory],
                encoded: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The latent transitions (z_prev, z, action, reward, terminated) of real trajectories.
    ``encoded``: the latents of the first trajectories, from an earlier call (each trajectory is
    encoded alone, so reusing them changes nothing); the ones it lacks are appended to it."""
    zp, zc, a, r, t = [], [], [], [], []
    encoded = [] if encoded is None else encoded
    for i, tr in enumerate(trajs):
        if i == len(encoded):
            encoded.append(dreamer.encode(tr.frames) if len(tr.actions) else torch.zeros(0))
        if not len(tr.actions):
            continue
        z = encoded[i]
        zp.append(z[:-1])
        zc.append(z[1:])
        a.append(torch.from_numpy(tr.actions))
        r.append(torch.from_numpy(tr.rewards).float())
        t.append(torch.from_numpy(tr.terminated))
    return {"z_prev": torch.cat(zp), "z": torch.cat(zc), "action": torch.cat(a), "reward": torch.cat(r),
            "terminated": torch.cat(t)}


def finetune_heads(heads: torch.nn.Module, data: dict[str, torch.Tensor], steps: int, lr: float = 3e-4,
                   batch: int = 256, seed: int = 0) -> dict[str, float]:
    """Fine-tune reward/termination heads in place on real transitions (class-balanced like
    ``python -m trainer heads``); the loss on those transitions before and after."""
    from model.heads import heads_loss

    values = heads.values.float()
    cls = torch.argmin((data["reward"][:, None] - values[None]).abs(), 1)  # the nearest known reward value
    counts = torch.bincount(cls, minlength=len(values)).double()
    w = torch.where(counts > 0, torch.sqrt(counts.sum() / counts.clamp(min=1) / len(values)), torch.zeros_like(counts))
    weights = (w / w[cls].mean()).float()
    pos = float(data["terminated"].sum())
    pos_weight = float(np.sqrt((len(cls) - pos) / pos)) if pos else 1.0

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        return heads_loss(heads, data["z_prev"][idx], data["z"][idx], data["action"][idx], cls[idx],
                          data["terminated"][idx], weights, pos_weight)[0]

    everything = torch.arange(len(cls))
    frozen = {n: p.requires_grad for n, p in heads.named_parameters()}
    heads.requires_grad_(True)  # loaded for inference, frozen
    heads.train()
    with torch.no_grad():
        before = float(loss_on(everything))
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(cls), (min(batch, len(cls)),), generator=gen)
        loss = loss_on(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    heads.eval()
    for n, p in heads.named_parameters():
        p.requires_grad_(frozen[n])
    with torch.no_grad():
        after = float(loss_on(everything))
    return {"transitions": int(len(cls)), "loss_before": before, "loss_after": after}


def train_online(cfg: Any, seed: int, make_env: Callable[[], tuple[Any, Any]], make_agent: Callable[[Any], Any],
                 settings: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """One agent of the online mode. ``make_env() -> (DreamVectorEnv, its SB3 adapter)``,
    ``make_agent(sb3_env) -> PPO``; ``cfg`` an RLConfig with its ``online`` section."""
    import time

    from world.log import get_logger

    o = cfg.online
    venv, env = make_env()
    env.seed(seed)
    model = make_agent(env)
    reals = round_budgets(o.real_steps, o.rounds)
    dreams = round_budgets(cfg.train.timesteps, o.rounds)
    trajs: list[Trajectory] = []
    encoded: list[torch.Tensor] = []  # the trajectories' latents, encoded once across the rounds
    rounds = []
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    for k, (real_k, dream_k) in enumerate(zip(reals, dreams)):
        if k == 0:
            def policy(obs: np.ndarray) -> int:
                return int(rng.integers(venv.single_action_space.n))  # the untrained agent: uniform
        else:
            def policy(obs: np.ndarray) -> int:
                return int(model.predict(obs, deterministic=False)[0])
        new = collect(cfg.world, settings, policy, real_k, cfg.train.episode_steps,
                      COLLECT_SEED_BASE + 10_000 * seed + 1_000 * k)
        trajs += new
        heads = finetune_heads(venv.dreamer.heads, transitions(venv.dreamer, trajs, encoded), o.head_steps, o.head_lr,
                               seed=seed + k)
        venv.set_start_frames(np.concatenate([tr.frames for tr in trajs]))
        model.learn(total_timesteps=dream_k, reset_num_timesteps=k == 0)
        rounds.append({"real_steps": int(sum(len(t.actions) for t in new)), "dream_steps": dream_k,
                       "real_pickups": int(sum((t.rewards > 0).sum() for t in new)), "heads": heads})
        get_logger().info(f"[rl] online seed {seed}: round {k + 1}/{len(reals)} done ({rounds[-1]['real_steps']} real "
                          f"steps, {rounds[-1]['real_pickups']} pickups, {dream_k} dream steps; "
                          f"{time.perf_counter() - t0:.0f} s)")
    wall = time.perf_counter() - t0
    env.close()
    real_steps = sum(r["real_steps"] for r in rounds)
    return {"seed": seed, "timesteps": cfg.train.timesteps, "real_steps": real_steps, "rounds": rounds,
            "train_wall_s": round(wall, 1)}, model
