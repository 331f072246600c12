"""``python -m benchmarks.rl --out benchmarks/results/rl.json``: train in the dream, score in the real game.

The same agent (Stable-Baselines3 PPO, CnnPolicy, the settings of ``benchmarks/rl.yaml``) is
trained for the same number of env steps in two places, with several training seeds each:

- **real**: the real game (``dreamstep/Adventure-v0``, a TimeLimit of ``train.episode_steps``);
- **dream**: the dream only (:class:`agent_env.dream_vec.DreamVectorEnv`: rewards and episode ends
  from the reward/termination heads, every episode started from a real frame).

Every agent is then played in the real game on held-out seeds (``eval.seed_base`` and up, never
recorded into a training dataset), beside a uniform random policy on the same seeds. The report
gives mean returns with 95% bootstrap intervals (episodes resampled within each training seed,
seeds resampled), the **transfer ratio** (dream - random) / (real - random) with its interval, the
wall time of each setting, and a learning curve (real-game returns at ``eval.curve_points`` points
of training). With ``equal_data``, a third setting gives a real-game agent only as many real steps
as the world model and its heads were trained on (DIAMOND's comparison: the dream's agent saw no
real step beyond those).

Every agent of the real and dream settings is saved (``--agents``) and diagnosed on its own real-game
episodes (:mod:`benchmarks.transfer`): the heads' recall and precision of coin pickups and episode ends
on those real transitions (``heads_pickup_recall`` pools the dream agents'), how far the dream follows
the real game when it replays the agent's actions, and how often the agent meets each event beside the
world model's dataset. Both places play the game with the settings the world model was trained on.

``--quick`` runs the whole protocol at toy sizes (one seed, a few hundred steps): a check that it
works, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import BenchmarkError, command

CONFIG = Path(__file__).resolve().parent / "rl.yaml"
#: where dream episodes start: the real game's reset frame, or frames of the world model's training data
START_FRAMES = ("reset", "dataset")


@dataclass
class DreamSection:
    checkpoint: str = "assets/checkpoints/adventure_cfpp_frame2.safetensors"
    steps: int = 2
    episode_steps: int = 128
    heads: str = "auto"
    heads_input: str = "latents"  # what the heads read: the generated latents, or the frames re-encoded
    start_frames: str = "reset"   # where dream episodes start: the real game's first frame (reset), or
    start_frames_max: int = 16_384  # frames drawn from the world model's own training data (dataset)
    compile: bool = False         # the dream's streaming step compiled (torch.compile; faster steps, the same
                                  # frames to bf16 rounding)


@dataclass
class TrainSection:
    timesteps: int = 80_000
    envs: int = 8
    episode_steps: int = 128
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class PPOSection:
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 3e-4
    ent_coef: float = 0.01
    gamma: float = 0.99


@dataclass
class EvalSection:
    episodes: int = 64
    episode_steps: int = 256
    seed_base: int = 1_000_000
    curve_points: int = 8
    curve_episodes: int = 16


@dataclass
class DiagnoseSection:
    episodes: int = 16      # real-game episodes of each agent, read by the heads and replayed in the dream
    horizon: int = 32       # steps the dream replays each episode's real actions
    tolerance: int = 2      # a dream pickup matches a real one this many steps apart


@dataclass
class OnlineSection:
    enabled: bool = False   # also train agents in the online mode (benchmarks/online.py)
    real_steps: int = 20_000  # real-game steps each online agent may play, in all its rounds
    rounds: int = 4         # real play -> heads fine-tuned -> dream training, this many times
    head_steps: int = 200   # fine-tuning steps of the heads per round
    head_lr: float = 3e-4


@dataclass
class RLConfig:
    world: str = "adventure"
    dream: DreamSection = field(default_factory=DreamSection)
    train: TrainSection = field(default_factory=TrainSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    eval: EvalSection = field(default_factory=EvalSection)
    diagnose: DiagnoseSection = field(default_factory=DiagnoseSection)
    online: OnlineSection = field(default_factory=OnlineSection)
    equal_data: bool = True


def load_rl_config(path: str | Path, quick: bool = False, overrides: dict[str, Any] | None = None) -> RLConfig:
    """The benchmark's settings from a YAML file (``base: rl.yaml`` inherits the shipped ones) and
    dotted ``overrides`` (``--set dream.steps=1``)."""
    from model.io import ConfigError
    from trainer.config import load_config

    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"RL config {path} not found (the shipped one is {CONFIG})")
    try:
        cfg = load_config(RLConfig, path, overrides)
    except ConfigError as e:
        raise BenchmarkError(str(e)) from None
    if quick:  # the protocol at toy sizes
        cfg.train = TrainSection(timesteps=256, envs=2, episode_steps=32, seeds=[0])
        cfg.ppo = PPOSection(n_steps=64, batch_size=64, n_epochs=1)
        cfg.dream.episode_steps = 32
        cfg.eval = EvalSection(episodes=4, episode_steps=32, seed_base=cfg.eval.seed_base, curve_points=2,
                               curve_episodes=2)
        cfg.diagnose = DiagnoseSection(episodes=2, horizon=8, tolerance=cfg.diagnose.tolerance)
        cfg.online = OnlineSection(enabled=cfg.online.enabled, real_steps=96, rounds=2, head_steps=5)
        cfg.equal_data = False
    if cfg.dream.start_frames not in START_FRAMES:
        raise BenchmarkError(f"dream.start_frames must be one of {START_FRAMES}, got {cfg.dream.start_frames!r} in {path}")
    if cfg.dream.start_frames_max < 1:
        raise BenchmarkError(f"dream.start_frames_max must be >= 1, got {cfg.dream.start_frames_max} in {path}")
    if cfg.eval.seed_base < 1_000_000:
        raise BenchmarkError(f"eval.seed_base must be >= 1,000,000 (held-out seeds), got {cfg.eval.seed_base}")
    return cfg


# ------------------------------------------------------------------ envs and agents
def real_settings(cfg: RLConfig) -> dict[str, Any]:
    """The real game's settings: those the dream's world model was trained on (its card's, else its
    dataset's), so that both places play the same game (read once per checkpoint)."""
    return dict(_trained_settings(cfg.dream.checkpoint, cfg.world))


@functools.lru_cache(maxsize=8)
def _trained_settings(checkpoint: str, world: str) -> dict[str, Any]:
    from model.io import resolve_full
    from world.dream import trained_settings

    return trained_settings(resolve_full(checkpoint)[1], world)


def real_vec_env(cfg: RLConfig, seed: int):
    """SB3 vector env of the real game (``train.envs`` copies, TimeLimit ``train.episode_steps``), with the
    dream's trained settings."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    import agent_env  # noqa: F401 - registers the dreamstep ids
    from agent_env.env import WORLD_ENV_ID

    settings = real_settings(cfg)

    def make():  # the generic id: any world (built-in, gym:..., a registered own game) by name
        return gym.make(WORLD_ENV_ID, world=cfg.world, max_episode_steps=cfg.train.episode_steps, **settings)

    venv = DummyVecEnv([make] * cfg.train.envs)
    venv.seed(seed)
    return venv


def dream_vec_env(cfg: RLConfig):
    """The dream's vector env (``train.envs`` dreams, same-step autoreset) and its SB3 adapter."""
    from agent_env.dream_vec import DreamVectorEnv
    from agent_env.ppo import sb3_vec_env

    venv = DreamVectorEnv(cfg.train.envs, max_episode_steps=cfg.dream.episode_steps, autoreset_mode="SameStep",
                          checkpoint=cfg.dream.checkpoint, sampler="consistency", steps=cfg.dream.steps,
                          heads=cfg.dream.heads, heads_input=cfg.dream.heads_input, compile=cfg.dream.compile)
    if venv.dreamer.heads is None:
        raise BenchmarkError(f"the dream {cfg.dream.checkpoint} has no reward/termination heads: nothing to learn "
                             f"from (train them with python -m trainer heads, or set dream.heads)")
    if cfg.dream.start_frames == "dataset":
        venv.set_start_frames(dataset_start_frames(cfg.dream.checkpoint, cfg.dream.start_frames_max))
    return venv, sb3_vec_env(venv)


def trained_on(card: dict[str, Any]) -> str | None:
    """The (first) dataset a model card (or run config) says its model was trained on, if it names one."""
    from world.dataset import trained_datasets

    return next(iter(trained_datasets(card)), None)


@functools.lru_cache(maxsize=2)
def dataset_start_frames(checkpoint: str, limit: int) -> np.ndarray:
    """A start-state buffer for the dream: ``limit`` frames drawn (seed 0) from the dataset the world
    model was trained on. These real steps are already counted in ``equal_real_data``."""
    from model.io import resolve_full
    from world.dataset import sample_observations

    dataset = trained_on(resolve_full(checkpoint)[1])
    if not dataset or not (Path(dataset) / "data" / "metadata.json").is_file():
        raise BenchmarkError(f"dream.start_frames: dataset needs the world model's training data, {dataset!r}, which "
                             f"is not here: regenerate it (make dataset) or set dream.start_frames: reset")
    return sample_observations(dataset, limit, seed=0)


def scores(cfg: RLConfig, policy, episodes: int) -> list[float]:
    """Real-game returns of ``policy(obs) -> action`` on the held-out seeds."""
    from agent_env.ppo import real_returns

    return real_returns(cfg.world, real_settings(cfg), policy, episodes, cfg.eval.episode_steps, cfg.eval.seed_base)


def train_agent(cfg: RLConfig, place: str, seed: int, timesteps: int) -> tuple[dict[str, Any], Any]:
    """Train one PPO agent in ``place`` ("real" or "dream"): its real-game scores, curve and wall time,
    and the agent (an SB3 PPO)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    torch.manual_seed(seed)
    env = real_vec_env(cfg, seed) if place == "real" else dream_vec_env(cfg)[1]
    if place == "dream":
        env.seed(seed)
    model = PPO("CnnPolicy", env, seed=seed, verbose=0, device="cpu", **asdict(cfg.ppo))
    marks = sorted({int(round(timesteps * (k + 1) / cfg.eval.curve_points)) for k in range(cfg.eval.curve_points)})
    curve: list[dict[str, float]] = []
    eval_s = [0.0]

    def act(obs: np.ndarray) -> int:
        return int(model.predict(obs, deterministic=False)[0])

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            while marks and self.num_timesteps >= marks[0]:
                t0 = time.perf_counter()
                ret = scores(cfg, act, cfg.eval.curve_episodes)
                eval_s[0] += time.perf_counter() - t0
                curve.append({"timesteps": marks.pop(0), "real_return": float(np.mean(ret))})
            return True

    t0 = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=Curve())
    wall = time.perf_counter() - t0 - eval_s[0]
    env.close()
    final = scores(cfg, act, cfg.eval.episodes)
    return {"seed": seed, "timesteps": timesteps, "train_wall_s": round(wall, 1), "returns": final,
            "mean": float(np.mean(final)), "curve": curve}, model


def train_online_agent(cfg: RLConfig, seed: int) -> tuple[dict[str, Any], Any]:
    """One agent of the online mode (:mod:`benchmarks.online`), scored in the real game."""
    import torch
    from stable_baselines3 import PPO

    from benchmarks.online import train_online

    torch.manual_seed(seed)
    run, model = train_online(cfg, seed, lambda: dream_vec_env(cfg),
                              lambda env: PPO("CnnPolicy", env, seed=seed, verbose=0, device="cpu", **asdict(cfg.ppo)),
                              real_settings(cfg))
    final = scores(cfg, lambda o: int(model.predict(o, deterministic=False)[0]), cfg.eval.episodes)
    return {**run, "returns": final, "mean": float(np.mean(final)), "curve": []}, model


def diagnose(cfg: RLConfig, dreamer: Any, policy, dataset: str | None) -> dict[str, Any]:
    """Where transfer is lost, on the agent's own real trajectories (:mod:`benchmarks.transfer`)."""
    from benchmarks import transfer

    trajs = transfer.play_agent(cfg.world, real_settings(cfg), policy, cfg.diagnose.episodes,
                                cfg.eval.episode_steps, cfg.eval.seed_base)
    return {"heads_on_real": transfer.heads_on_real(dreamer, trajs),
            "dream_follow": transfer.dream_follow(dreamer, trajs, cfg.diagnose.horizon, tolerance=cfg.diagnose.tolerance),
            "coverage": transfer.coverage(trajs, dataset)}


def pooled_recall(diags: list[dict[str, Any]]) -> float | None:
    """Coin-pickup recall of the heads over the real transitions of several agents together."""
    real = sum(d["heads_on_real"]["pickup"]["real"] for d in diags)
    hits = sum(d["heads_on_real"]["pickup"]["hits"] for d in diags)
    return hits / real if real else None


# ------------------------------------------------------------------ statistics
def _boot_means(per_seed: list[list[float]], rng: np.random.Generator, n: int) -> np.ndarray:
    """Bootstrap means of a setting: seeds resampled, then episodes within each drawn seed."""
    arr = [np.asarray(r, np.float64) for r in per_seed]
    out = np.empty(n)
    for b in range(n):
        seeds = rng.integers(0, len(arr), len(arr))
        out[b] = np.mean([arr[s][rng.integers(0, len(arr[s]), len(arr[s]))].mean() for s in seeds])
    return out


def summarize(per_seed: list[list[float]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    boots = _boot_means(per_seed, np.random.default_rng(seed), n_boot)
    return {"mean": float(np.mean([np.mean(r) for r in per_seed])),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def transfer_ratio(dream: list[list[float]], real: list[list[float]], random: list[float], n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """(dream - random) / (real - random), with a 95% bootstrap interval (all three resampled)."""
    note = "(dream - random) / (real - random) of the mean real-game returns"
    gap = np.mean([np.mean(v) for v in real]) - np.mean(random)
    if abs(gap) < 1e-9:  # the real-game agent learned nothing over random: no ratio
        return {"ratio": None, "ci95": [None, None], "note": note + "; undefined: real equals random"}
    rng = np.random.default_rng(seed)
    d, r = _boot_means(dream, rng, n_boot), _boot_means(real, rng, n_boot)
    x = _boot_means([random], rng, n_boot)
    ok = np.abs(r - x) > 1e-9
    ratios = (d[ok] - x[ok]) / (r[ok] - x[ok])
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    point = (np.mean([np.mean(v) for v in dream]) - np.mean(random)) / gap
    return {"ratio": float(point), "ci95": [float(lo), float(hi)], "note": note}


def difference(a: list[list[float]], b: list[list[float]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """mean(a) - mean(b) of two settings (per-seed returns) with its 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    d = _boot_means(a, rng, n_boot) - _boot_means(b, rng, n_boot)
    point = float(np.mean([np.mean(v) for v in a]) - np.mean([np.mean(v) for v in b]))
    return {"difference": point, "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]}


# ------------------------------------------------------------------ equal real data
def world_model_real_steps(checkpoint: str) -> dict[str, Any]:
    """The distinct real env steps the dream's world model, autoencoder and heads were trained on:
    the union of the episodes (world, seed) of every dataset their cards name."""
    import json

    from model.io import default_heads, resolve_full
    from world.dataset import read_metadata

    _, card = resolve_full(checkpoint)
    sources = {"world model": card, "autoencoder": resolve_full(card["autoencoder"])[1]}
    teacher = card.get("teacher")
    if teacher:
        try:
            sources["teacher"] = resolve_full(teacher)[1]
        except Exception:  # noqa: BLE001 - a teacher that is not shipped: its data is named in the card
            pass
    heads = card.get("heads") or default_heads(card.get("world", "adventure"))
    if heads:
        sources["heads"] = resolve_full(heads)[1]
    from world.dataset import trained_datasets

    datasets = sorted({str(d) for c in sources.values()
                       for d in [*trained_datasets(c), *(c.get("datasets") or [])] if d})
    missing = [d for d in datasets if not (Path(d) / "data" / "metadata.json").is_file()]
    if missing:
        raise BenchmarkError(f"the world model's training data {missing} is not here: regenerate it (make dataset, "
                             f"make dataset-teacher, make dataset-lava) or set equal_data: false")
    seen: dict[tuple[str, int], int] = {}
    for d in datasets:
        meta = read_metadata(d)
        rec = meta.get("recording", {})
        key = str(rec.get("world")) + str(sorted((rec.get("settings") or {}).items()))
        for i in range(int(meta["total_episodes"])):  # each episode's metadata, not its frames
            ep = json.loads((Path(d) / "data" / str(i) / "metadata.json").read_text())
            seen[(key, int(ep["seed"] if ep.get("seed") is not None else -1))] = int(ep["total_steps"])
    return {"datasets": datasets, "episodes": len(seen), "steps": int(sum(seen.values()))}


# ------------------------------------------------------------------ the report
def previous_runs(out: Path, rep: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The finished agents of an earlier report at ``out`` of the same config and mode, by (setting,
    seed, steps); {} when there is none. Another config is an error (a resumed report mixes nothing)."""
    import json

    if not out.is_file():
        return {}
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"--resume: {out} is not a readable report ({e}); move it away to start over") from None
    defaults = asdict(RLConfig())
    new, was = rep["config"], dict(old.get("config") or {})
    # a key added to a section since the report was written reads as its default
    was = {k: {**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
           for k, v in was.items()}
    # the online section changes only the online agents (kept when it is the same); a section added
    # since the report was written must be at its defaults
    online_same = was.pop("online", defaults["online"]) == new["online"]
    rest = {k: v for k, v in new.items() if k != "online"}
    same = {k: v for k, v in rest.items() if k in was} == was and all(
        rest[k] == defaults[k] for k in rest if k not in was)
    if not same or old.get("quick") != rep["quick"]:
        raise BenchmarkError(f"--resume: {out} was written with another config (or --quick); use another --out "
                             f"or move it away to start over")
    found = old.get("partial_runs") or {k: v.get("runs", []) for k, v in (old.get("settings") or {}).items()}
    return {(name, int(r["seed"]), int(r["timesteps"])): r for name, runs in found.items() for r in runs
            if name != "online" or online_same}


def headline(rep: dict[str, Any], cfg: RLConfig) -> dict[str, Any]:
    """The report's top-level fields (issue 26's names) from its settings."""
    S = rep["settings"]
    out: dict[str, Any] = {"seeds": list(cfg.train.seeds)}
    for k in ("random", "real", "dream"):
        if k in S:
            out[k] = {"mean": S[k]["mean"], "ci95": S[k]["ci95"]}
    out["wall_s"] = {k: S[k]["train_wall_s"] for k in ("real", "dream") if k in S}
    if "transfer" in rep:
        out["transfer_ratio"] = rep["transfer"]["ratio"]
        out["transfer_ratio_ci95"] = rep["transfer"]["ci95"]
    for k, field_name in (("dream", "heads_pickup_recall"), ("real", "heads_pickup_recall_real_agents")):
        diags = [r["diagnose"] for r in S.get(k, {}).get("runs", []) if "diagnose" in r]
        if diags:
            out[field_name] = pooled_recall(diags)
    if "online" in S:
        runs = S["online"]["runs"]
        out["online"] = {"mean": S["online"]["mean"], "ci95": S["online"]["ci95"],
                         "real_steps": int(np.mean([r["real_steps"] for r in runs]))}
        if "dream" in S:
            out["online"]["minus_offline_dream"] = difference([r["returns"] for r in runs],
                                                              [r["returns"] for r in S["dream"]["runs"]])
    if "real_equal_data" in S and "dream" in S:
        d = difference([r["returns"] for r in S["dream"]["runs"]], [r["returns"] for r in S["real_equal_data"]["runs"]])
        out["equal_real_data"] = {"real_steps": S["real_equal_data"]["timesteps"],
                                  "model_free": {"mean": S["real_equal_data"]["mean"],
                                                 "ci95": S["real_equal_data"]["ci95"]},
                                  "dream": out["dream"], "difference": d["difference"],
                                  "difference_ci95": d["ci95"]}
    return out



def render_markdown(rep: dict[str, Any]) -> str:
    s = rep["settings"]
    lines = [f"# RL: trained in the dream, scored in the real game ({rep['world']})", "",
             f"Command: `{rep['command']}`. PPO (Stable-Baselines3), {rep['config']['train']['timesteps']} env steps "
             f"per agent, seeds {rep['config']['train']['seeds']}; real-game evaluation on "
             f"{rep['config']['eval']['episodes']} held-out seeds from {rep['config']['eval']['seed_base']}, episodes "
             f"of {rep['config']['eval']['episode_steps']} steps.", "",
             "| setting | env steps | mean real return | 95% interval | training wall (s, all seeds) |", "|---|---|---|---|---|"]
    for name, v in s.items():
        lines.append(f"| {name} | {v.get('timesteps', '')} | {v['mean']:.3f} | [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | "
                     f"{v.get('train_wall_s', '')} |")
    t = rep["transfer"]
    if t["ratio"] is None:
        lines += ["", "**Transfer ratio**: undefined (the real-game agents score as random does)."]
    else:
        lines += ["", f"**Transfer ratio** (dream - random) / (real - random): **{t['ratio']:.2f}** "
                  f"(95% interval [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}])."]
    if rep.get("equal_data"):
        e = rep["equal_data"]
        lines += ["", f"Equal real data: the world model and heads were trained on {e['steps']} real steps "
                  f"({e['episodes']} episodes of {', '.join(e['datasets'])}); the `real_equal_data` row is PPO given "
                  "only those."]
    if rep.get("equal_real_data"):
        e = rep["equal_real_data"]
        lines += [f"At equal real data ({e['real_steps']} real steps): dream - model-free = {e['difference']:.3f} "
                  f"(95% interval [{e['difference_ci95'][0]:.3f}, {e['difference_ci95'][1]:.3f}])."]
    lines += diagnosis_markdown(s)
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, spec: str = "{:.2f}") -> str:
    return "n/a" if x is None else spec.format(x)


def diagnosis_markdown(settings: dict[str, Any]) -> list[str]:
    """Where transfer is lost: one row per agent with diagnostics (benchmarks.transfer)."""
    rows = []
    for name in ("real", "dream"):
        for run in settings.get(name, {}).get("runs", []):
            d = run.get("diagnose")
            if not d:
                continue
            h, f, c = d["heads_on_real"], d["dream_follow"], d["coverage"]
            psnr = f.get("psnr_at") or []
            at = " / ".join(_fmt(psnr[k - 1], "{:.1f}") for k in (1, 8, 16, 32) if k <= len(psnr))
            rows.append(f"| {name} {run['seed']} | {_fmt(h['pickup']['recall'])} ({h['pickup']['real']}) | "
                        f"{_fmt(h['pickup']['precision'])} | {_fmt(h['termination']['recall'])} "
                        f"({h['termination']['real']}) | {at} | {_fmt(f.get('pickup_recall'))} "
                        f"(+{f.get('dream_pickups_unmatched', 0)}) | {_fmt(c['agent']['pickups_per_1000'], '{:.1f}')} / "
                        f"{_fmt(c.get('dataset', {}).get('pickups_per_1000'), '{:.1f}')} |")
    if not rows:
        return []
    return ["", "## Where transfer is lost (each agent's own real-game episodes)", "",
            "| agent | heads: pickup recall (real pickups) | pickup precision | end recall (real ends) | "
            "dream PSNR at step 1 / 8 / 16 / 32 (dB) | dream pickups matched (+ unmatched) | "
            "pickups per 1,000 steps: agent / dataset |", "|---|---|---|---|---|---|---|", *rows]


def render_curve(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in rep["settings"].items():
        for i, run in enumerate(v.get("runs", [])):
            if run["curve"]:
                xs = [p["timesteps"] for p in run["curve"]]
                ax.plot(xs, [p["real_return"] for p in run["curve"]], color=f"C{list(rep['settings']).index(name)}",
                        alpha=0.8, label=name if i == 0 else None)
    ax.axhline(rep["settings"]["random"]["mean"], color="grey", ls="--", label="random")
    ax.set_xlabel("env steps in the training place")
    ax.set_ylabel("mean real-game return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rl", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="report JSON (a .md table and a learning-curve .png beside it)")
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--quick", action="store_true", help="the protocol at toy sizes (a check, not a measurement)")
    p.add_argument("--only", choices=["real", "dream", "online"], default=None,
                   help="train only this setting (online: whatever online.enabled says)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dream.steps=1 (repeatable; the report records it)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--agents", default="runs/rl_agents", help="folder for the trained agents (SB3 .zip)")
    p.add_argument("--resume", action="store_true",
                   help="keep the agents an interrupted run of the same config already wrote to --out (the report "
                        "is rewritten after every agent) and train only the rest")
    a = p.parse_args(argv)
    import torch

    from world.io import atomic_write_json, atomic_write_text, git_commit
    from world.paths import ensure_writable

    if a.threads:
        torch.set_num_threads(a.threads)
    from model.io import ConfigError
    from trainer.config import parse_overrides

    try:
        overrides = parse_overrides(a.overrides)
    except ConfigError as e:
        raise BenchmarkError(str(e)) from None
    cfg = load_rl_config(a.config, a.quick, overrides)
    out = ensure_writable(a.out, "the report (--out)")
    rep: dict[str, Any] = {"world": cfg.world, "config": asdict(cfg), "quick": a.quick, "git_commit": git_commit(),
                           "command": "python -m benchmarks.rl " + " ".join(sys.argv[1:] if argv is None else argv),
                           "settings": {}}
    from world import make_world

    probe = make_world(cfg.world)
    n_act = probe.num_actions
    probe.close()
    rng = np.random.default_rng(0)
    random = scores(cfg, lambda o: int(rng.integers(n_act)), cfg.eval.episodes)
    rep["settings"]["random"] = {"mean": float(np.mean(random)), "ci95": summarize([random])["ci95"],
                                 "returns": random}
    places = ["real", "dream"] if a.only is None else [a.only] if a.only != "online" else []
    jobs = [(pl, cfg.train.timesteps) for pl in places]
    if cfg.online.enabled and a.only in (None, "online"):
        jobs.append(("online", cfg.train.timesteps))
    if cfg.equal_data and a.only is None:
        eq = world_model_real_steps(cfg.dream.checkpoint)
        rep["equal_data"] = eq
        jobs.append(("real_equal_data", eq["steps"]))
    from model.dreamer import Dreamer

    dreamer = Dreamer.load(cfg.dream.checkpoint, sampler="consistency", steps=cfg.dream.steps, heads=cfg.dream.heads)
    dataset = trained_on(dreamer.config)
    agents = Path(a.agents)
    done = previous_runs(out, rep) if a.resume else {}
    rep["partial_runs"] = {}
    for name, steps in jobs:
        runs = []
        for seed in cfg.train.seeds:
            kept = done.get((name, seed, steps))
            if kept is not None:
                runs.append(kept)
                rep["partial_runs"].setdefault(name, []).append(kept)
                print(f"[rl] {name} seed {seed}: kept from {out} (--resume)", flush=True)
                continue
            t0 = time.perf_counter()
            if name == "online":
                run, model = train_online_agent(cfg, seed)
            else:
                run, model = train_agent(cfg, "dream" if name == "dream" else "real", seed, steps)
            agents.mkdir(parents=True, exist_ok=True)
            model.save(agents / f"{name}_seed{seed}.zip")
            run["agent"] = str(agents / f"{name}_seed{seed}.zip")
            if name in ("real", "dream") and dreamer.heads is not None:
                run["diagnose"] = diagnose(cfg, dreamer, lambda o, m=model: int(m.predict(o, deterministic=False)[0]),
                                           dataset)
            runs.append(run)
            rep["partial_runs"].setdefault(name, []).append(run)
            atomic_write_json(out, {**rep, "complete": False}, indent=1)  # a killed run loses at most one agent
            print(f"[rl] {name} seed {seed}: mean real return {run['mean']:.3f} (random {np.mean(random):.3f}); "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        rep["settings"][name] = {"timesteps": steps, **summarize([r["returns"] for r in runs]),
                                 "train_wall_s": round(sum(r["train_wall_s"] for r in runs), 1), "runs": runs}
    if "real" in rep["settings"] and "dream" in rep["settings"]:
        rep["transfer"] = transfer_ratio([r["returns"] for r in rep["settings"]["dream"]["runs"]],
                                         [r["returns"] for r in rep["settings"]["real"]["runs"]], random)
    rep.update(headline(rep, cfg))
    rep.pop("partial_runs")
    rep["complete"] = True
    atomic_write_json(out, rep, indent=1)
    if "transfer" in rep:
        atomic_write_text(out.with_suffix(".md"), render_markdown(rep))
        render_curve(rep, out.with_suffix(".png"))
        print(render_markdown(rep))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
