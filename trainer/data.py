"""Training data: episodes from recorded datasets, frame batches, latent caches, F-frame windows.

Action convention (stated once, tested): in a clip, ``actions[i]`` is the action taken
*before* frame ``i`` is shown, the one that leads from frame ``i-1`` to frame ``i``.
A Minari episode stores T+1 observations and T actions with ``actions[t]`` taken at
observation t, so ``clip_actions[i] = minari_actions[i - 1]`` and ``clip_actions[0]`` is
NOOP (0): nothing led to the first frame.

Everything random here is a pure function of (seed, epoch, position): data order after
a resume is exactly the order an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from world.dataset import (  # noqa: F401 - the clip convention lives with the datasets (re-exported)
    DatasetError,
    Episode,
    episode_from_record,
    read_metadata,
)
from world.dataset import load_clip_episodes as load_episodes  # noqa: F401

DataError = DatasetError  # one error type for a missing, damaged or unsuitable dataset


def dataset_metadata(dataset_dir: str | Path) -> dict[str, Any]:
    """The top ``metadata.json`` of a dataset folder; a missing or damaged one is a :class:`DataError`."""
    return read_metadata(dataset_dir)


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    meta = dataset_metadata(dataset_dir)
    key = json.dumps({k: meta.get(k) for k in ("total_episodes", "total_steps", "dataset_id")}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def split_episodes(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """Train on the first n - holdout episodes, hold out the last ``holdout``."""
    if not 0 <= holdout < n:
        raise DataError(f"holdout_episodes={holdout} must be in [0, {n - 1}] for a dataset of {n} episodes")
    return list(range(n - holdout)), list(range(n - holdout, n))


class EpochSampler:
    """Deterministic shuffled order over ``n`` items, epoch after epoch, resumable by position."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise DataError("nothing to sample from: the training split is empty")
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._make_perm()

    def _make_perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make_perm()
            m = min(k, self.n - self.pos)
            out.append(self._perm[self.pos:self.pos + m])
            self.pos += m
            k -= m
        return np.concatenate(out)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state(self, s: dict[str, int]) -> None:
        if s["n"] != self.n:
            raise DataError(f"resume: the data changed size ({s['n']} items then, {self.n} now); "
                            f"resume with the same dataset or start a new run")
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._perm = self._make_perm()


def window_index(lengths: list[int], frames: int) -> np.ndarray:
    """(N, 2) [episode, start] of every window of ``frames`` consecutive frames."""
    rows = [(e, s) for e, L in enumerate(lengths) for s in range(0, L - frames + 1)]
    if not rows:
        raise DataError(f"no episode has {frames} frames; record longer episodes or use fewer frames")
    return np.array(rows, np.int64)
