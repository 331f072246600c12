"""Every fidelity field of docs/EVALUATION.md section 3 for one set of rollouts (:func:`fidelity`), the
revisit test's scripts, and :func:`evaluate`: the whole protocol for one checkpoint."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evaluation import metrics as M
from evaluation.report import write_strip
from evaluation.rollouts import (
    EVAL_SEED_BASE,
    HORIZON,
    EvaluationError,
    RecordedRollouts,
    Rollouts,
    check_heldout,
    generate,
    inference_model,
    parse_actions,
    play_real,
    reconstruct,
)
from model.autoencoder import Autoencoder, from_uint8
from model.precision import resolve
from model.rollout import SamplerConfig
from world.io import git_commit


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


def view_moved(prev: np.ndarray, cur: np.ndarray, max_shift: int = 4, margin_db: float = 1.0) -> np.ndarray:
    """(N,) bool for transitions of (N, H, W, 3) frames: did the view scroll? True where the previous
    frame, shifted by some nonzero whole number of pixels (up to ``max_shift``), matches the new frame's
    centre ``margin_db`` better than unshifted (sprites that move on a still view change a small part of
    the frame; a scroll changes all of it)."""
    return np.abs(M.view_shift(prev, cur, max_shift, margin_db)).sum(1) > 0


def _idm_predict(idm, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    from model.idm import predict_actions

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
        # per horizon: lost at once (the controls) or as the rollout leaves the real game (divergence)
        r["action_accuracy_at"] = (pred_g == true).reshape(-1, Hn).mean(0).tolist()
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
        # and by whether the real view scrolled (a following camera) or stood still (a camera clamped at
        # the map's edge, a fixed screen): on a still view only the sprites show the move
        moved = view_moved(prev_r.reshape(-1, *tgt.shape[-3:]), tgt.reshape(-1, *tgt.shape[-3:]))
        r["view_moved_share"] = float(moved.mean())
        for name, sel in (("view_moved", moved), ("view_still", ~moved)):
            r[f"action_accuracy_{name}"] = float((pred_g == true)[sel].mean()) if sel.any() else None
        # and by the policy that played the real episode (the explorer or uniform random keys)
        pol = np.repeat(np.asarray(real.policies[:len(gen)]), Hn)
        r["action_accuracy_by_policy"] = {k: float((pred_g == true)[pol == k].mean()) for k in sorted(set(pol))}
        r["action_accuracy_view_still_by_policy"] = {
            k: float((pred_g == true)[(pol == k) & ~moved].mean()) for k in sorted(set(pol)) if ((pol == k) & ~moved).any()}
    else:
        r["action_accuracy"] = r["idm_real_accuracy"] = r["idm_ae_accuracy"] = r["action_confusion"] = None
        r["action_accuracy_at"] = None
        for k in ("switch_share", "action_accuracy_switch", "action_accuracy_hold", "idm_real_accuracy_switch",
                  "idm_real_accuracy_hold", "view_moved_share", "action_accuracy_view_moved",
                  "action_accuracy_view_still", "action_accuracy_by_policy", "action_accuracy_view_still_by_policy"):
            r[k] = None
    return r


ADVENTURE_PAIRS = ((4, 3), (3, 4), (2, 1), (1, 2))  # RIGHT/LEFT, LEFT/RIGHT, DOWN/UP, UP/DOWN


#: the revisit walks are played on held-out seeds from ``first_seed`` + this (apart from the others)
REVISIT_SEED_OFFSET = 20_000


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
    from model.io import (
        default_idm,
        file_hash,
        load_autoencoder,
        load_idm,
        load_world_model,
        resolve_full,
    )

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
    from world.dataset import recorded_settings, trained_datasets

    datasets = trained_datasets(cfg)
    dataset = datasets[0] if datasets else None
    settings: dict[str, Any] = recorded_settings(dataset, world)
    settings.update(cfg.get("world_settings", {}) or {})
    if sampler is None:
        sampler = SamplerConfig.from_card(cfg, "euler", 48, cfg=1.0)
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
        for d in datasets:
            check_heldout(real.seeds, d)
        seeds_used.extend(real.seeds)
        g = generate(model, ae, real.frames[:, :context], real.actions, sampler, seed, precision,
                     taken=real.effective == real.actions)
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
    report["revisit_psnr"] = report["copy_last_revisit_psnr"] = report["revisit_teacher_forced_psnr"] = None
    report["revisit_hidden_walk_psnr"] = report["revisit_hidden_still_psnr"] = report["copy_last_still_psnr"] = None
    report["revisit_returned"] = report["revisit_hidden_walk_psnr_each"] = report["copy_last_revisit_psnr_each"] = None
    report["revisit_psnr_returned"] = report["revisit_hidden_walk_psnr_returned"] = None
    report["copy_last_revisit_psnr_returned"] = None
    report["revisit_center_psnr"] = report["revisit_aligned_psnr"] = report["revisit_shift_px"] = None
    report["revisit_psnr_at"] = []
    pairs = revisit_pairs(names)
    if revisit_episodes and pairs:
        rreal, rgen = rollout_pair(revisit_episodes, context + 32, first_seed + REVISIT_SEED_OFFSET,
                                   script_fn=lambda i: revisit_script(i, context, pairs=pairs))
        report["revisit_psnr"] = float(M.psnr_batch(rgen[:, -1], rreal.frames[:, -1]).mean())
        report["copy_last_revisit_psnr"] = float(M.psnr_batch(rreal.frames[:, context - 1],
                                                               rreal.frames[:, -1]).mean())
        # where the return is lost: PSNR at every step of the walk out and back, and the last frame
        # predicted from all the real frames before it (memory without the model's own drift)
        report["revisit_psnr_at"] = [float(M.psnr_batch(rgen[:, t], rreal.frames[:, context + t]).mean())
                                     for t in range(rgen.shape[1])]
        # position or content: the return frame against the real one at the best shift of up to a
        # quarter of the frame (a camera that follows the player shifts the whole view when the dream
        # missed or added moves on the walk: 8 moves at the default game's speed), on the same centre
        # crop as at shift 0
        zero, best, shift = M.shift_aligned_psnr(rgen[:, -1], rreal.frames[:, -1], rgen.shape[2] // 4)
        report["revisit_center_psnr"] = float(zero.mean())
        report["revisit_aligned_psnr"] = float(best.mean())
        report["revisit_shift_px"] = float(np.abs(shift).sum(1).mean())
        taken = rreal.effective == rreal.actions  # the real frames' moves the game took (pose_taken models)
        last = generate(model, ae, rreal.frames[:, :-1], rreal.actions, sampler, seed, precision, taken=taken)
        report["revisit_teacher_forced_psnr"] = float(M.psnr_batch(last[:, -1], rreal.frames[:, -1]).mean())
        # memory alone: the return frame from the context frames, the walk hidden (noise at level 1,
        # told; its actions real): does the model recall the place it saw 32 steps back?
        walk = rreal.frames.shape[1] - context  # 32 steps: all but the return frame hidden
        recall = generate(model, ae, rreal.frames[:, :context], rreal.actions, sampler, seed, precision,
                          hidden=walk - 1, taken=taken)
        recall_each = M.psnr_batch(recall[:, -1], rreal.frames[:, -1])
        report["revisit_hidden_walk_psnr"] = float(recall_each.mean())
        # which walks end where they began: a step into a wall is not taken (effective NOOP), so a leg
        # blocked on the way out overshoots the start on the way back. Returned: as many moves taken
        # each way. Only there can recall draw the return; the fields below average over those walks
        eff = rreal.effective[:, context:]
        go, back = rreal.actions[:, context], rreal.actions[:, -1]
        returned = (eff == go[:, None]).sum(1) == (eff == back[:, None]).sum(1)
        copy_each = M.psnr_batch(rreal.frames[:, context - 1], rreal.frames[:, -1])
        report["revisit_returned"] = [bool(b) for b in returned]
        report["revisit_hidden_walk_psnr_each"] = [float(v) for v in recall_each]
        report["copy_last_revisit_psnr_each"] = [float(v) for v in copy_each]
        for key, each in (("revisit_psnr_returned", M.psnr_batch(rgen[:, -1], rreal.frames[:, -1])),
                          ("revisit_hidden_walk_psnr_returned", recall_each),
                          ("copy_last_revisit_psnr_returned", copy_each)):
            report[key] = float(np.asarray(each)[returned].mean()) if returned.any() else None
        # the same with the player standing still through the hidden frames (NOOPs, the same seeds): memory
        # without having to work out from the walk's actions where it went
        if recorded is None:
            still = play_real(world, settings, revisit_episodes, context + walk, first_seed + REVISIT_SEED_OFFSET,
                              script_fn=lambda i: [0] * (context - 1 + walk))
            for d in datasets:
                check_heldout(still.seeds, d)
            seeds_used.extend(still.seeds)
            kept = generate(model, ae, still.frames[:, :context], still.actions, sampler, seed, precision,
                            hidden=walk - 1, taken=still.effective == still.actions)
            report["revisit_hidden_still_psnr"] = float(M.psnr_batch(kept[:, -1], still.frames[:, -1]).mean())
            report["copy_last_still_psnr"] = float(M.psnr_batch(still.frames[:, context - 1],
                                                                still.frames[:, -1]).mean())
    report["sampler"] = {"kind": sampler.kind, "steps": sampler.steps, "cfg": sampler.cfg, "shift": sampler.shift,
                         "first_frame_steps": sampler.first_frame_steps, "context_sigma": sampler.context_sigma}
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
                            "command": " ".join(["python -m evaluation", *sys.argv[1:]]),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "wall_s": time.time() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return report
