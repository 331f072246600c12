"""Train a PPO agent (Stable-Baselines3) in the dream only, then score it in the real game.

    python -m agent_env.ppo --timesteps 50000 --envs 8 --out runs/ppo_dream [--checkpoint CKPT]

The agent never sees the real game while it learns: its env is ``DreamVectorEnv`` (N dreams in
one batched forward, rewards and episode ends from the reward/termination heads). It is then
played in the real game on held-out seeds (>= 1,000,000) next to a uniform random policy on
the same seeds; both mean returns are printed and written to ``OUT/result.json`` with the
trained policy in ``OUT/ppo.zip``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EVAL_SEED_BASE = 1_000_000


def sb3_vec_env(venv: Any):
    """A Stable-Baselines3 VecEnv over a Gymnasium VectorEnv with same-step autoreset."""
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    class _Adapter(VecEnv):
        def __init__(self) -> None:
            super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
            self._actions: np.ndarray | None = None

        def reset(self):
            seed = self._seeds[0] if getattr(self, "_seeds", None) and self._seeds[0] is not None else None
            obs, _ = venv.reset(seed=seed)
            self._reset_seeds()
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions)

        def step_wait(self):
            obs, rew, term, trunc, info = venv.step(self._actions)
            dones = term | trunc
            infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
            return obs, rew.astype(np.float32), dones, infos

        def close(self) -> None:
            venv.close()

        def get_attr(self, attr_name: str, indices=None) -> list[Any]:
            return [getattr(venv, attr_name)] * len(self._get_indices(indices))

        def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
            setattr(venv, attr_name, value)

        def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
            return [getattr(venv, method_name)(*args, **kwargs)] * len(self._get_indices(indices))

        def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
            return [False] * len(self._get_indices(indices))

    from gymnasium.vector import AutoresetMode

    if venv.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
        raise ValueError("the Stable-Baselines3 adapter needs a vector env with same-step autoreset "
                         "(DreamVectorEnv(..., autoreset_mode='SameStep'))")
    return _Adapter()


def real_returns(world: str, settings: dict[str, Any], policy, episodes: int, max_steps: int,
                 seed_base: int = EVAL_SEED_BASE) -> list[float]:
    """Returns of ``policy(obs) -> action`` in the real game on seeds seed_base + i."""
    from world import make_world

    w = make_world(world, **settings)
    out = []
    for i in range(episodes):
        obs, _ = w.reset(seed=seed_base + i)
        total = 0.0
        for _ in range(max_steps):
            r = w.step(int(policy(obs)))
            obs, total = r.frame, total + r.reward
            if r.terminated or r.truncated:
                break
        out.append(total)
    w.close()
    return out


def difference_ci(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b) (the two samples resampled independently)."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da = xa[rng.integers(0, len(xa), (n_boot, len(xa)))].mean(1)
    db = xb[rng.integers(0, len(xb), (n_boot, len(xb)))].mean(1)
    lo, hi = np.percentile(da - db, [2.5, 97.5])
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent_env.ppo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for ppo.zip and result.json")
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped default dream)")
    p.add_argument("--heads", default="auto", help="reward/termination heads (default: the world's shipped ones)")
    p.add_argument("--timesteps", type=int, default=50_000)
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="sampling steps of the dream")
    p.add_argument("--episode-steps", type=int, default=256, help="episode length in the real game (evaluation)")
    p.add_argument("--dream-episode-steps", type=int, default=0,
                   help="episode length in the dream (0: --episode-steps); shorter episodes restart the dream "
                        "from real frames more often, where it is most faithful")
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=128, help="PPO rollout length per env")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the dream's compute precision (auto: bf16 where measurably faster here)")
    p.add_argument("--compile", action="store_true",
                   help="compile the dream's streaming step (torch.compile; compiles at load, then faster steps)")
    a = p.parse_args(argv)
    import torch
    from stable_baselines3 import PPO

    from agent_env.dream_vec import DreamVectorEnv

    kw: dict[str, Any] = {"heads": a.heads, "steps": a.steps, "sampler": "consistency", "precision": a.precision,
                          "compile": a.compile}
    if a.checkpoint:
        kw["checkpoint"] = a.checkpoint
    try:
        venv = DreamVectorEnv(a.envs, max_episode_steps=a.dream_episode_steps or a.episode_steps,
                              autoreset_mode="SameStep", **kw)
    except Exception as e:  # noqa: BLE001 - a bad checkpoint or heads path: say which
        print(f"error: {e}", file=sys.stderr)
        return 2
    if venv.dreamer.heads is None:
        print("error: the dream has no reward/termination heads: nothing to learn from (train them with "
              "python -m trainer heads, or pass --heads)", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    env = sb3_vec_env(venv)
    env.seed(a.seed)
    model = PPO("CnnPolicy", env, n_steps=a.n_steps, batch_size=min(256, a.n_steps * a.envs), n_epochs=4,
                learning_rate=3e-4, ent_coef=0.01, gamma=0.99, seed=a.seed, verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=a.timesteps)
    train_s = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "ppo.zip")
    world, settings = venv.real_world_name, venv.real_settings
    n_act = venv.single_action_space.n
    env.close()
    agent = real_returns(world, settings, lambda o: model.predict(o, deterministic=False)[0], a.eval_episodes,
                         a.episode_steps)
    rng = np.random.default_rng(a.seed)
    rand = real_returns(world, settings, lambda o: rng.integers(n_act), a.eval_episodes, a.episode_steps)
    result = {"checkpoint": venv.settings.checkpoint, "timesteps": a.timesteps, "envs": a.envs,
              "dream_steps": a.steps, "train_wall_s": round(train_s, 1), "real_world": world,
              "dream_precision": venv.dreamer.precision, "dream_compiled": a.compile,
              "eval_episodes": a.eval_episodes, "episode_steps": a.episode_steps,
              "eval_seeds": [EVAL_SEED_BASE, EVAL_SEED_BASE + a.eval_episodes - 1],
              "agent_real_return_mean": float(np.mean(agent)), "agent_real_return_std": float(np.std(agent)),
              "random_real_return_mean": float(np.mean(rand)), "random_real_return_std": float(np.std(rand)),
              "dream_episode_steps": a.dream_episode_steps or a.episode_steps,
              "agent_minus_random_ci95": difference_ci(agent, rand, seed=a.seed),
              "command": "python -m agent_env.ppo " + " ".join(argv if argv is not None else sys.argv[1:])}
    result["clearly_above_random"] = result["agent_minus_random_ci95"][0] > 0  # the whole 95% interval above 0
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"PPO trained in the dream for {a.timesteps} steps ({train_s:.0f} s); real game, "
          f"{a.eval_episodes} held-out episodes: agent {result['agent_real_return_mean']:.2f} "
          f"+- {result['agent_real_return_std']:.2f}, random {result['random_real_return_mean']:.2f} "
          f"+- {result['random_real_return_std']:.2f}; agent - random 95% interval "
          f"[{result['agent_minus_random_ci95'][0]:.2f}, {result['agent_minus_random_ci95'][1]:.2f}]"
          f"{' (clearly above random)' if result['clearly_above_random'] else ' (not clearly above random)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
