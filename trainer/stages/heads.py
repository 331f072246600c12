"""The reward/termination heads stage: latent transitions of recorded data -> reward, episode end.

Trained on the latents of the world model's autoencoder (the dream feeds them generated
latents). Rewards and episode ends are rare, so the data may join several datasets (e.g. one
recorded with a policy that finds lava more often) and the losses are class-balanced.

Evaluation on held-out episodes of every dataset: reward accuracy over all transitions,
recall and precision of the reward events (nonzero reward, value right) and of the episode
ends, and false events per 1,000 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from model.heads import HeadsConfig, RewardHeads, heads_loss
from trainer.data import DataError, EpochSampler, split_episodes
from trainer.distributed import DistInfo
from trainer.latents import LatentCache, load_autoencoder
from trainer.loop import TrainConfig
from world.log import get_logger


@dataclass
class HeadsExperiment:
    stage: str = "heads"
    run_dir: str = "runs/adventure_heads"
    world: str = "adventure"
    autoencoder: str = "assets/checkpoints/adventure_ae.safetensors"
    latent_cache_dir: str = "data/latents"
    datasets: list[str] = field(default_factory=lambda: ["data/datasets/adventure-explorer-v0"])
    holdout_episodes: int = 8  # per dataset
    model: HeadsConfig = field(default_factory=HeadsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Transitions:
    prev: np.ndarray       # (N,) rows into latents
    cur: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray


def _transitions(caches: list[LatentCache], holdout: int, offsets: list[int]) -> tuple[Transitions, Transitions]:
    parts: dict[bool, list[tuple]] = {False: [], True: []}
    for cache, base in zip(caches, offsets):
        train_ids, hold_ids = split_episodes(cache.num_episodes, holdout)
        for held, ids in ((False, train_ids), (True, hold_ids)):
            for e in ids:
                o, n = int(cache.offsets[e]), cache.length(e)
                cur = np.arange(o + 1, o + n)
                parts[held].append((base + cur - 1, base + cur, cache.actions[cur], cache.rewards[cur],
                                    cache.terminated[cur]))
    out = []
    for held in (False, True):
        cols = list(zip(*parts[held])) if parts[held] else [[np.zeros(0, np.int64)]] * 5
        out.append(Transitions(*(np.concatenate(c) for c in cols)))
    return out[0], out[1]


def event_metrics(pred_r: np.ndarray, true_r: np.ndarray, pred_t: np.ndarray, true_t: np.ndarray
                  ) -> dict[str, float]:
    """Reward accuracy, recall/precision of reward events and episode ends, false events per 1k steps."""
    ev, pev = true_r != 0, pred_r != 0
    hit = ev & (pred_r == true_r)
    n = max(len(true_r), 1)
    return {
        "reward_accuracy": float((pred_r == true_r).mean()) if len(true_r) else float("nan"),
        "reward_event_recall": float(hit.sum() / max(ev.sum(), 1)),
        "reward_event_precision": float(hit.sum() / max(pev.sum(), 1)),
        "reward_false_per_1k": float(1000 * (pev & ~ev).sum() / n),
        "reward_events": int(ev.sum()),
        "termination_recall": float((pred_t & true_t).sum() / max(true_t.sum(), 1)),
        "termination_precision": float((pred_t & true_t).sum() / max(pred_t.sum(), 1)),
        "termination_false_per_1k": float(1000 * (pred_t & ~true_t).sum() / n),
        "terminations": int(true_t.sum()),
    }


class HeadsStage:
    name = "heads"

    def __init__(self, cfg: HeadsExperiment) -> None:
        self.cfg = cfg
        if not cfg.datasets:
            raise DataError("heads: 'datasets' is empty; list at least one recorded dataset")
        ae, ae_id = load_autoencoder(cfg.autoencoder)
        if ae.cfg.latent_channels != cfg.model.latent_channels or ae.cfg.latent_size != cfg.model.latent_size:
            raise ValueError(f"model.latent_channels/latent_size ({cfg.model.latent_channels}, "
                             f"{cfg.model.latent_size}) must match the autoencoder's "
                             f"({ae.cfg.latent_channels}, {ae.cfg.latent_size})")
        caches = [LatentCache.build(d, ae, ae_id, cfg.latent_cache_dir) for d in cfg.datasets]
        bases = list(np.cumsum([0] + [len(c.latents) for c in caches])[:-1])
        self.latents = np.concatenate([c.latents for c in caches])
        self.train_set, self.hold_set = _transitions(caches, cfg.holdout_episodes, bases)
        top = max(int(self.train_set.action.max(initial=0)), int(self.hold_set.action.max(initial=0)))
        if top >= cfg.model.num_actions:
            raise DataError(f"heads: the datasets hold action {top}, but model.num_actions is {cfg.model.num_actions}; "
                            f"set model.num_actions to the game's action count (at least {top + 1})")
        values = sorted(set(np.unique(self.train_set.reward).tolist()) | {0.0})
        cfg.model.reward_values = [float(v) for v in values]  # recorded in the checkpoint's config
        self.values = np.asarray(values, np.float32)
        cls = np.searchsorted(self.values, self.train_set.reward)
        self.train_class = cls
        counts = np.bincount(cls, minlength=len(values)).astype(np.float64)
        # square-root balancing: rare events count, without a flood of false alarms
        w = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1) / len(values)), 0.0)
        self.class_weights = torch.tensor(w / w[cls].mean(), dtype=torch.float32)
        pos = float(self.train_set.terminated.sum())
        self.term_pos_weight = float(np.sqrt((len(cls) - pos) / pos)) if pos else 1.0
        self.sampler = EpochSampler(len(cls), cfg.train.seed)
        self.net = RewardHeads(cfg.model)
        get_logger().info(f"[heads] {len(cls)} training transitions; reward values {values} with counts "
              f"{counts.astype(int).tolist()}; {int(pos)} episode ends; {len(self.hold_set.cur)} held out")

    def model(self) -> nn.Module:
        return self.net

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return 1

    def _z(self, rows: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.latents[rows].astype(np.float32)).to(dev)

    def next_batch(self, batch_size: int, info: DistInfo):
        sel = self.sampler.take(batch_size * info.world_size)[info.rank * batch_size:(info.rank + 1) * batch_size]
        t, dev = self.train_set, info.device
        return (self._z(t.prev[sel], dev), self._z(t.cur[sel], dev), torch.from_numpy(t.action[sel]).to(dev),
                torch.from_numpy(self.train_class[sel]).to(dev), torch.from_numpy(t.terminated[sel]).to(dev))

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        zp, zc, a, r, term = batch
        return heads_loss(model, zp, zc, a, r, term, self.class_weights.to(zp.device), self.term_pos_weight)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        h = self.hold_set
        if not len(h.cur):
            return {}
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        pr, pt = [], []
        for i in range(0, len(h.cur), 1024):
            r, t = model.predict(self._z(h.prev[i:i + 1024], dev), self._z(h.cur[i:i + 1024], dev),
                                 torch.from_numpy(h.action[i:i + 1024]).to(dev))
            pr.append(r.cpu().numpy())
            pt.append(t.cpu().numpy())
        model.train(was)
        return event_metrics(np.concatenate(pr), h.reward.astype(np.float32), np.concatenate(pt),
                             h.terminated.astype(bool))

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])
