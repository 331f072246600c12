"""A world model ready to dream: the transformer, its autoencoder, the sampler its card plays with, and
reward/termination heads when there are any, in one object with batched operations.

The single dream (:class:`world.dream.DreamWorld`) and the batched vector env
(:class:`agent_env.dream_vec.DreamVectorEnv`) both stream through a :class:`Dreamer`: sessions with
a KV-cache row per stream (:class:`model.rollout.Session`), encode and decode in batches, and the
heads' reward and episode end of each generated transition.

Precision: the world model's and the decoder's weights are cast once at load (``precision``; the
encoder stays fp32, the latents the models were trained on; see :mod:`model.precision`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.autoencoder import Autoencoder
from model.heads import RewardHeads
from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer


class DreamerError(ValueError):
    """Settings a dreamer cannot be built with (heads that read another autoencoder's latents, ...)."""


@dataclass
class Dreamer:
    model: FrameTransformer
    ae: Autoencoder
    sampler: SamplerConfig
    config: dict[str, Any]               # the world model's full config (its card's or run's)
    model_id: str
    ae_id: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    heads: RewardHeads | None = None
    heads_input: str = "latents"         # what the heads read: "latents" (generated) or "frames" (re-encoded)
    _heads_encoder: torch.nn.Module | None = field(default=None, repr=False)

    @classmethod
    def load(cls, checkpoint: str | Path, sampler: str = "auto", steps: int = 0, cfg: float = 0.0,
             heads: str = "auto", device: str | torch.device = "cpu", precision: str = "auto",
             compile: bool = False) -> Dreamer:
        """The world model at ``checkpoint`` with its autoencoder. ``sampler`` "auto" (the card's kind),
        "euler" or "consistency"; ``steps`` 0 and ``cfg`` 0 are the card's (:meth:`SamplerConfig.from_card`,
        8 Euler / 2 consistency steps without one). ``heads``: "auto" (the card's, else the world's
        shipped ones, used only if they read this autoencoder's latents), a path (checked) or "" (none).
        ``compile``: the streaming step compiled (:meth:`FrameTransformer.compile_streaming`; each batch
        size compiles on its first frames: call :meth:`warm_up`). A damaged or foreign checkpoint raises
        :class:`model.io.CheckpointError`; heads that cannot be used raise :class:`DreamerError`."""
        from model.io import CheckpointError, load_autoencoder, load_world_model
        from model.precision import DTYPES, cast_for_inference, resolve

        model, config, model_id = load_world_model(checkpoint)
        ae, ae_id = load_autoencoder(config["autoencoder"])
        dev = torch.device(device)
        model.to(dev)
        ae.to(dev)
        ran = resolve(precision, dev)
        if ran != "fp32":
            cast_for_inference(model, DTYPES[ran])
            cast_for_inference(ae.decoder, DTYPES[ran])
        if compile:
            model.compile_streaming()
        kind = sampler if sampler != "auto" else (config.get("sampler") or {}).get("kind", "euler")
        samp = SamplerConfig.from_card(config, kind, steps or None, cfg=cfg or None,
                                       default_steps=8 if kind == "euler" else 2)
        out = cls(model, ae, samp, config, model_id, ae_id, dev, ran)
        try:
            out.heads = out._load_heads(heads)
        except CheckpointError as e:
            raise DreamerError(f"cannot load the reward/termination heads: {e}") from None
        if out.heads is not None:
            out.heads.to(dev)
        return out

    @property
    def world(self) -> str:
        """The real game the model was trained on."""
        return str(self.config.get("world", "adventure"))

    def _load_heads(self, setting: str) -> RewardHeads | None:
        from model.io import (
            CheckpointError,
            default_heads,
            file_hash,
            load_heads,
            resolve_checkpoint,
        )

        auto = setting == "auto"
        if auto:
            found = self.config.get("heads") or default_heads(self.world)
            setting = str(found) if found else ""
        if not setting:
            return None
        if not Path(setting).exists():
            if auto:
                return None
            raise DreamerError(f"heads checkpoint {setting!r} not found; give a heads run folder or "
                               ".safetensors, 'auto' or '' (no rewards)")
        heads, cfg = load_heads(setting)
        ae_path = cfg.get("autoencoder", "")
        try:
            ae_id = file_hash(resolve_checkpoint(ae_path)[0]) if ae_path else None
        except CheckpointError:
            ae_id = None
        if ae_id != self.ae_id:
            if auto:
                return None
            raise DreamerError(f"heads {setting!r} were trained on the latents of autoencoder {ae_path!r}, "
                               f"not on this world model's ({self.config['autoencoder']!r}); retrain them "
                               "with python -m trainer heads on this autoencoder")
        return heads

    # ----------------------------------------------------------------- shapes and contexts
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        n = self.ae.cfg.image_size
        return (n, n, 3)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """No autocast: the weights were cast to the dream's precision once, at load (autocast under
        no_grad would re-cast every weight on every call). Kept as the callers' context."""
        return contextlib.nullcontext()

    # ----------------------------------------------------------------- batched operations
    def session(self, batch: int, generator: torch.Generator) -> Session:
        """A streamed rollout with ``batch`` rows (one KV-cache row per stream)."""
        return Session(self.model, batch, device=self.device, generator=generator)

    @torch.no_grad()
    def warm_up(self, batch: int = 1, frames: int = 3) -> None:
        """Run a throwaway ``batch``-row session of a few frames (prime, the first frame's steps, fused
        steps, decode) so that every kernel of the streaming step's fixed shapes is made now, at load,
        not while the first played frames are waited for (oneDNN builds a kernel per new shape; a
        compiled step compiles its graphs for this batch size: one frame per call and two, fused)."""
        c = self.model.cfg
        sess = self.session(batch, torch.Generator().manual_seed(0))
        sess.prime(torch.zeros(batch, 1, c.latent_channels, c.latent_size, c.latent_size, device=self.device),
                   torch.zeros(batch, 1, dtype=torch.long))
        acts = torch.zeros(batch, 1, dtype=torch.long)
        for _ in range(frames):
            z = sess.generate(acts, self.sampler, fuse=True)
            self.decode(z[:, 0].float())

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> fp32 latents (N, C, h, w) on the device (fp32 on every
        device: the latents the models were trained on)."""
        return self.ae.encode_frames(frames, batch=max(len(frames), 1))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Latents (N, C, h, w) -> uint8 frames (N, H, W, 3) on the host."""
        return self.ae.decode_frames(z, batch=max(len(z), 1))

    @torch.no_grad()
    def heads_view(self, z: torch.Tensor, frames: np.ndarray) -> torch.Tensor:
        """What the heads read of generated latents ``z`` whose decoded frames are ``frames``: ``z``
        itself, or with ``heads_input="frames"`` the frames encoded again (the heads then read the
        pixels the player sees, as they read recorded frames; one encoder pass per frame)."""
        if self.heads is None or self.heads_input == "latents":
            return z
        from model.autoencoder import from_uint8

        if self._heads_encoder is None:  # the encoder in the dream's precision, cast once (bf16: ~2.5x faster)
            import copy

            from model.precision import DTYPES, cast_for_inference

            self._heads_encoder = copy.deepcopy(self.ae.encoder)
            if self.precision != "fp32":
                cast_for_inference(self._heads_encoder, DTYPES[self.precision])
        enc = self._heads_encoder
        dtype = next(enc.parameters()).dtype
        x = from_uint8(torch.from_numpy(np.ascontiguousarray(frames))).to(self.device, dtype)
        with torch.no_grad():
            return self.ae.normalize(enc(x).float())

    def outcomes(self, z_prev: torch.Tensor, z: torch.Tensor, actions: torch.Tensor
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(rewards float64, terminated bool) of the N transitions ``z_prev -> z`` under ``actions``
        (N,): the heads' predictions, zeros and False without heads."""
        if self.heads is None:
            return np.zeros(len(z), np.float64), np.zeros(len(z), bool)
        r, t = self.heads.predict(z_prev, z, actions)
        return r.cpu().numpy().astype(np.float64), t.cpu().numpy().astype(bool)
