"""Streaming generation with the KV cache: the loop shared by evaluation, distillation and play.

A session holds the transformer's cache of finished frames. ``prime`` writes real context
latents into it; ``generate`` denoises the next frame (or block of K frames) with either
the multi-step Euler sampler with action CFG (the teacher) or the few-step consistency
sampler (the students), then writes the clean result into the cache with one more forward
at sigma = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from model import flow
from model.transformer import FrameTransformer, KVCache, RingKVCache


@dataclass
class SamplerConfig:
    kind: str = "euler"      # "euler" (multi-step ODE, CFG) or "consistency" (few-step)
    steps: int = 48
    cfg: float = 1.0         # action guidance scale (consistency: on each step's x0, off at 1.0)
    shift: float = 3.0
    first_frame_steps: int = 0  # consistency: steps for the first generated frame (0 = same)
    # noise level at which generated frames enter the cache, told to the model (0 = clean): a model
    # trained with memory spans (teacher loss.memory_span) trusts real frames above its own
    context_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("euler", "consistency"):
            raise ValueError(f"sampler kind must be 'euler' or 'consistency', got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.context_sigma < 1.0:
            raise ValueError(f"sampler context_sigma must be in [0, 1), got {self.context_sigma}")

    @classmethod
    def from_card(cls, card: dict[str, Any], kind: str | None = None, steps: int | None = None,
                  first_frame_steps: int | None = None, cfg: float | None = None, shift: float | None = None,
                  default_steps: int = 48, context_sigma: float | None = None) -> SamplerConfig:
        """The sampler a model card plays with, each field overridable (None: the card's).

        The one rule: the card's ``sampler`` section (a distilled student's few-step consistency
        sampler; a card without one is a teacher's: euler) gives the kind; its steps, first-frame
        steps and action guidance apply only to a sampler of the card's own kind (a student's
        2 steps or guidance are not a teacher's), else ``default_steps``, 0 and 1 (off). The shift
        is the card's training shift; ``context_sigma`` the card's ``loss.generated_sigma`` (the level
        the model was trained to read its own frames at), 0 without one."""
        from model.io import card_guidance

        own = card.get("sampler") or {}
        kind = kind or own.get("kind", "euler")
        mine = bool(own) and own.get("kind", "euler") == kind
        steps = steps or (int(own.get("steps", default_steps)) if mine else default_steps)
        if first_frame_steps is None:
            first_frame_steps = int(own.get("first_frame_steps", 0)) if mine and kind == "consistency" else 0
        loss = card.get("loss") or {}
        return cls(kind=kind, steps=steps, cfg=cfg if cfg is not None else card_guidance(card, kind),
                   shift=shift if shift is not None else float(loss.get("shift", 3.0)),
                   first_frame_steps=first_frame_steps,
                   context_sigma=float(loss.get("generated_sigma", 0.0)) if context_sigma is None else context_sigma)


class Session:
    """One (batched) streamed rollout over a FrameTransformer."""

    def __init__(self, model: FrameTransformer, batch: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
                 cache: str = "ring") -> None:
        if cache not in ("ring", "dynamic"):
            raise ValueError(f"cache must be 'ring' (preallocated, fixed shapes) or 'dynamic', got {cache!r}")
        self.model = model
        self.cfg = model.cfg
        ring = cache == "ring" and model.cfg.window >= 2
        self._cache_cls = RingKVCache if ring else KVCache
        self.cache: KVCache | RingKVCache = self._cache_cls(model.cfg)
        self.batch = batch
        self.device = torch.device(device)
        self.dtype = dtype
        self.t = 0  # time index of the next frame
        self.generated = 0
        self.gen = generator
        # fused cache write: a finished frame (latents, actions, times, noise levels) waits here and is
        # written by the next frame's first model call (one forward instead of two); None when
        # everything is in the cache
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        # a pose_taken model: whether each frame of the block being denoised took its pressed move, as
        # the model's taken head read it at the latest conditional call ((B, K) bool; None: not read)
        self.taken: torch.Tensor | None = None
        # the keys pressed for the block being denoised (B, K): what a pose model's frames follow
        self.pressed: torch.Tensor | None = None

    def _shape(self, frames: int) -> tuple[int, ...]:
        c = self.cfg
        return (self.batch, frames, c.latent_channels, c.latent_size, c.latent_size)

    @torch.no_grad()
    def flush(self) -> None:
        """Write a pending finished frame into the cache now (unfused)."""
        if self.pending is None:
            return
        lat, acts, times, sigma, taken = self.pending
        self.pending = None
        self.model(lat, sigma, acts, times, torch.ones(len(times), dtype=torch.bool), cache=self.cache,
                   write_cache=True, taken=taken)

    @torch.no_grad()
    def write(self, latents: torch.Tensor, actions: torch.Tensor, defer: bool = False, sigma: float = 0.0,
              taken: torch.Tensor | None = None) -> None:
        """Write frames (B, F, C, h, w) with their actions (B, F) into the cache, at noise level
        ``sigma`` (0: clean; the latents are expected noised already); with ``defer`` they are
        written by the next frame's first model call (fused). ``taken`` (B, F) bool: which pressed
        moves the world took (the poses of a ``pose_taken`` model; default all, or a real game's
        effective actions when the caller has them)."""
        self.flush()
        F = latents.shape[1]
        sig = torch.full((self.batch, F), float(sigma), device=self.device, dtype=self.dtype)
        self.pending = (latents.to(self.device, self.dtype), actions.to(self.device), torch.arange(self.t, self.t + F),
                        sig, None if taken is None else taken.bool().cpu())
        self.t += F
        if not defer:
            self.flush()

    prime = write

    @torch.no_grad()
    def write_generated(self, latents: torch.Tensor, actions: torch.Tensor, sampler: SamplerConfig,
                        defer: bool = False, taken: torch.Tensor | None = None) -> None:
        """Write the model's own finished frames: clean, or noised to ``sampler.context_sigma`` and
        marked so (the level a memory-trained model was taught to trust less than real frames);
        ``taken``: as :meth:`write` (the model's own reading, from :meth:`generate`)."""
        s = sampler.context_sigma
        if s > 0:
            eps = torch.randn(latents.shape, generator=self.gen, dtype=torch.float32).to(latents.device, latents.dtype)
            latents = flow.add_noise(latents, eps, torch.full(latents.shape[:2], s, device=latents.device,
                                                               dtype=latents.dtype))
        self.write(latents, actions, defer=defer, sigma=s, taken=taken)

    def _velocity(self, times: torch.Tensor):
        K = len(times)
        noisy = torch.zeros(K, dtype=torch.bool)

        read = self.cfg.pose_taken
        null = self.cfg.null_action

        def keep(out, actions: torch.Tensor, P: int = 0) -> torch.Tensor:
            if not read:
                return out
            out, logits = out
            if logits is not None and not bool((actions == null).all()):  # a conditional call
                self.taken = self.model.taken_decision(logits[:, P:]).cpu()
            return out

        def v(x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            B = x.shape[0]
            if B == self.batch and self.pending is not None:  # fused: write the last frame, denoise this
                lat, acts, ptimes, psigma, ptaken = self.pending
                self.pending = None
                P = lat.shape[1]
                if ptaken is not None:
                    ptaken = torch.cat([ptaken, torch.ones(B, K, dtype=torch.bool)], 1)
                out = keep(self.model(torch.cat([lat, x], 1), torch.cat([psigma.to(sigma.dtype), sigma], 1),
                                      torch.cat([acts, actions], 1), torch.cat([ptimes, times]),
                                      torch.cat([torch.ones(P, dtype=torch.bool), noisy]), cache=self.cache,
                                      write_cache=True, taken=ptaken, return_taken=read), actions, P)
                return out[:, P:].to(x.dtype)
            if B == self.batch:
                poses = None
                if self.cfg.pose_moves is not None and self.pressed is not None and not torch.equal(actions, self.pressed):
                    # guidance's null-action call: its frame stands where the pressed keys put it, as in
                    # training, where dropped action tokens keep the pressed moves' poses
                    poses = self.model.call_poses(self.pressed, times, noisy, self.cache)
                return keep(self.model(x, sigma, actions, times, noisy, cache=self.cache, return_taken=read,
                                       poses=poses), actions).to(x.dtype)
            self.flush()  # CFG batches cond and uncond: write the pending frame once, first
            # CFG batches cond and uncond along the batch: run them one after the other
            # against the same cache (the cache is per batch element).
            return torch.cat([v(x[i:i + self.batch], sigma[i:i + self.batch], actions[i:i + self.batch])
                              for i in range(0, B, self.batch)])
        return v

    @torch.no_grad()
    def generate(self, actions: torch.Tensor, sampler: SamplerConfig, write: bool = True,
                 fuse: bool = False) -> torch.Tensor:
        """Denoise the next block of frames given their actions (B, K); returns clean latents.
        With ``fuse`` the finished block is written to the cache by the next block's first model
        call (``pending``) instead of by a forward of its own."""
        K = actions.shape[1]
        times = torch.arange(self.t, self.t + K)
        noise = torch.randn(self._shape(K), generator=self.gen, dtype=torch.float32).to(self.device, self.dtype)
        actions = actions.to(self.device)
        self.taken = None
        self.pressed = actions
        v = self._velocity(times)
        if sampler.kind == "euler":
            null = torch.full_like(actions, self.cfg.null_action)
            sig = flow.sigma_grid(sampler.steps + 1, sampler.shift)
            x0 = _euler_cfg(v, noise, actions, null, sig, sampler.cfg)
        else:
            steps = sampler.steps
            if self.generated == 0 and sampler.first_frame_steps:
                steps = sampler.first_frame_steps
            if sampler.cfg != 1.0:  # guidance on each step's prediction (x0 is affine in v at one sigma)
                v = _guided(v, torch.full_like(actions, self.cfg.null_action), sampler.cfg)
            x0 = flow.sample_consistency(v, noise, actions, flow.step_list(steps, sampler.shift), self.gen)
        if write:
            self.write_generated(x0, actions, sampler, defer=fuse, taken=self.taken)
        self.generated += K
        return x0

    @torch.no_grad()
    def reset_rows(self, rows: torch.Tensor, latents: torch.Tensor) -> None:
        """Restart some rows of a batched session (e.g. a vector env's autoreset) from a start
        frame (R, C, h, w): their whole cached history becomes that frame held still (NOOP) at
        the cached times, so the other rows stream on undisturbed in the same batch."""
        self.flush()
        if self.cache.num_frames == 0:
            raise RuntimeError("reset_rows needs a primed session (call prime first)")
        times = self.cache.times
        n, R = len(times), len(rows)
        sub = self._cache_cls(self.cfg)
        if isinstance(sub, RingKVCache):
            sub.compiled = False  # R rows, a shape of its own: not worth a compile
        x = latents.to(self.device, self.dtype)[:, None].expand(R, n, *latents.shape[1:])
        sigma = torch.zeros(R, n, device=self.device, dtype=self.dtype)
        acts = torch.zeros(R, n, dtype=torch.long, device=self.device)
        self.model(x, sigma, acts, times, torch.ones(n, dtype=torch.bool), cache=sub, write_cache=True)
        if not torch.equal(sub.times, times):
            raise RuntimeError("reset_rows: the rebuilt history does not cover the cached times")
        idx = rows.to(self.device)
        if self.cfg.pose_moves is not None:  # the rebuilt history stands still at pose 0
            own = self.cache.key_poses(self.batch).clone()
            own[rows.cpu()] = sub.key_poses(R)
            if isinstance(self.cache, RingKVCache):
                self.cache.slot_poses = own
            else:
                self.cache.poses = own
        for i, kv in enumerate(self.cache.layers):
            assert kv is not None and sub.layers[i] is not None
            kv[0].index_copy_(0, idx, sub.layers[i][0].to(kv[0].dtype))
            kv[1].index_copy_(0, idx, sub.layers[i][1].to(kv[1].dtype))

    def snapshot(self) -> dict[str, object]:
        return {"cache": self.cache.state(), "t": self.t, "generated": self.generated,
                "gen": None if self.gen is None else self.gen.get_state(),
                "pending": None if self.pending is None else tuple(None if t is None else t.clone()
                                                                   for t in self.pending)}

    def restore(self, snap: dict[str, object]) -> None:
        self.cache.load_state(snap["cache"])  # type: ignore[arg-type]
        self.t = int(snap["t"])  # type: ignore[arg-type]
        self.generated = int(snap["generated"])  # type: ignore[arg-type]
        if self.gen is not None and snap["gen"] is not None:
            self.gen.set_state(snap["gen"])  # type: ignore[arg-type]
        pending = snap.get("pending")
        self.pending = None if pending is None else tuple(  # type: ignore[assignment]
            None if t is None else t.clone() for t in pending)  # type: ignore[union-attr]


def _guided(v, null: torch.Tensor, scale: float):
    """The velocity function with action CFG: conditional and null-action calls in one batch."""
    def vg(x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        both = v(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([actions, null]))
        return flow.cfg_velocity(both[:B], both[B:], scale)
    return vg


def _euler_cfg(v, noise: torch.Tensor, actions: torch.Tensor, null: torch.Tensor, sigmas: torch.Tensor,
               scale: float) -> torch.Tensor:
    """The Euler solve of the PF-ODE from ``noise`` over ``sigmas``, with action CFG when ``scale`` != 1."""
    x = noise
    B, F = noise.shape[:2]
    vel_of = _guided(v, null, scale) if scale != 1.0 else v
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        sigma = torch.full((B, F), s, dtype=x.dtype, device=x.device)
        x = flow.euler_step(x, vel_of(x, sigma, actions), s, s_next)
    return x
