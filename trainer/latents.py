"""Loading a trained autoencoder, and the on-disk cache of dataset frames encoded to latents."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from model.autoencoder import Autoencoder
from model.io import load_autoencoder, resolve_checkpoint  # noqa: F401 - re-exported for the trainer
from trainer.data import dataset_fingerprint, load_episodes
from world.log import get_logger


class LatentCache:
    """Latents of every frame of a dataset, with the clip-convention actions, in one .npz."""

    def __init__(self, latents: np.ndarray, actions: np.ndarray, effective: np.ndarray,
                 rewards: np.ndarray, terminated: np.ndarray, offsets: np.ndarray) -> None:
        self.latents, self.actions, self.effective = latents, actions, effective
        self.rewards, self.terminated, self.offsets = rewards, terminated, offsets

    @property
    def num_episodes(self) -> int:
        return len(self.offsets) - 1

    def length(self, ep: int) -> int:
        return int(self.offsets[ep + 1] - self.offsets[ep])

    def window_index(self, rows: np.ndarray, frames: int) -> np.ndarray:
        """rows (N, 2) [episode, start] -> (N, F) indices into the cache's per-frame arrays (and into
        any array of the dataset's frames in the same order, e.g. :func:`trainer.motion.motion_cache`)."""
        starts = self.offsets[rows[:, 0]] + rows[:, 1]
        return starts[:, None] + np.arange(frames)[None, :]

    def windows(self, rows: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """rows (N, 2) [episode, start] -> latents (N, F, C, h, w) float32, actions (N, F)."""
        idx = self.window_index(rows, frames)
        return self.latents[idx].astype(np.float32), self.actions[idx]

    def window_taken(self, rows: np.ndarray, frames: int) -> np.ndarray:
        """rows (N, 2) [episode, start] -> (N, F) bool: the recorded effective action equals the
        pressed one (the world took the move; a key pressed into a wall was not taken)."""
        idx = self.window_index(rows, frames)
        return self.effective[idx] == self.actions[idx]

    @classmethod
    def concat(cls, caches: list[LatentCache]) -> LatentCache:
        """One cache of several datasets' caches, episode after episode in their order (the episode
        ids of ``caches[k]`` follow those of ``caches[:k]``)."""
        if len(caches) == 1:
            return caches[0]
        shapes = {c.latents.shape[1:] for c in caches}
        if len(shapes) > 1:
            raise ValueError(f"the datasets' latents differ in shape {sorted(shapes)}: they must be frames of one "
                             "world at one resolution, encoded by one autoencoder")
        cat = lambda name: np.concatenate([getattr(c, name) for c in caches])  # noqa: E731
        starts = np.cumsum([0] + [int(c.offsets[-1]) for c in caches[:-1]])
        offsets = np.concatenate([caches[0].offsets[:1]] + [c.offsets[1:] + s for c, s in zip(caches, starts)])
        return cls(cat("latents"), cat("actions"), cat("effective"), cat("rewards"), cat("terminated"), offsets)

    @classmethod
    def build(cls, dataset: str, ae: Autoencoder, ae_id: str, cache_dir: str | Path,
              batch: int = 256) -> LatentCache:
        """The dataset's latents, from the cache or encoded now (by rank 0 first, with several
        processes, so that they do not all encode and write the same file)."""
        from trainer.distributed import main_first

        with main_first():
            return cls._build(dataset, ae, ae_id, cache_dir, batch)

    @classmethod
    def _build(cls, dataset: str, ae: Autoencoder, ae_id: str, cache_dir: str | Path, batch: int) -> LatentCache:
        cache_dir = Path(cache_dir)
        path = cache_dir / f"{Path(dataset).name}_{dataset_fingerprint(dataset)}_ae{ae_id}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    return cls(z["latents"], z["actions"], z["effective"], z["rewards"], z["terminated"],
                               z["offsets"])
            except (OSError, ValueError, KeyError):
                path.unlink()  # a damaged cache is rebuilt
        eps = load_episodes(dataset)
        lat = []
        from tqdm import tqdm

        tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
        for e in tqdm(eps, desc="encode latents", dynamic_ncols=True, disable=os.environ.get("DREAMSTEP_NO_BAR") == "1"):
            # fp32 without TF32 on every device: the latents are those a CPU computes at play time
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                lat.append(ae.encode_frames(e.frames, batch).cpu().numpy().astype(np.float16))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        offsets = np.cumsum([0] + [len(e) for e in eps])
        obj = cls(np.concatenate(lat), np.concatenate([e.actions for e in eps]),
                  np.concatenate([e.effective for e in eps]), np.concatenate([e.rewards for e in eps]),
                  np.concatenate([e.terminated for e in eps]), offsets)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, latents=obj.latents, actions=obj.actions, effective=obj.effective, rewards=obj.rewards,
                 terminated=obj.terminated, offsets=obj.offsets)
        tmp.replace(path)
        get_logger().info(f"latent cache: {len(obj.latents)} frames of {obj.num_episodes} episodes -> {path}")
        return obj
