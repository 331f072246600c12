"""Real and generated rollouts of the fidelity protocol (docs/EVALUATION.md sections 1-2).

The real world is played by an evaluation policy on held-out seeds (:func:`play_real`; or a recorded
held-out dataset, :class:`RecordedRollouts`, for games that cannot be replayed); the model gets the
real context frames and the same actions and generates open loop (:func:`generate`).
Evaluation seeds start at :data:`EVAL_SEED_BASE`; :func:`check_heldout` asserts that no training
episode used one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.autoencoder import Autoencoder
from model.precision import resolve
from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer

EVAL_SEED_BASE = 1_000_000
HORIZON = 16


class EvaluationError(RuntimeError):
    pass


# ------------------------------------------------------------------ real rollouts
@dataclass
class Rollouts:
    """Real episodes in the clip convention: ``actions[:, i]`` leads to ``frames[:, i]``."""
    frames: np.ndarray        # (M, T, H, W, 3) uint8
    actions: np.ndarray       # (M, T) int64, actions[:, 0] = 0
    effective: np.ndarray     # (M, T)
    player: np.ndarray        # (M, T, 2) float, nan where unknown
    content: np.ndarray | None  # (M, T, H, W) int64 world content ids, or None
    seeds: list[int]
    policies: list[str]
    creatures: list[list[np.ndarray]] | None = None  # per episode and frame: (N, 2) visible creature centres


def check_heldout(seeds: Sequence[int], dataset: str | Path | None) -> None:
    """Evaluation seeds must never appear in training data (docs/EVALUATION.md section 1)."""
    bad = [s for s in seeds if s < EVAL_SEED_BASE]
    if bad:
        raise EvaluationError(f"evaluation seeds must be >= {EVAL_SEED_BASE} (the held-out range), got {bad[:5]}")
    if dataset is None or not (Path(dataset) / "data" / "metadata.json").is_file():
        return
    from world.dataset import read_metadata

    train_seeds = {s for s in read_metadata(dataset).get("episode_seeds", []) if s is not None}
    overlap = sorted(train_seeds & set(seeds))
    assert not overlap, f"evaluation seeds {overlap[:5]} appear in the training dataset {dataset}"
    assert all(s < EVAL_SEED_BASE for s in train_seeds), (
        f"the training dataset {dataset} uses seeds >= {EVAL_SEED_BASE}, the range reserved for evaluation")


def parse_actions(path: str | Path, names: Sequence[str]) -> list[int]:
    """An action script: JSON list (or {"actions": [...]}) of action names or indices."""
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"action script {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EvaluationError(f"action script {p} is not JSON ({e}); give a list like [\"UP\", \"LEFT\", 0]") from e
    if isinstance(data, dict):
        data = data.get("actions")
    if not isinstance(data, list) or not data:
        raise EvaluationError(f"action script {p} must be a non-empty JSON list of actions or {{\"actions\": [...]}}")
    out = []
    for a in data:
        if isinstance(a, str) and a.upper() in names:
            out.append(list(names).index(a.upper()))
        elif isinstance(a, int) and 0 <= a < len(names):
            out.append(a)
        else:
            raise EvaluationError(f"action script {p}: invalid action {a!r}; valid: {list(names)} or 0..{len(names) - 1}")
    return out


def play_real(world_name: str, settings: dict[str, Any], n: int, length: int, first_seed: int,
              script: Sequence[int] | None = None, script_fn=None) -> Rollouts:
    """Play ``n`` full episodes of ``length`` frames from consecutive held-out seeds.

    Episode i uses the explorer policy (even i) or the random policy (odd i), unless a script
    gives the actions after the reset (``script`` for all, or ``script_fn(i, context_len)``).
    Episodes the world ends early are skipped (the next seed is taken).
    """
    from world import make_world
    from world.policies import make_policy

    world = make_world(world_name, **settings)
    frames, acts, effs, players, contents, seeds, pols = [], [], [], [], [], [], []
    creatures: list[list[np.ndarray]] = []
    where = getattr(world, "creatures_frame_pos", None)  # the adventure's moving creatures, from its state
    seed = first_seed
    i = 0
    while len(frames) < n:
        if seed > first_seed + 20 * n + 100:
            raise EvaluationError(f"could not play {n} episodes of {length} frames: the world ends them early")
        kind = "explorer" if i % 2 == 0 else "random"
        plan = list(script) if script is not None else (script_fn(i) if script_fn else None)
        policy = None if plan is not None else make_policy(kind, world, seed=seed)
        if policy is not None:
            policy.reset(seed)
        f, info = world.reset(seed=seed)
        ep_f, ep_a, ep_e, ep_p, ep_c = [f], [0], [0], [info.get("player_pos")], [world.content_map()]
        ep_cr = [where()] if where else []
        ok = True
        for t in range(length - 1):
            a = plan[t] if plan is not None and t < len(plan) else (policy.act(f, info) if policy else 0)
            f, _r, term, trunc, info = world.step(a)
            ep_f.append(f)
            ep_a.append(int(a))
            ep_e.append(int(info.get("effective_action", a)))
            ep_p.append(info.get("player_pos"))
            ep_c.append(world.content_map())
            if where:
                ep_cr.append(where())
            if (term or trunc) and t < length - 2:
                ok = False
                break
        if ok:
            frames.append(np.stack(ep_f))
            acts.append(ep_a)
            effs.append(ep_e)
            players.append([p if p is not None else (math.nan, math.nan) for p in ep_p])
            if ep_c[0] is not None:
                contents.append(np.stack(ep_c))
            seeds.append(seed)
            pols.append("script" if plan is not None else kind)
            creatures.append(ep_cr)
        seed += 1
        i += 1
    world.close()
    return Rollouts(np.stack(frames), np.asarray(acts, np.int64), np.asarray(effs, np.int64),
                    np.asarray(players, np.float64), np.stack(contents) if len(contents) == n else None,
                    seeds, pols, creatures if where else None)


class RecordedRollouts:
    """Real rollouts read from a recorded held-out dataset, for games that cannot be replayed
    from a state (no ``get_state``/``set_state``, e.g. ViZDoom): the model gets the first C
    frames of a recorded episode and its recorded actions; the recording's continuation is the
    ground truth. Episodes are used in order, each once, as long as they are long enough."""

    def __init__(self, dataset: str | Path) -> None:
        from world.dataset import load_clip_episodes as load_episodes

        self.dataset = str(dataset)
        self.episodes = load_episodes(dataset)
        self.next = 0

    def take(self, n: int, length: int) -> Rollouts:
        frames, acts, effs, seeds = [], [], [], []
        while len(frames) < n and self.next < len(self.episodes):
            e = self.episodes[self.next]
            self.next += 1
            if len(e) >= length:
                frames.append(e.frames[:length])
                acts.append(e.actions[:length])
                effs.append(e.effective[:length])
                seeds.append(-1 if e.seed is None else int(e.seed))
        if len(frames) < n:
            long_enough = sum(len(e) >= length for e in self.episodes)
            raise EvaluationError(
                f"recorded rollouts {self.dataset}: need {n} more episodes of at least {length} frames, found "
                f"{len(frames)} ({long_enough} of its {len(self.episodes)} episodes are that long in all); record "
                f"more held-out episodes (python -m world.record ... --seed {EVAL_SEED_BASE}) or ask for fewer")
        return Rollouts(np.stack(frames), np.stack(acts), np.stack(effs), np.full((n, length, 2), np.nan),
                        None, seeds, ["recorded"] * n)


# ------------------------------------------------------------------ model rollouts
def reconstruct(ae: Autoencoder, frames: np.ndarray) -> np.ndarray:
    return ae.decode_frames(ae.encode_frames(frames))


def inference_model(model: FrameTransformer, precision: str) -> FrameTransformer:
    """The frozen world model in ``precision`` (auto, fp32 or bf16): itself in fp32, else a copy whose
    weights are cast (and on a CPU packed) once (see :mod:`model.precision`)."""
    from model.precision import DTYPES, cast_for_inference

    precision = resolve(precision)
    if precision == "fp32" or next(model.parameters()).dtype != torch.float32:
        return model
    import copy

    return cast_for_inference(copy.deepcopy(model), DTYPES[precision])


def generate(model: FrameTransformer, ae: Autoencoder, context: np.ndarray, actions: np.ndarray,
             sampler: SamplerConfig, seed: int, precision: str = "auto", hidden: int = 0,
             taken: np.ndarray | None = None) -> np.ndarray:
    """Open-loop rollout: context uint8 (B, C, H, W, 3), actions (B, C + T) in the clip
    convention -> generated uint8 frames (B, T - hidden, H, W, 3). The model computes in its own weights'
    precision (:func:`inference_model` casts a copy once); with an fp32 model and ``precision``
    resolving to bf16, under bf16 autocast (a model being trained).

    ``hidden``: the first frames after the context enter the cache as pure noise at level 1, told
    to the model (only their actions are real), and are not returned: what the model draws after
    them comes from the context frames before them (the memory test of the revisit).

    ``taken`` (B, C + T) bool: which of the real frames' pressed moves the game took (its effective
    actions), for the context and hidden frames of a ``pose_taken`` model; the frames it generates
    are placed by its own taken head."""
    B, C = context.shape[:2]
    T = actions.shape[1] - C
    if not 0 <= hidden < T:
        raise ValueError(f"hidden must be in [0, {T}) frames for {T} frames after the context, got {hidden}")
    K = model.cfg.block_frames
    gen = torch.Generator().manual_seed(seed)
    sess = Session(model, B, generator=gen)
    acts = torch.from_numpy(actions).long()
    out = []
    own = next(model.parameters()).dtype
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=own == torch.float32 and resolve(precision) == "bf16"):
        tk = None if taken is None else torch.from_numpy(np.asarray(taken, bool))
        sess.prime(ae.encode_frames(context), acts[:, :C], taken=None if tk is None else tk[:, :C])
        t = C
        if hidden:
            c = model.cfg
            noise = torch.randn(B, hidden, c.latent_channels, c.latent_size, c.latent_size, generator=gen)
            sess.write(noise, acts[:, C:C + hidden], sigma=1.0, taken=None if tk is None else tk[:, C:C + hidden])
            t += hidden
        while t < C + T:
            k = min(K, C + T - t)
            out.append(sess.generate(acts[:, t:t + k], sampler).float())
            t += k
    return ae.decode_frames(torch.cat(out, 1))
