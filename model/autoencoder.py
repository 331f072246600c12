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

import numpy as np
import torch
import torch.nn as nn


@dataclass
class AutoencoderConfig:
    image_size: int = 64          # N x N frames -> N/8 x N/8 latents (the convolutions fit any N)
    latent_channels: int = 16
    enc_channels: tuple[int, int, int] = (64, 128, 192)  # at 32x32, 16x16, 8x8
    dec_width: int = 128          # decoder channels at 8x8
    dec_res_blocks: int = 2
    dec_fine: int = 48            # decoder channels at 16x16
    # "rgb": the decoder regresses colours; "palette": it classifies each pixel over a palette
    # of the world's colours measured from the data (flat-colour games: exact, crisp output)
    output: str = "rgb"
    palette_size: int = 0         # palette output: number of colours (most frequent in the data)

    def __post_init__(self) -> None:
        self.enc_channels = tuple(self.enc_channels)  # YAML gives lists
        if self.output not in ("rgb", "palette"):
            raise ValueError(f"autoencoder output must be 'rgb' or 'palette', got {self.output!r}")
        if self.output == "palette" and not 2 <= self.palette_size <= 256:
            raise ValueError(f"palette output needs 2 <= palette_size <= 256, got {self.palette_size}")
        if self.image_size < 32 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and at least 32 (frames of N x N map to "
                             f"N/8 x N/8 latents), got {self.image_size}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 8

    @property
    def out_channels(self) -> int:
        return self.palette_size if self.output == "palette" else 3


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
            nn.ReLU(), nn.Conv2d(f, 16 * cfg.out_channels, 1), nn.PixelShuffle(4),  # 64x64
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
        # palette colours in [-1, 1] (K, 3); set from the data before training
        self.register_buffer("palette", torch.zeros(cfg.palette_size, 3) if cfg.output == "palette" else None)

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) in [-1, 1] -> unnormalised (N, C, 8, 8)."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) in [-1, 1] -> normalised latents (N, C, 8, 8)."""
        return self.normalize(self.encoder(x))

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output (N, C, h, w) -> normalised latents (what the models read)."""
        return (h - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> the decoder's input (fp32): the inverse of :meth:`normalize`."""
        return z.float() * self.latent_std[:, None, None].float() + self.latent_mean[:, None, None].float()

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
        """uint8 frames (..., H, W, 3) -> normalised fp32 latents (..., C, h, w) on this model's device,
        ``batch`` frames per call; fp32 also inside autocast (the latents the models were trained on)."""
        lead = frames.shape[:-3]
        flat = np.ascontiguousarray(frames).reshape(-1, *frames.shape[-3:])
        dev = self.latent_mean.device
        with torch.autocast(dev.type, enabled=False):
            z = torch.cat([self.encode(from_uint8(torch.from_numpy(flat[i:i + batch])).to(dev)).float()
                           for i in range(0, len(flat), batch)])
        return z.reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode_frames(self, z: torch.Tensor, batch: int = 256) -> np.ndarray:
        """Normalised latents (..., C, h, w) -> uint8 frames (..., H, W, 3) on the host, ``batch`` per call
        (in the decoder's precision: see :meth:`decode`)."""
        lead = z.shape[:-3]
        flat = z.reshape(-1, *z.shape[-3:]).float()
        x = torch.cat([to_uint8(self.decode(flat[i:i + batch]).float()).cpu() for i in range(0, len(flat), batch)])
        return x.reshape(*lead, *x.shape[1:]).numpy()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, 8, 8) -> images (N, 3, 64, 64) in [-1, 1] (rgb: unclamped;
        palette: each pixel the colour of its most likely palette entry)."""
        # de-normalised in fp32, then in the decoder's own precision (a decoder cast to bf16 for play)
        z = self.denormalize(z)
        z = z.to(self.decoder.net[0].weight.dtype) if not torch.is_autocast_enabled(z.device.type) else z
        if self.cfg.output == "rgb":
            return self.decoder(z)
        # The last 1x1 conv as a matmul with the palette axis last (a contiguous arg-max), then
        # the pixel shuffle applied to the indices only: the K-channel logits never get shuffled.
        K = self.cfg.palette_size
        h = self.decoder.net[:-2](z)                          # (N, f, 16, 16), after the ReLU
        conv = self.decoder.net[-2]
        N, f, H, W = h.shape
        w = conv.weight.view(K, 16, f).transpose(0, 1).reshape(16 * K, f)
        b = conv.bias.view(K, 16).t().reshape(16 * K)
        logits = torch.addmm(b.to(h.dtype), h.flatten(2).transpose(1, 2).reshape(N * H * W, f), w.t().to(h.dtype))
        idx = logits.view(N, H, W, 4, 4, K).argmax(-1)        # (N, H, W, i, j)
        idx = idx.permute(0, 1, 3, 2, 4).reshape(N, 4 * H, 4 * W)
        return self.palette[idx].movedim(-1, 1)  # the palette's exact (fp32) colours

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image: identity for rgb, arg-max palette colours for palette."""
        if self.cfg.output == "rgb":
            return out
        idx = out.argmax(1)                                   # (N, 64, 64)
        return self.palette.to(out.dtype)[idx].movedim(-1, 1)  # (N, 3, 64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw decoder output of the reconstruction: colours (rgb) or palette logits."""
        return self.decoder(self.encoder(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.forward(x))

    @torch.no_grad()
    def set_palette(self, colors: torch.Tensor) -> None:
        """Palette colours as uint8 (K, 3)."""
        if self.palette is None:
            raise ValueError("set_palette needs an autoencoder with output='palette'")
        if colors.shape != self.palette.shape:
            raise ValueError(f"palette must be {tuple(self.palette.shape)}, got {tuple(colors.shape)}")
        self.palette.copy_(colors.float().div(127.5).sub(1.0))

    @torch.no_grad()
    def palette_targets(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> (N, H, W) index of each pixel's nearest palette colour."""
        pal = self.palette.add(1).mul(127.5).round()          # (K, 3) in 0..255
        f = frames.float()
        d = (f[..., None, :] - pal.to(f.device)).pow(2).sum(-1)  # (N, H, W, K)
        return d.argmin(-1)

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
