"""``python -m trainer.evaluate``: the fidelity protocol of docs/EVALUATION.md.

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
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.autoencoder import Autoencoder, from_uint8
from model.precision import resolve
from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer
from trainer import metrics as M
from world.io import atomic_write_json, git_commit

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
        from trainer.data import load_episodes

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
             sampler: SamplerConfig, seed: int, precision: str = "auto") -> np.ndarray:
    """Open-loop rollout: context uint8 (B, C, H, W, 3), actions (B, C + T) in the clip
    convention -> generated uint8 frames (B, T, H, W, 3). The model computes in its own weights'
    precision (:func:`inference_model` casts a copy once); with an fp32 model and ``precision``
    resolving to bf16, under bf16 autocast (a model being trained)."""
    B, C = context.shape[:2]
    T = actions.shape[1] - C
    K = model.cfg.block_frames
    gen = torch.Generator().manual_seed(seed)
    sess = Session(model, B, generator=gen)
    acts = torch.from_numpy(actions).long()
    out = []
    own = next(model.parameters()).dtype
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=own == torch.float32 and resolve(precision) == "bf16"):
        sess.prime(ae.encode_frames(context), acts[:, :C])
        t = C
        while t < C + T:
            k = min(K, C + T - t)
            out.append(sess.generate(acts[:, t:t + k], sampler).float())
            t += k
    return ae.decode_frames(torch.cat(out, 1))


# ------------------------------------------------------------------ metrics
def _mean(xs: Sequence[float]) -> float | None:
    v = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _psnr_at(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Mean over episodes of per-frame PSNR, per horizon: a, b (M, H, ...)."""
    return [float(M.psnr_batch(a[:, h], b[:, h]).mean()) for h in range(a.shape[1])]


def _masked_psnr_at(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> list[float | None]:
    out = []
    for h in range(a.shape[1]):
        vals = [M.psnr(a[m, h], b[m, h], masks[m, h]) for m in range(a.shape[0]) if masks[m, h].any()]
        out.append(_mean(vals))
    return out


def _player_stats(frames: np.ndarray, real_pos: np.ndarray, find_player) -> tuple[list[float], list[float | None]]:
    found_at, err_at = [], []
    for h in range(frames.shape[1]):
        found, errs = 0, []
        for m in range(frames.shape[0]):
            p = find_player(frames[m, h])
            if p is not None:
                found += 1
                if np.isfinite(real_pos[m, h]).all():
                    errs.append(float(np.hypot(p[0] - real_pos[m, h, 0], p[1] - real_pos[m, h, 1])))
        found_at.append(found / frames.shape[0])
        err_at.append(_mean(errs))
    return found_at, err_at


def creature_stats(frames: np.ndarray, real_pos: list[list[np.ndarray]], find_creatures
                   ) -> tuple[list[int], list[int]]:
    """Per horizon: (creatures found in ``frames`` at the real positions, creatures visible in the real frame)."""
    found_at, vis_at = [], []
    for h in range(frames.shape[1]):
        found = vis = 0
        for m in range(frames.shape[0]):
            pos = real_pos[m][h]
            if len(pos):
                vis += len(pos)
                found += int(find_creatures(frames[m, h], pos).sum())
        found_at.append(found)
        vis_at.append(vis)
    return found_at, vis_at


def _idm_predict(idm, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    from trainer.stages.idm import predict_actions

    return predict_actions(idm, prev.reshape(-1, *prev.shape[-3:]), cur.reshape(-1, *cur.shape[-3:]))


def idm_features(idm, frames: np.ndarray) -> np.ndarray:
    flat = frames.reshape(-1, *frames.shape[-3:])
    with torch.no_grad():
        return torch.cat([idm.features(from_uint8(torch.from_numpy(flat[i:i + 256])))
                          for i in range(0, len(flat), 256)]).numpy().astype(np.float64)


def fidelity(real: Rollouts, gen: np.ndarray, C: int, ae: Autoencoder, idm, world: str,
             num_actions: int) -> dict[str, Any]:
    """Every fidelity field of docs/EVALUATION.md section 3 for generated frames ``gen`` (M, H, ...)."""
    Hn = gen.shape[1]
    h16 = min(HORIZON, Hn)
    tgt = real.frames[:, C:C + Hn]
    last = real.frames[:, C - 1]
    copy = np.repeat(last[:, None], Hn, 1)
    recon = reconstruct(ae, tgt)
    copy_ae = np.repeat(reconstruct(ae, last)[:, None], Hn, 1)
    r: dict[str, Any] = {}
    r["psnr_at"] = _psnr_at(gen, tgt)
    r["psnr_mean_16"] = float(np.mean(r["psnr_at"][:h16]))
    r["ssim_at"] = [float(np.mean([M.ssim(gen[m, h], tgt[m, h]) for m in range(len(gen))])) for h in range(h16)]
    r["ssim_mean_16"] = float(np.mean(r["ssim_at"]))
    r["copy_last_psnr_at"] = _psnr_at(copy, tgt)
    r["copy_last_psnr_mean_16"] = float(np.mean(r["copy_last_psnr_at"][:h16]))
    r["copy_last_ssim_mean_16"] = float(np.mean([M.ssim(copy[m, h], tgt[m, h]) for m in range(len(gen))
                                                 for h in range(h16)]))
    r["copy_ae_psnr_at"] = _psnr_at(copy_ae, tgt)
    r["ae_ceiling_psnr_at"] = _psnr_at(recon, tgt)
    r["ae_ceiling_psnr"] = float(np.mean(r["ae_ceiling_psnr_at"][:h16]))
    r["ae_sharpness_ratio"] = M.sharpness_ratio(recon[:, :h16].reshape(-1, *tgt.shape[-3:]),
                                                tgt[:, :h16].reshape(-1, *tgt.shape[-3:]))
    denom = r["ae_ceiling_psnr_at"][0] - r["copy_ae_psnr_at"][0]
    r["gap_closed_1"] = float((r["psnr_at"][0] - r["copy_ae_psnr_at"][0]) / denom) if abs(denom) > 1e-6 else None
    # changed region: pixels where the real or the generated frame differs from the last context frame
    ch = np.stack([[M.changed_mask(tgt[m, h], gen[m, h], last[m]) for h in range(Hn)] for m in range(len(gen))])
    ch_copy = np.stack([[M.changed_mask(tgt[m, h], copy[m, h], last[m]) for h in range(Hn)] for m in range(len(gen))])
    r["changed_psnr_at"] = _masked_psnr_at(gen, tgt, ch)
    r["changed_psnr_mean_16"] = _mean(r["changed_psnr_at"][:h16])
    r["copy_last_changed_psnr_mean_16"] = _mean(_masked_psnr_at(copy, tgt, ch_copy)[:h16])
    r["changed_fraction_16"] = float(ch[:, :h16].mean())
    # seen region: pixels showing world content visible in some context frame
    if real.content is not None:
        seen = np.stack([np.isin(real.content[m, C:C + Hn], np.unique(real.content[m, :C])) for m in range(len(gen))])
        r["seen_psnr_at"] = _masked_psnr_at(gen, tgt, seen)
        r["seen_psnr_mean_16"] = _mean(r["seen_psnr_at"][:h16])
        r["copy_last_seen_psnr_mean_16"] = _mean(_masked_psnr_at(copy, tgt, seen)[:h16])
        r["seen_fraction_16"] = float(seen[:, :h16].mean())
    else:
        r["seen_psnr_at"] = r["seen_psnr_mean_16"] = r["copy_last_seen_psnr_mean_16"] = None
    from world import creature_finder, player_finder

    find_player, find_creatures = player_finder(world), creature_finder(world)
    if find_player is not None and real.player is not None:
        found, err = _player_stats(gen, real.player[:, C:C + Hn], find_player)
        r["player_found_at"], r["player_pos_err_at"] = found, err
        r["player_found_16"] = float(np.mean(found[:h16]))
        r["player_pos_err_16"] = _mean(err[:h16])
        ae_found, _ = _player_stats(recon[:, :h16], real.player[:, C:C + h16], find_player)
        r["ae_player_found"] = float(np.mean(ae_found))
    else:
        r["player_found_16"] = r["player_pos_err_16"] = r["ae_player_found"] = None
    if find_creatures is not None and real.creatures:
        # the moving creatures: the share of the real ones (from the world's state) drawn at their true
        # position in the generated frame, per horizon, and over the first 8 steps
        found_at, vis_at = creature_stats(gen, [ep[C:C + Hn] for ep in real.creatures], find_creatures)
        r["creatures_found_at"] = [None if v == 0 else f / v for f, v in zip(found_at, vis_at)]
        r["creatures_found_8"] = float(sum(found_at[:8]) / sum(vis_at[:8])) if sum(vis_at[:8]) else None
        ae_f, ae_v = creature_stats(recon[:, :min(8, Hn)], [ep[C:C + min(8, Hn)] for ep in real.creatures],
                                    find_creatures)
        r["ae_creatures_found_8"] = float(sum(ae_f) / sum(ae_v)) if sum(ae_v) else None
    else:
        r["creatures_found_at"], r["creatures_found_8"], r["ae_creatures_found_8"] = None, None, None
    lap_g = M.laplacian_energy(gen.reshape(-1, *gen.shape[-3:])).reshape(gen.shape[:2])
    lap_r = M.laplacian_energy(tgt.reshape(-1, *tgt.shape[-3:])).reshape(tgt.shape[:2])
    r["sharpness_ratio_at"] = [float(lap_g[:, h].mean() / max(lap_r[:, h].mean(), 1e-12)) for h in range(Hn)]
    r["sharpness_ratio_16"] = float(lap_g[:, :h16].mean() / max(lap_r[:, :h16].mean(), 1e-12))
    # controls and rules: the IDM's reading of generated transitions vs the real effective actions
    if idm is not None:
        prev_g = np.concatenate([last[:, None], gen[:, :-1]], 1)
        prev_r = real.frames[:, C - 1:C + Hn - 1]
        true = real.effective[:, C:C + Hn].reshape(-1)
        pred_g = _idm_predict(idm, prev_g, gen)
        pred_r = _idm_predict(idm, prev_r, tgt)
        r["action_accuracy"] = float((pred_g == true).mean())
        r["idm_real_accuracy"] = float((pred_r == true).mean())
        # the autoencoder's ceiling: the IDM on reconstructions of the real transitions
        prev_ae = np.concatenate([reconstruct(ae, last)[:, None], recon[:, :-1]], 1)
        r["idm_ae_accuracy"] = float((_idm_predict(idm, prev_ae, recon) == true).mean())
        conf = np.zeros((num_actions, num_actions), np.int64)
        np.add.at(conf, (true, pred_g), 1)
        r["action_confusion"] = conf.tolist()
        # where the actions are lost: transitions whose key press changed vs those that held it
        # (in a game with momentum, a held key is mostly visible in the context's motion already)
        switch = (real.actions[:, C:C + Hn] != real.actions[:, C - 1:C + Hn - 1]).reshape(-1)
        r["switch_share"] = float(switch.mean())
        for name, sel in (("switch", switch), ("hold", ~switch)):
            r[f"action_accuracy_{name}"] = float((pred_g == true)[sel].mean()) if sel.any() else None
            r[f"idm_real_accuracy_{name}"] = float((pred_r == true)[sel].mean()) if sel.any() else None
    else:
        r["action_accuracy"] = r["idm_real_accuracy"] = r["idm_ae_accuracy"] = r["action_confusion"] = None
        for k in ("switch_share", "action_accuracy_switch", "action_accuracy_hold", "idm_real_accuracy_switch",
                  "idm_real_accuracy_hold"):
            r[k] = None
    return r


ADVENTURE_PAIRS = ((4, 3), (3, 4), (2, 1), (1, 2))  # RIGHT/LEFT, LEFT/RIGHT, DOWN/UP, UP/DOWN


def revisit_pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """(out, back) action pairs of opposite moves found among a world's action names (RIGHT and
    LEFT, MOVE_RIGHT and MOVE_LEFT, TURN_LEFT and TURN_RIGHT, UP and DOWN, ...); () if none."""
    idx = {n.upper(): i for i, n in enumerate(names)}
    pairs = []
    for a, b in (("RIGHT", "LEFT"), ("DOWN", "UP"), ("FORWARD", "BACKWARD")):
        for pre in ("", "MOVE_", "TURN_"):
            if pre + a in idx and pre + b in idx:
                pairs += [(idx[pre + a], idx[pre + b]), (idx[pre + b], idx[pre + a])]
                break
    return tuple(pairs)


def revisit_script(i: int, context: int, leg: int = 16,
                   pairs: Sequence[tuple[int, int]] = ADVENTURE_PAIRS) -> list[int]:
    """Context moves (explorer-free: NOOPs), then ``leg`` steps one way and ``leg`` back."""
    go, back = pairs[i % len(pairs)]
    return [0] * (context - 1) + [go] * leg + [back] * leg


# ------------------------------------------------------------------ the command
def evaluate(checkpoint: str, world: str = "adventure", episodes: int = 16, context: int = 4,
             horizon: int = HORIZON, sampler: SamplerConfig | None = None, seed: int = 0,
             actions_file: str | None = None, idm_path: str | None = None, long_episodes: int = 4,
             long_horizon: int = 256, revisit_episodes: int = 4, precision: str = "auto",
             first_seed: int = EVAL_SEED_BASE, rollouts: str | None = None,
             strip: str | None = None) -> dict[str, Any]:
    from trainer.checkpoint import file_hash
    from trainer.latents import load_autoencoder
    from trainer.models import default_idm, load_idm, load_world_model, resolve_full

    t0 = time.time()
    model, cfg, model_id = load_world_model(checkpoint)
    ae, ae_id = load_autoencoder(cfg["autoencoder"])
    precision = resolve(precision)
    model = inference_model(model, precision)
    weights_file, _ = resolve_full(checkpoint)
    step = None
    if (weights_file.parent / "meta.json").is_file():
        step = json.loads((weights_file.parent / "meta.json").read_text()).get("step")
    elif weights_file.suffix == ".safetensors" and weights_file.with_suffix(".yaml").is_file():
        import yaml

        step = (yaml.safe_load(weights_file.with_suffix(".yaml").read_text()) or {}).get("steps")
    dataset = cfg.get("data", {}).get("dataset")
    from world.dataset import recorded_settings

    settings: dict[str, Any] = recorded_settings(dataset, world)
    settings.update(cfg.get("world_settings", {}) or {})
    if sampler is None:
        sampler = SamplerConfig(kind="euler", steps=48, cfg=1.0, shift=float(cfg.get("loss", {}).get("shift", 3.0)))
    K = model.cfg.block_frames
    if context % K:
        raise EvaluationError(f"--context {context} must be a multiple of the model's block size {K}")
    idm = None
    idm_src = idm_path or default_idm(world)
    idm_id = None
    if idm_src is not None:
        idm, idm_id = load_idm(idm_src)
    from world import make_world

    names = list(make_world(world, **settings).action_names)
    script = parse_actions(actions_file, names) if actions_file else None
    if script is not None and len(script) < context - 1 + horizon:
        raise EvaluationError(f"action script has {len(script)} actions; need context-1+horizon = "
                              f"{context - 1 + horizon}")
    seeds_used: list[int] = []
    recorded = RecordedRollouts(rollouts) if rollouts else None
    if recorded is not None:
        if script is not None:
            raise EvaluationError("--actions and --rollouts exclude each other: recorded rollouts have their own actions")
        revisit_episodes = 0  # the revisit test needs scripted actions in the real game

    def rollout_pair(n: int, length: int, start: int, **kw) -> tuple[Rollouts, np.ndarray]:
        real = recorded.take(n, length) if recorded is not None else play_real(world, settings, n, length, start, **kw)
        check_heldout(real.seeds, dataset)
        seeds_used.extend(real.seeds)
        g = generate(model, ae, real.frames[:, :context], real.actions, sampler, seed, precision)
        return real, g

    t_gen = time.time()
    real, gen = rollout_pair(episodes, context + horizon, first_seed, script=script)
    report = fidelity(real, gen, context, ae, idm, world, len(names))
    if strip:
        write_strip(real.frames[:, context - 1:], gen, strip)
        report["strip"] = str(strip)
    report["gen_wall_s"] = time.time() - t_gen
    # drift: Fréchet distance (IDM features) of generated vs real frames early and late in long rollouts
    report["frechet_early"] = report["frechet_late"] = None
    if long_episodes and idm is not None:
        lreal, lgen = rollout_pair(long_episodes, context + long_horizon, first_seed + 10_000)
        long_horizon = lreal.frames.shape[1] - context
        w = min(32, long_horizon // 2)
        lt = lreal.frames[:, context:]
        report["frechet_early"] = M.frechet_distance(idm_features(idm, lgen[:, :w]), idm_features(idm, lt[:, :w]))
        report["frechet_late"] = M.frechet_distance(idm_features(idm, lgen[:, -w:]), idm_features(idm, lt[:, -w:]))
        report["frechet_frames"] = [[1, w], [long_horizon - w + 1, long_horizon]]
        report["long_psnr_late"] = float(np.mean(M.psnr_batch(lgen[:, -w:].reshape(-1, *lt.shape[-3:]),
                                                              lt[:, -w:].reshape(-1, *lt.shape[-3:]))))
    report["revisit_psnr"] = report["copy_last_revisit_psnr"] = None
    pairs = revisit_pairs(names)
    if revisit_episodes and pairs:
        rreal, rgen = rollout_pair(revisit_episodes, context + 32, first_seed + 20_000,
                                   script_fn=lambda i: revisit_script(i, context, pairs=pairs))
        report["revisit_psnr"] = float(M.psnr_batch(rgen[:, -1], rreal.frames[:, -1]).mean())
        report["copy_last_revisit_psnr"] = float(M.psnr_batch(rreal.frames[:, context - 1],
                                                               rreal.frames[:, -1]).mean())
    report["sampler"] = {"kind": sampler.kind, "steps": sampler.steps, "cfg": sampler.cfg, "shift": sampler.shift,
                         "first_frame_steps": sampler.first_frame_steps}
    report["protocol"] = {"world": world, "settings": settings, "episodes": episodes, "context": context,
                          "horizon": horizon, "long_episodes": long_episodes, "long_horizon": long_horizon,
                          "revisit_episodes": revisit_episodes, "seed": seed, "eval_seeds": seeds_used,
                          "policies": real.policies, "action_script": script, "precision": precision,
                          "policy_note": "explorer (even episodes) and random (odd) from held-out seeds "
                                         f">= {EVAL_SEED_BASE}; revisit: NOOP context then 16 steps out, 16 back"
                                         if recorded is None else
                                         f"recorded rollouts from {rollouts} (the game has no get_state/set_state): "
                                         "the first frames of each held-out episode as context, its recorded "
                                         "actions, its recorded continuation as ground truth; no revisit test",
                          "real_rollouts": "played" if recorded is None else "recorded", "rollouts_dataset": rollouts}
    report["provenance"] = {"checkpoint": str(checkpoint), "weights": str(weights_file), "step": step,
                            "weights_sha1": file_hash(weights_file), "model_id": model_id,
                            "autoencoder": str(cfg["autoencoder"]), "autoencoder_id": ae_id,
                            "idm": str(idm_src) if idm_src else None, "idm_id": idm_id,
                            "config": cfg, "git_commit": git_commit(),
                            "command": " ".join(["python -m trainer.evaluate", *sys.argv[1:]]),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "wall_s": time.time() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return report


# ------------------------------------------------------------------ rendering
STRIP_HORIZONS = (1, 2, 4, 8, 12, 16)


def write_strip(real: np.ndarray, gen: np.ndarray, path: str | Path, episodes: int = 4, scale: int = 2) -> None:
    """A PNG to look at (PSNR alone rewards blur): per episode a row of real frames and below it
    the generated ones, at horizons 1, 2, 4, 8, 12, 16; the first column is the last context
    frame in both rows. ``real``: (M, 1 + H, ...) from the last context frame; ``gen``: (M, H, ...)."""
    from PIL import Image

    hs = [h for h in STRIP_HORIZONS if h <= gen.shape[1]]
    rows = []
    for m in range(min(episodes, len(gen))):
        rows.append(np.concatenate([real[m, 0]] + [real[m, h] for h in hs], 1))
        rows.append(np.concatenate([real[m, 0]] + [gen[m, h - 1] for h in hs], 1))
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pair(report: dict[str, Any], a: str, b: str) -> str | None:
    """'x / y' of two report fields (older reports lack them: None)."""
    if report.get(a) is None and report.get(b) is None:
        return None
    return f"{_fmt(report.get(a))} / {_fmt(report.get(b))}"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["sampler"]
    span = f"1-{min(HORIZON, len(report['psnr_at']))}"  # the *_16 fields average the first 16 steps at most
    rows = [
        (f"PSNR mean {span} (dB)", report["psnr_mean_16"], report["copy_last_psnr_mean_16"], report["ae_ceiling_psnr"]),
        (f"SSIM mean {span}", report["ssim_mean_16"], report.get("copy_last_ssim_mean_16"), None),
        (f"changed-region PSNR {span}", report["changed_psnr_mean_16"], report["copy_last_changed_psnr_mean_16"], None),
        (f"seen-region PSNR {span}", report["seen_psnr_mean_16"], report["copy_last_seen_psnr_mean_16"], None),
        (f"player found {span}", report["player_found_16"], None, report.get("ae_player_found")),
        ("creatures found 1-8", report.get("creatures_found_8"), None, report.get("ae_creatures_found_8")),
        (f"player position error {span} (px)", report["player_pos_err_16"], None, None),
        (f"sharpness ratio {span}", report["sharpness_ratio_16"], None, report["ae_sharpness_ratio"]),
        ("action accuracy (IDM)", report["action_accuracy"], None, report["idm_real_accuracy"]),
        ("action accuracy on AE reconstructions", report.get("idm_ae_accuracy"), None, report["idm_real_accuracy"]),
        ("action accuracy, key changed / held", _pair(report, "action_accuracy_switch", "action_accuracy_hold"),
         None, _pair(report, "idm_real_accuracy_switch", "idm_real_accuracy_hold")),
        ("gap closed at step 1", report["gap_closed_1"], None, None),
        ("Fréchet early / late", f"{_fmt(report['frechet_early'])} / {_fmt(report['frechet_late'])}", None, None),
        ("revisit PSNR (dB)", report["revisit_psnr"], report["copy_last_revisit_psnr"], None),
    ]
    p = report["protocol"]
    out = [f"# Evaluation: {report['provenance']['checkpoint']}", "",
           f"Sampler {s['kind']} {s['steps']} steps, CFG {s['cfg']}, shift {s['shift']}; {p['episodes']} episodes of "
           f"{p['world']}, {p['context']} context frames, horizon {p['horizon']}; seeds from {min(p['eval_seeds'])}.",
           "", "| measure | model | copy last frame | ceiling (AE / real) |", "|---|---|---|---|"]
    out += [f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} |" for name, a, b, c in rows]
    out += ["", "PSNR per horizon step: " + ", ".join(f"{v:.1f}" for v in report["psnr_at"]), "",
            f"Command: `{report['provenance']['command']}` (git {report['provenance']['git_commit']})", ""]
    return "\n".join(out)


def render_plot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.arange(1, len(report["psnr_at"]) + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(h, report["psnr_at"], label="model")
    ax[0].plot(h, report["copy_last_psnr_at"], label="copy last frame", ls="--")
    ax[0].plot(h, report["ae_ceiling_psnr_at"], label="autoencoder ceiling", ls=":")
    if report.get("changed_psnr_at"):
        ax[0].plot(h, [np.nan if v is None else v for v in report["changed_psnr_at"]], label="model, changed region")
    ax[0].set_xlabel("horizon (frames)")
    ax[0].set_ylabel("PSNR (dB)")
    ax[0].legend(fontsize=7)
    ax[1].plot(h, report["sharpness_ratio_at"], label="sharpness ratio")
    if report.get("player_found_at"):
        ax[1].plot(h, report["player_found_at"], label="player found")
    ax[1].axhline(1.0, color="grey", lw=0.5)
    ax[1].set_xlabel("horizon (frames)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
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
    from trainer.checkpoint import CheckpointError
    from world.core import WorldError

    try:
        from trainer.models import resolve_full

        for name in ("episodes", "horizon", "context", "long_horizon"):
            if getattr(args, name) < 1:
                raise EvaluationError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        for name in ("long_episodes", "revisit_episodes"):
            if getattr(args, name) < 0:
                raise EvaluationError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        from world.paths import ensure_writable

        ensure_writable(args.out, "the report (--out)")  # before minutes of evaluation, not after
        card = resolve_full(args.checkpoint)[1]
        sampler = SamplerConfig.from_card(card, args.sampler, args.steps, args.first_frame_steps, args.cfg, args.shift)
        report = evaluate(args.checkpoint, args.world, args.episodes, args.context, args.horizon, sampler,
                          args.seed, args.actions, args.idm, args.long_episodes, args.long_horizon,
                          args.revisit_episodes, args.precision, rollouts=args.rollouts, strip=args.strip)
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
