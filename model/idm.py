"""The inverse-dynamics model (IDM): which effective action led from frame t-1 to frame t.

Trained on real frames only, it judges generated rollouts (does the dream obey the controls
and the rules?), and its per-frame encoder is the feature space of the Fréchet distances.
A shared frame encoder maps each frame to a feature vector; the head sees both frames'
features and their difference map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from model.autoencoder import from_uint8


@dataclass
class IDMConfig:
    num_actions: int = 5
    width: int = 32
    feature_dim: int = 128
    image_size: int = 64    # N x N frames (three stride-2 convolutions: an N/8 x N/8 grid)

    @property
    def cells(self) -> int:
        return (self.image_size // 8) ** 2


class FrameEncoder(nn.Module):
    def __init__(self, cfg: IDMConfig) -> None:
        super().__init__()
        w = cfg.width
        self.conv = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.ReLU(),           # 32
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(),       # 16
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.ReLU(),   # 8
        )
        self.proj = nn.Linear(4 * w * cfg.cells, cfg.feature_dim)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) in [-1, 1] -> (N, feature_dim) features."""
        return self.proj(self.conv(x).flatten(1))


class InverseDynamics(nn.Module):
    def __init__(self, cfg: IDMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        w = cfg.width
        self.diff = nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(),
                                  nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * w * cfg.cells + 2 * cfg.feature_dim, 256), nn.ReLU(),
                                  nn.Linear(256, cfg.num_actions))

    def forward(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_actions) of the effective action from ``prev`` to ``cur``."""
        d = self.diff(cur - prev).flatten(1)
        return self.head(torch.cat([d, self.encoder(prev), self.encoder(cur)], 1))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames)


@torch.no_grad()
def predict_actions(model: nn.Module, prev: np.ndarray, cur: np.ndarray, batch: int = 256) -> np.ndarray:
    """Effective actions predicted for uint8 frame pairs (N, H, W, 3)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(prev), batch):
        p = from_uint8(torch.from_numpy(prev[i:i + batch])).to(dev)
        c = from_uint8(torch.from_numpy(cur[i:i + batch])).to(dev)
        out.append(model(p, c).argmax(1).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros(0, np.int64)
