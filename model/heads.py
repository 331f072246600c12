"""Reward and termination heads of a dreamed world.

A small convolutional net reads one latent transition (previous latent, current latent, the
action that led to it) and predicts the reward received on arriving at the current frame, as a
class over the reward values seen in the data, and whether the episode ended there. It runs on
the latents the world model generates, so the dream gives rewards and episode ends like the
real game.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class HeadsConfig:
    latent_channels: int = 16
    latent_size: int = 8
    num_actions: int = 5
    width: int = 64
    reward_values: list[float] = field(default_factory=list)  # the classes; set from the data at training

    def __post_init__(self) -> None:
        if self.width < 8 or self.latent_size < 4:
            raise ValueError(f"heads width must be >= 8 and latent_size >= 4, got {self.width}, {self.latent_size}")


class RewardHeads(nn.Module):
    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        W, C = cfg.width, cfg.latent_channels
        k = max(1, len(cfg.reward_values))
        self.conv = nn.Sequential(
            nn.Conv2d(3 * C, W, 3, padding=1), nn.GELU(),
            nn.Conv2d(W, W, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(W, W, 3, padding=1), nn.GELU(),
        )
        side = (cfg.latent_size + 1) // 2
        self.action = nn.Embedding(cfg.num_actions, W)
        self.mlp = nn.Sequential(nn.Linear(W * side * side + W, 2 * W), nn.GELU(), nn.Linear(2 * W, k + 1))
        self.register_buffer("values", torch.tensor(cfg.reward_values or [0.0], dtype=torch.float32))

    def forward(self, z_prev: torch.Tensor, z_cur: torch.Tensor, action: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) x2, (B,) -> reward logits (B, K), termination logit (B,)."""
        x = torch.cat([z_prev, z_cur, z_cur - z_prev], 1)
        h = self.conv(x).flatten(1)
        out = self.mlp(torch.cat([h, self.action(action)], 1))
        return out[:, :-1], out[:, -1]

    @torch.no_grad()
    def predict(self, z_prev: torch.Tensor, z_cur: torch.Tensor, action: torch.Tensor,
                threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward values (B,) and terminated flags (B,) of a batch of transitions."""
        logits, term = self(z_prev.float(), z_cur.float(), action.long())
        return self.values[logits.argmax(1)], torch.sigmoid(term) > threshold


def heads_loss(model: nn.Module, z_prev: torch.Tensor, z_cur: torch.Tensor, action: torch.Tensor,
               reward_class: torch.Tensor, terminated: torch.Tensor, class_weights: torch.Tensor,
               term_pos_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Class-balanced cross-entropy on the reward class + weighted BCE on termination
    (rewards and episode ends are rare events: a plain loss would learn 'nothing happens')."""
    logits, term = model(z_prev, z_cur, action)
    ce = F.cross_entropy(logits.float(), reward_class, weight=class_weights)
    bce = F.binary_cross_entropy_with_logits(term.float(), terminated.float(),
                                             pos_weight=torch.tensor(term_pos_weight, device=term.device))
    return ce + bce, {"reward_ce": float(ce.detach()), "term_bce": float(bce.detach())}
