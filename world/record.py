"""The recorder: play a world with a policy and write a Minari dataset; export episodes to mp4.

Record (episode i is played from seed ``seed + i``, so any dataset can be regenerated, and a
``--resume`` after a crash or kill continues exactly where an uninterrupted run would be)::

    python -m world.record --world adventure --policy explorer --episodes 240 --steps 256 \\
        --seed 0 --out data/datasets/adventure-explorer-v0 [--setting camera=room ...] [--resume]

Export one episode as a video (nearest-neighbour upscaled)::

    python -m world.record export --dataset data/datasets/adventure-explorer-v0 --episode 3 \\
        --out ep3.mp4 --scale 4

The dataset layout, crash safety and action convention are described in :mod:`world.dataset`.
Besides the dataset, the recorder writes ``DIR/stats.json``: the action histogram (pressed
and effective), the share of the map each episode visited, and what was written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from world.core import World, WorldError
from world.dataset import (
    ACTION_CONVENTION,
    DATA,
    METADATA,
    DatasetError,
    DatasetWriter,
    atomic_write_json,
    dataset_id,
    dir_size,
    load_episodes,
    read_metadata,
)
from world.io import git_commit, parse_key_values
from world.paths import ensure_writable
from world.policies import ALL_POLICIES, Policy, make_policy
from world.video import VideoError, write_mp4

STATS = "stats.json"


# ---------------------------------------------------------------------- playing
@dataclass
class PlayedEpisode:
    """What one episode of play produced, in Minari's layout (T+1 frames and infos)."""

    seed: int
    observations: list[np.ndarray]
    infos: list[dict[str, Any]]
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminations: list[bool] = field(default_factory=list)
    truncations: list[bool] = field(default_factory=list)


def play_episode(world: World, policy: Policy, seed: int, steps: int) -> PlayedEpisode:
    """Play up to ``steps`` steps from ``world.reset(seed)``; an episode cut short by the step
    limit is marked truncated at its last step (Minari's convention for a time limit)."""
    frame, info = world.reset(seed=seed)
    policy.reset(seed)
    ep = PlayedEpisode(seed, [frame], [info])
    for _ in range(steps):
        action = int(policy.act(frame, info))
        frame, reward, terminated, truncated, info = world.step(action)
        ep.observations.append(frame)
        ep.infos.append(info)
        ep.actions.append(action)
        ep.rewards.append(float(reward))
        ep.terminations.append(bool(terminated))
        ep.truncations.append(bool(truncated))
        if terminated or truncated:
            break
    if not ep.terminations[-1]:
        ep.truncations[-1] = True
    return ep


def episode_stats(ep: PlayedEpisode, num_actions: int, num_cells: int | None) -> dict[str, Any]:
    """Per-episode numbers kept in the episode metadata, so a resumed summary covers all."""
    effective = [int(i.get("effective_action", a)) for i, a in zip(ep.infos[1:], ep.actions)]
    stats: dict[str, Any] = {
        "steps": len(ep.actions),
        "return": float(sum(ep.rewards)),
        "terminated": bool(ep.terminations[-1]),
        "pressed": np.bincount(ep.actions, minlength=num_actions).tolist(),
        "effective": np.bincount(effective, minlength=num_actions).tolist(),
    }
    if "cell" in ep.infos[0]:
        cells = {_freeze(i["cell"]) for i in ep.infos if "cell" in i}
        stats["cells"] = sorted(_jsonable(c) for c in cells)
        stats["num_cells"] = num_cells
    return stats


def _freeze(value: Any) -> Any:
    """A hashable, JSON-stable form of a cell id (tuples/lists/arrays become tuples)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_freeze(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


# ---------------------------------------------------------------------- provenance
def dreamstep_version() -> str:
    try:
        return importlib.metadata.version("dreamstep")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def num_cells_of(world: World) -> int | None:
    """The world's reachable cell count (after a reset), or None if it has none."""
    n = getattr(world, "num_cells", None)
    return int(n) if isinstance(n, (int, np.integer)) else None


# ---------------------------------------------------------------------- recording
def record(world_name: str, policy_name: str, episodes: int, steps: int, out: str | Path,
           seed: int = 0, settings: dict[str, Any] | None = None,
           policy_kw: dict[str, Any] | None = None, resume: bool = False,
           progress: bool = True) -> dict[str, Any]:
    """Record ``episodes`` episodes into the dataset folder ``out``; returns the summary stats."""
    from world import make_world

    out = Path(out)
    dataset_id(out)  # a bad name fails before any work
    ensure_writable(out / STATS, "the dataset (--out)")  # makes only the (empty) folder itself
    if episodes < 1 or steps < 1:
        raise DatasetError(f"--episodes and --steps must be >= 1, got {episodes} and {steps}")
    if seed < 0:
        raise DatasetError(f"--seed must be >= 0, got {seed}")
    world = make_world(world_name, **(settings or {}))
    try:
        policy = make_policy(policy_name, world, seed, **(policy_kw or {}))
        writer = DatasetWriter(
            out,
            gym.spaces.Box(0, 255, world.frame_shape, np.uint8),
            gym.spaces.Discrete(world.num_actions),
            recording={"world": world_name, "settings": world.settings_dict(),
                       "policy": policy.describe(), "seed": seed, "steps": steps},
            extra={"world": world_name, "world_description": world.describe(),
                   **minari_provenance(world_name, world.settings_dict(), steps),
                   "policy": policy.describe(), "algorithm_name": f"dreamstep/{policy_name}",
                   "git_commit": (git_commit() or "unknown"), "dreamstep_version": dreamstep_version(),
                   "action_convention": ACTION_CONVENTION,
                   "description": f"{world_name} played by the {policy_name} policy, "
                                  f"episode i from seed {seed} + i, up to {steps} steps"},
            resume=resume)
        run = _record_loop(world, policy, writer, episodes, steps, seed, progress)
    finally:
        world.close()
    stats = summarize(out)
    stats["this_run"] = run
    atomic_write_json(out / STATS, stats)
    return stats


def _record_loop(world: World, policy: Policy, writer: DatasetWriter, episodes: int, steps: int,
                 seed: int, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    start = writer.next_episode
    t0, done_steps = time.perf_counter(), 0
    bar = tqdm(total=episodes, initial=min(start, episodes), unit="ep", desc=f"record {writer.id}",
               disable=not progress, dynamic_ncols=True)
    with bar:
        for i in range(start, episodes):
            ep = play_episode(world, policy, seed + i, steps)
            writer.write_episode(
                np.stack(ep.observations), ep.actions, ep.rewards, ep.terminations,
                ep.truncations, ep.infos, seed=ep.seed,
                metadata={"stats": episode_stats(ep, world.num_actions, num_cells_of(world))})
            done_steps += len(ep.actions)
            bar.set_postfix(steps_per_s=f"{done_steps / (time.perf_counter() - t0):.0f}",
                            refresh=False)
            bar.update(1)
    seconds = time.perf_counter() - t0
    return {"first_episode": start, "episodes": max(0, episodes - start), "steps": done_steps,
            "seconds": round(seconds, 2), "steps_per_s": round(done_steps / max(seconds, 1e-9), 1)}


# ---------------------------------------------------------------------- summary
def summarize(root: str | Path) -> dict[str, Any]:
    """Dataset-wide numbers from the top and episode metadata (covers resumed recordings)."""
    root = Path(root)
    meta = read_metadata(root)
    names = meta["world_description"]["action_names"]
    pressed = np.zeros(len(names), np.int64)
    effective = np.zeros(len(names), np.int64)
    shares, union, max_cells, returns, terminated = [], set(), 0, [], 0
    for i in range(meta["total_episodes"]):
        s = json.loads((root / DATA / str(i) / METADATA).read_text())["stats"]
        pressed += s["pressed"]
        effective += s["effective"]
        returns.append(s["return"])
        terminated += s["terminated"]
        if s.get("num_cells"):
            shares.append(len(s["cells"]) / s["num_cells"])
            union.update(_freeze(c) for c in s["cells"])
            max_cells = max(max_cells, s["num_cells"])
    total_p, total_e = max(int(pressed.sum()), 1), max(int(effective.sum()), 1)
    coverage = None
    if shares:
        coverage = {"per_episode_mean": float(np.mean(shares)), "per_episode_min": float(np.min(shares)),
                    "per_episode_max": float(np.max(shares)), "union_cells": len(union),
                    "map_cells": max_cells, "union_share": len(union) / max_cells,
                    "note": "per episode: distinct info['cell'] / world.num_cells; union: distinct "
                            "cell ids over all episodes / the largest num_cells (above 1 when each "
                            "seed makes its own map: the data then shows more positions than one "
                            "map has)"}
    return {
        "dataset": str(root), "dataset_id": meta["dataset_id"], "world": meta["world"],
        "policy": meta["policy"], "episodes": meta["total_episodes"], "steps": meta["total_steps"],
        "bytes": dir_size(root / DATA),
        "actions": {n: {"pressed": int(p), "pressed_share": p / total_p,
                        "effective": int(e), "effective_share": e / total_e}
                    for n, p, e in zip(names, pressed, effective)},
        "coverage": coverage,
        "mean_return": float(np.mean(returns)) if returns else 0.0,
        "terminated_episodes": terminated,
    }


def format_summary(stats: dict[str, Any]) -> str:
    """The human-readable summary the recorder prints, ending with a one-line summary."""
    lines = [f"{'action':<12}{'pressed':>16}{'effective':>18}"]
    for name, a in stats["actions"].items():
        lines.append(f"{name:<12}{a['pressed']:>9,} {a['pressed_share']:>6.1%}"
                     f"{a['effective']:>11,} {a['effective_share']:>6.1%}")
    cov = stats["coverage"]
    if cov:
        share = cov["union_share"]
        union = f"{share:.1%} of" if share <= 1 else f"{share:.2f}x"
        lines.append(f"map visited per episode: {cov['per_episode_mean']:.1%} mean "
                     f"({cov['per_episode_min']:.1%}..{cov['per_episode_max']:.1%}); union over the "
                     f"dataset: {cov['union_cells']:,} distinct cells = {union} the cells of one map")
    lines.append(f"episodes ended by the world: {stats['terminated_episodes']}; "
                 f"mean return {stats['mean_return']:.2f}")
    run = stats.get("this_run") or {}
    mb = stats["bytes"] / 1e6
    lines.append(
        f"recorded {stats['episodes']} episodes ({stats['steps']:,} steps, {mb:.1f} MB) of "
        f"{stats['world']} with {stats['policy']['name']} to {stats['dataset']}"
        + (f" (this run: {run['episodes']} episodes in {run['seconds']:.0f} s, "
           f"{run['steps_per_s']:.0f} steps/s)" if run else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------- export
def minari_provenance(world_name: str, settings: dict[str, Any], steps: int) -> dict[str, Any]:
    """Minari's ``env_spec`` (so that ``recover_environment()`` rebuilds the env that plays the recorded
    game: the registered ``dreamstep/<Game>-v0`` of a built-in world, else the generic
    ``dreamstep/World-v0`` with ``world=``, the world's settings as kwargs), ``author`` and, where the
    code has a public remote, ``code_permalink``."""
    from gymnasium.envs.registration import EnvSpec

    from agent_env.env import BUILTIN_WORLDS, ENTRY_POINT, WORLD_ENV_ID, env_id_for

    env_id = env_id_for(world_name) if world_name in BUILTIN_WORLDS else WORLD_ENV_ID
    spec = EnvSpec(id=env_id, entry_point=ENTRY_POINT, max_episode_steps=steps,
                   kwargs={"world": world_name, **json.loads(json.dumps(settings, default=str))})
    out: dict[str, Any] = {"env_spec": spec.to_json(), "author": ["dreamstep world.record"]}
    url = _git_remote()
    if url:
        commit = (git_commit() or "unknown")
        out["code_permalink"] = f"{url.removesuffix('.git')}/tree/{commit}" if commit else url
    return out


def _git_remote() -> str | None:
    try:
        r = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    url = r.stdout.strip()
    return url if r.returncode == 0 and url.startswith("https://") else None


def export(dataset: str | Path, episode: int, out: str | Path, scale: int = 4,
           fps: float | None = None) -> int:
    """Write one recorded episode to an mp4 file; returns the number of frames."""
    meta = read_metadata(dataset)
    (ep,) = load_episodes(dataset, [episode])
    rate = fps or float(meta.get("world_description", {}).get("tick_rate", 15.0))
    return write_mp4(out, ep.observations, fps=rate, scale=scale)


# ---------------------------------------------------------------------- CLI
def parse_pairs(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are parsed as YAML scalars (2 -> int, x -> str)."""
    return parse_key_values(pairs, what, error=DatasetError)


def _record_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m world.record",
        description="Record a Minari dataset of a world played by a policy "
                    "(or: python -m world.record export --help).")
    p.add_argument("--world", default="adventure", help="world name (default: adventure)")
    p.add_argument("--policy", default="explorer", help=f"one of {list(ALL_POLICIES)} (default: explorer)")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes in the dataset")
    p.add_argument("--steps", type=int, required=True, help="max steps per episode (T)")
    p.add_argument("--out", required=True, help="dataset folder, basename 'name-vN'")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default: 0)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="world setting, repeatable (e.g. --setting camera=room)")
    p.add_argument("--policy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter, repeatable (e.g. --policy-arg mean_hold=6)")
    p.add_argument("--agent", help="agent policy: path of a stable-baselines3 .zip model")
    p.add_argument("--resume", action="store_true", help="continue an interrupted recording in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m world.record export",
                                description="Export a recorded episode to mp4.")
    p.add_argument("--dataset", required=True, help="dataset folder")
    p.add_argument("--episode", type=int, required=True, help="episode id")
    p.add_argument("--out", required=True, help="output .mp4 file")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale (default: 4)")
    p.add_argument("--fps", type=float, help="frames per second (default: the world's tick rate)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["export"]:
            a = _export_parser().parse_args(argv[1:])
            ensure_writable(a.out, "the video (--out)")
            n = export(a.dataset, a.episode, a.out, scale=a.scale, fps=a.fps)
            print(f"exported episode {a.episode} of {a.dataset} ({n} frames, x{a.scale}) to {a.out}")
            return 0
        a = _record_parser().parse_args(argv)
        policy_kw = parse_pairs(a.policy_arg, "--policy-arg")
        if a.agent:
            policy_kw["agent"] = a.agent
        stats = record(a.world, a.policy, a.episodes, a.steps, a.out, seed=a.seed,
                       settings=parse_pairs(a.setting, "--setting"), policy_kw=policy_kw,
                       resume=a.resume, progress=not a.quiet)
    except (DatasetError, WorldError, VideoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
