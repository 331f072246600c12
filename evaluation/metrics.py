"""Image and distribution metrics of docs/EVALUATION.md section 3, as small pure functions.

Frames are uint8 (..., H, W, 3) arrays; metrics work in [0, 1] pixel space.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over all pixels, or over the (H, W) ``mask`` pixels (all channels)."""
    d = (_unit(a) - _unit(b)) ** 2
    if mask is not None:
        m = np.broadcast_to(mask[..., None], d.shape)
        if not m.any():
            return float("nan")
        mse = d[m].mean()
    else:
        mse = d.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def psnr_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR of (N, H, W, 3) batches."""
    mse = ((_unit(a) - _unit(b)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def shift_aligned_psnr(gen: np.ndarray, real: np.ndarray, max_shift: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a generated frame is wrong by position rather than by content: for each pair of
    (N, H, W, 3) frames, the PSNR of the real frame's centre (a ``max_shift`` border cropped)
    against the generated frame's window at every integer shift (dy, dx) within ``max_shift``.
    Returns (PSNR at shift 0, best PSNR, best (dy, dx)) per frame, (dy, dx) being where the generated
    frame's content sits relative to the real one's (gen[y + dy, x + dx] ~ real[y, x]); the crop is
    the same at every shift, so the two PSNRs compare the same pixels of the real frame."""
    S = int(max_shift)
    H, W = real.shape[1:3]
    if S < 0 or 2 * S >= min(H, W):
        raise ValueError(f"max_shift must be in [0, {min(H, W) // 2 - 1}] for {H}x{W} frames, got {max_shift}")
    r = real[:, S:H - S, S:W - S]
    zero, best = None, np.full(len(r), -np.inf)
    best_shift = np.zeros((len(r), 2), np.int64)
    for dy in range(-S, S + 1):
        for dx in range(-S, S + 1):
            val = psnr_batch(gen[:, S + dy:H - S + dy, S + dx:W - S + dx], r)
            if dy == 0 and dx == 0:
                zero = val
            better = val > best
            best = np.where(better, val, best)
            best_shift[better] = (dy, dx)
    return zero, best, best_shift


def view_shift(prev: np.ndarray, cur: np.ndarray, max_shift: int = 4, margin_db: float = 1.0) -> np.ndarray:
    """(N, 2) the whole-pixel shift (dy, dx) by which the view scrolled between (N, H, W, 3) frames
    ``prev`` and ``cur`` (prev[y + dy, x + dx] ~ cur[y, x]), up to ``max_shift``; (0, 0) unless the
    best shift matches the new frame's centre ``margin_db`` better than no shift (sprites that move
    on a still view change a small part of the frame, a scroll changes all of it; a frame without
    texture has no shift to find)."""
    zero, best, shift = shift_aligned_psnr(prev, cur, max_shift)
    return np.where((best > zero + margin_db)[:, None], shift, 0)


def ssim(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM (grey-level luminance of RGB, uniform window, standard constants)."""
    def grey(x: np.ndarray) -> np.ndarray:
        return _unit(x) @ np.array([0.299, 0.587, 0.114])

    x, y = grey(a), grey(b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def box(z: np.ndarray) -> np.ndarray:
        k = np.ones(win) / win
        z = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), -1, z)
        return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), -2, z)

    mx, my = box(x), box(y)
    sxx = box(x * x) - mx * mx
    syy = box(y * y) - my * my
    sxy = box(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def laplacian_energy(frames: np.ndarray) -> np.ndarray:
    """Mean squared Laplacian per frame of (N, H, W, 3): high-frequency energy."""
    x = _unit(frames)
    lap = (-4 * x[:, 1:-1, 1:-1] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:])
    return (lap ** 2).reshape(len(frames), -1).mean(1)


def sharpness_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """High-frequency energy of generated frames over that of the real ones (1 = as sharp)."""
    return float(laplacian_energy(generated).mean() / max(laplacian_energy(real).mean(), 1e-12))


def changed_mask(real: np.ndarray, generated: np.ndarray, last_context: np.ndarray, thresh: int = 8) -> np.ndarray:
    """(H, W) pixels where the real or the generated frame differs from the last context frame."""
    def diff(x: np.ndarray) -> np.ndarray:
        return np.abs(x.astype(np.int32) - last_context.astype(np.int32)).max(-1) > thresh
    return diff(real) | diff(generated)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    ca = np.cov(feats_a, rowvar=False)
    cb = np.cov(feats_b, rowvar=False)
    # sqrt of ca @ cb via the symmetric form sqrt(sqrt(ca) cb sqrt(ca))
    wa, va = np.linalg.eigh(ca)
    sa = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = sa @ cb @ sa
    wm = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(wm, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)
