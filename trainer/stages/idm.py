"""The inverse-dynamics model stage: real frame pairs -> effective action (class-balanced CE).

Evaluation: accuracy on held-out episodes (the `idm_real_accuracy` ceiling) and a
per-action confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.autoencoder import from_uint8
from model.idm import IDMConfig, InverseDynamics, predict_actions
from trainer.data import EpochSampler, load_episodes, split_episodes
from trainer.distributed import DistInfo
from trainer.loop import TrainConfig
from trainer.stages.autoencoder import DataConfig, _count_episodes


@dataclass
class IDMExperiment:
    stage: str = "idm"
    run_dir: str = "runs/adventure_idm"
    world: str = "adventure"
    data: DataConfig = field(default_factory=DataConfig)
    model: IDMConfig = field(default_factory=IDMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _pairs(episodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = np.concatenate([e.frames for e in episodes])
    idx, labels, off = [], [], 0
    for e in episodes:
        idx.append(np.arange(off + 1, off + len(e)))
        labels.append(e.effective[1:])
        off += len(e)
    return frames, np.concatenate(idx), np.concatenate(labels)


class IDMStage:
    name = "idm"

    def __init__(self, cfg: IDMExperiment) -> None:
        self.cfg = cfg
        cfg.data.only_one("idm")
        n = _count_episodes(cfg.data.dataset)
        if cfg.data.max_episodes:
            n = min(n, cfg.data.max_episodes)
        train_ids, hold_ids = split_episodes(n, cfg.data.holdout_episodes)
        eps = load_episodes(cfg.data.dataset, train_ids + hold_ids)
        self.frames, self.idx, self.labels = _pairs(eps[: len(train_ids)])
        self.h_frames, self.h_idx, self.h_labels = _pairs(eps[len(train_ids):]) if hold_ids else (None, None, None)
        counts = np.bincount(self.labels, minlength=cfg.model.num_actions).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / cfg.model.num_actions, 0.0)
        self.class_weights = torch.tensor(w, dtype=torch.float32)
        self.sampler = EpochSampler(len(self.idx), cfg.train.seed)
        self.net = InverseDynamics(cfg.model)

    def model(self) -> nn.Module:
        return self.net

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return 1

    def next_batch(self, batch_size: int, info: DistInfo):
        sel = self.sampler.take(batch_size * info.world_size)[info.rank * batch_size:(info.rank + 1) * batch_size]
        i = self.idx[sel]
        prev = from_uint8(torch.from_numpy(self.frames[i - 1])).to(info.device)
        cur = from_uint8(torch.from_numpy(self.frames[i])).to(info.device)
        return prev, cur, torch.from_numpy(self.labels[sel]).to(info.device)

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        prev, cur, y = batch
        logits = model(prev, cur).float()
        loss = F.cross_entropy(logits, y, weight=self.class_weights.to(logits.device))
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.h_idx is None:
            return {}
        pred = predict_actions(model, self.h_frames[self.h_idx - 1], self.h_frames[self.h_idx])
        return {"accuracy": float((pred == self.h_labels).mean())}

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])
