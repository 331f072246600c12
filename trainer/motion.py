"""Sprite motion: where a recorded frame changed once the view's scroll is taken out.

A following camera scrolls the whole view when the player moves, so the plain change between two
frames is large everywhere; where the camera stands still (clamped at the map's edge, a fixed
screen, a blocked move) only the sprites change. The teacher's ``loss.motion_weight`` weights the
latent cells by this motion: the previous frame shifted by the view's scroll
(:func:`evaluation.metrics.view_shift`), subtracted from the frame, and averaged over each latent
cell's pixels. Moving creatures and the player get the weight; scrolled scenery does not.

The per-frame maps of a dataset are computed once and cached beside its latents
(``DIR/NAME_FINGERPRINT_motionG.npz``), in the latent cache's frame order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evaluation.metrics import view_shift
from trainer.data import DataError, dataset_fingerprint, load_episodes
from world.log import get_logger


def sprite_motion(frames: np.ndarray, grid: int, max_shift: int = 4) -> np.ndarray:
    """(T, grid, grid) float32: for uint8 frames (T, H, W, 3) of one episode, the mean absolute
    change (0-1) of each cell once the view's scroll is taken out; frame 0 (nothing before it) takes
    frame 1's. The ``max_shift`` border, where scrolled-in scenery enters, counts as unchanged."""
    return _motion_and_shifts(frames, grid, max_shift)[0]


def _motion_and_shifts(frames: np.ndarray, grid: int, max_shift: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sprite_motion` and the (T - 1, 2) view shifts it took out."""
    T, H, W = frames.shape[:3]
    if H % grid or W % grid:
        raise DataError(f"frames of {H}x{W} pixels do not divide into a {grid}x{grid} latent grid")
    S = max_shift
    out = np.zeros((T, grid, grid), np.float32)
    if T < 2:
        return out, np.zeros((0, 2), np.int64)
    f = frames.astype(np.float32) / 255.0
    shifts = view_shift(frames[:-1], frames[1:], S)
    res = np.zeros((T - 1, H, W), np.float32)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        prev = f[i, S + dy:H - S + dy, S + dx:W - S + dx]
        res[i, S:H - S, S:W - S] = np.abs(f[i + 1, S:H - S, S:W - S] - prev).mean(-1)
    out[1:] = res.reshape(T - 1, grid, H // grid, grid, W // grid).mean((2, 4))
    out[0] = out[1]
    return out, shifts


def motion_cache(dataset: str | Path, grid: int, cache_dir: str | Path) -> np.ndarray:
    """(N, grid, grid) float16: :func:`sprite_motion` of every frame of ``dataset``, episode after
    episode (the latent cache's order), from the cache or computed now (rank 0 first)."""
    from trainer.distributed import main_first

    cache_dir = Path(cache_dir)
    path = cache_dir / f"{Path(dataset).name}_{dataset_fingerprint(dataset)}_motion{grid}.npz"
    with main_first():
        if path.is_file():
            try:
                with np.load(path) as z:
                    return z["motion"]
            except (OSError, ValueError, KeyError):
                path.unlink()  # a damaged cache is rebuilt
        maps = [sprite_motion(e.frames, grid).astype(np.float16) for e in load_episodes(dataset)]
        motion = np.concatenate(maps)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, motion=motion)
        tmp.replace(path)
        get_logger().info(f"motion cache: {len(motion)} frames -> {path}")
        return motion


def weight_shares(dataset: str | Path, grid: int, change_weight: float, motion_weight: float,
                  episodes: int = 0) -> dict[str, float]:
    """Where the teacher loss's cell weights go, over the transitions of ``dataset``'s first
    ``episodes`` episodes (all with 0): the share of transitions whose view stood still, and the share
    of the weight they get with the change weight alone (1 + k * change / mean change per cell) and
    with the motion weight added (+ m * motion / mean motion). The change is measured here on the
    frames' pixels, averaged over each latent cell (the loss measures it on the latents)."""
    eps = load_episodes(dataset, list(range(episodes)) if episodes else None)
    return frame_weight_shares([e.frames for e in eps], grid, change_weight, motion_weight, str(dataset))


def frame_weight_shares(episodes: list[np.ndarray], grid: int, change_weight: float, motion_weight: float,
                        name: str = "the frames") -> dict[str, float]:
    """:func:`weight_shares` of episodes given as uint8 frames (T, H, W, 3)."""
    still, change, motion = [], [], []
    for f in episodes:
        if len(f) < 2:
            continue
        m, shifts = _motion_and_shifts(f, grid)  # the view shifts once, for the motion and the still mask
        still.append(np.abs(shifts).sum(1) == 0)
        raw = np.abs(np.diff(f.astype(np.float32) / 255.0, axis=0)).mean(-1)
        T, H, W = raw.shape
        change.append(raw.reshape(T, grid, H // grid, grid, W // grid).mean((2, 4)))
        motion.append(m[1:])
    if not still:
        raise DataError(f"{name} hold no episode of 2 frames or more")
    s, c, m = np.concatenate(still), np.concatenate(change), np.concatenate(motion)
    w_change = 1.0 + change_weight * c / max(float(c.mean()), 1e-6)
    w_both = w_change + motion_weight * m / max(float(m.mean()), 1e-6)
    out: dict[str, float] = {"transitions": int(len(s)), "still_share": float(s.mean())}
    for name, w in (("change", w_change), ("change_and_motion", w_both)):
        per = w.sum((1, 2))
        out[f"weight_share_still_{name}"] = float(per[s].sum() / per.sum())
    out["motion_share_still"] = float(m.sum((1, 2))[s].sum() / max(float(m.sum()), 1e-12))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m trainer.motion",
                                description="Where the teacher loss's weight goes: still views against scrolled ones.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--grid", type=int, default=8, help="the latent grid's side (model.latent_size)")
    p.add_argument("--change-weight", type=float, default=4.0)
    p.add_argument("--motion-weight", type=float, default=2.0)
    p.add_argument("--episodes", type=int, default=0, help="the first N episodes (0: all)")
    a = p.parse_args(argv)
    print(json.dumps(weight_shares(a.dataset, a.grid, a.change_weight, a.motion_weight, a.episodes), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
