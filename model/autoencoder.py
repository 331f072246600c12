"""The frame autoencoder: 64x64x3 pixels <-> an 8x8xC latent grid (one token per 8x8 patch).

The encoder may be heavy (it runs once per context frame and offline over datasets); the
decoder runs on every generated frame during play, so it does its work at 8x8 and 16x16
and reaches full resolution by pixel shuffles (about 2 ms a frame on one CPU core at the
default width). Latents are normalised by per-channel statistics measured after training
(buffers ``latent_mean``/``latent_std``), so the world model sees unit-scale latents.

Pixels are floats in [-1, 1] at the model's boundary; :func:`to_unit`/:func:`from_uint8`
convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class AutoencoderConfig:
    image_size: int = 64
    latent_channels: int = 16
    enc_channels: tuple[int, int, int] = (64, 128, 192)  # at 32x32, 16x16, 8x8
    dec_width: int = 128          # decoder channels at 8x8
    dec_res_blocks: int = 2
    dec_fine: int = 48            # decoder channels at 16x16

    def __post_init__(self) -> None:
        self.enc_channels = tuple(self.enc_channels)  # YAML gives lists
        if self.image_size != 64:
            raise ValueError(f"this autoencoder maps 64x64 frames to 8x8 latents; got image_size={self.image_size}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 8


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.enc_channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=2, padding=1), ResBlock(c1),            # 32x32
            nn.ReLU(), nn.Conv2d(c1, c2, 4, stride=2, padding=1), ResBlock(c2),  # 16x16
            nn.ReLU(), nn.Conv2d(c2, c3, 4, stride=2, padding=1), ResBlock(c3), ResBlock(c3),  # 8x8
            nn.ReLU(), nn.Conv2d(c3, cfg.latent_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        D, f = cfg.dec_width, cfg.dec_fine
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, D, 3, padding=1),
            *[ResBlock(D) for _ in range(cfg.dec_res_blocks)],
            nn.ReLU(), nn.Conv2d(D, 4 * f, 1), nn.PixelShuffle(2),   # 16x16
            ResBlock(f),
            nn.ReLU(), nn.Conv2d(f, 16 * 3, 1), nn.PixelShuffle(4),  # 64x64
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) in [-1, 1] -> unnormalised (N, C, 8, 8)."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) in [-1, 1] -> normalised latents (N, C, 8, 8)."""
        z = self.encoder(x)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, 8, 8) -> (N, 3, 64, 64), unclamped."""
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def set_latent_stats(self, z_raw: torch.Tensor) -> None:
        """Normalise by the per-channel mean/std of raw latents (N, C, 8, 8)."""
        self.latent_mean.copy_(z_raw.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z_raw.std(dim=(0, 2, 3)).clamp(min=1e-4))


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).movedim(-3, -1)
