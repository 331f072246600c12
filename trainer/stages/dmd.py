"""Stage 3: DMD with self-rollout (the Self Forcing recipe; docs/ALGORITHMS.md section 4).

The generator (a Stage 2 student) rolls a clip out autoregressively exactly as at inference:
``context`` real frames written to its KV cache, then each block denoised with its few-step
consistency sampler (the first generated block with ``first_frame_steps``), the clean output
written back to the cache at sigma = 0 without grad. One exit step is drawn per rollout:
steps before it run without grad, the exit step's x0 prediction (with grad) is the output.

The real score is the frozen AR teacher (teacher-forced on the generated clip, CFG on
actions); the fake score is a copy trained online with the flow-matching loss on generator
outputs, ``critic_updates`` updates per generator update (its weights and optimizer are in
the checkpoint). The generator's EMA (``train.ema_decay``) is the inference model.

One training step, in the loop's order: ``critic_step`` (the self-rollout, then the fake
score's own optimizer steps on it; the loop calls it before the loss), ``loss`` (the
distribution-matching loss of the rollout against both scores), then the loop's backward and
optimizer step of the generator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from model import flow
from model.distill import dmd_gradient, dmd_loss, dmd_sigma
from model.rollout import Session
from model.transformer import FrameTransformer, KVCache, TransformerConfig
from trainer.config import from_dict
from trainer.distributed import DistInfo
from trainer.loop import TrainConfig
from trainer.stages.autoencoder import DataConfig
from trainer.stages.common import distilled_world_config, few_step_eval, load_teacher, teacher_shift
from trainer.stages.teacher import (
    ClipData,
    TeacherForcing,
    TeacherLossConfig,
    teacher_forcing_loss,
)


@dataclass
class DMDConfig:
    steps: int = 2                # the generator's sampling steps
    first_frame_steps: int = 4    # steps for the first generated block (paper trick for 1-2 steps)
    context: int = 1              # real frames the rollout starts from
    real_cfg: float = 1.0         # CFG of the real score (the teacher)
    critic_updates: int = 5       # fake-score updates per generator update (paper: 5)
    critic_lr: float = 1e-4
    sigma_min: float = 0.02
    sigma_max: float = 0.98
    shift: float = 0.0            # 0 = the teacher's
    # rollouts past the clip (Self-Forcing++'s long rollouts): before the clip's frames are generated,
    # the generator plays a prefix of P frames from the clip's context, P drawn per step from
    # 0..rollout_frames - frames (a multiple of the block size), without grad, under uniformly random
    # actions, with its cache rolling as at inference; the loss then falls on the clip's frames,
    # generated after it. 0 = no prefix (every rollout starts from real frames)
    rollout_frames: int = 0


@dataclass
class DMDExperiment:
    stage: str = "dmd"
    run_dir: str = "runs/adventure_cfpp_frame2"
    world: str = "adventure"
    generator: str = "runs/adventure_cd_frame"
    teacher: str = "assets/checkpoints/adventure_teacher.safetensors"
    latent_cache_dir: str = "data/latents"
    frames: int = 8
    data: DataConfig = field(default_factory=DataConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_windows: int = 64
    eval_steps: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        self.eval_steps = tuple(self.eval_steps)


def rollout_actions(actions: torch.Tensor, prefix: torch.Tensor | None, context: int) -> torch.Tensor:
    """The actions (B, C + P + F - C) of a self-rollout with a prefix: the clip's ``context`` frames'
    actions, the prefix's P actions, then the rest of the clip's (``actions`` itself without a prefix)."""
    if prefix is None or prefix.shape[1] == 0:
        return actions
    return torch.cat([actions[:, :context], prefix.to(actions.device), actions[:, context:]], 1)


def clip_actions(actions: torch.Tensor, prefix: torch.Tensor | None, context: int) -> torch.Tensor:
    """The actions (B, F) of the clip the scores see after a self-rollout with a prefix: those of the
    C frames before the generated ones (the prefix's last C, under their own actions), then the
    generated frames' (the clip's)."""
    P = 0 if prefix is None else prefix.shape[1]
    return rollout_actions(actions, prefix, context)[:, P:]


def self_rollout(net: FrameTransformer, context: torch.Tensor, actions: torch.Tensor, steps: int,
                 first_steps: int, shift: float, exit_step: int, gen: torch.Generator,
                 prefix_actions: torch.Tensor | None = None) -> torch.Tensor:
    """Generate frames ``context.shape[1]..F-1`` of a clip as at inference; only the exit step of
    each block carries grad. Returns (B, F, ...): the C frames before the generated ones
    (detached), then the generated clean latents (B, F - C, ...).

    With ``prefix_actions`` (B, P), P frames are first generated from the context under those
    actions, every step without grad, and the clip's frames follow them: the C frames returned
    first are then the prefix's last C frames (the real context when P = 0).

    The KV cache is kept as at inference, by a :class:`~model.rollout.Session`: ``prime`` writes
    the real context, ``write`` each finished block at sigma = 0 (both without grad). Each block
    is sampled by :func:`exit_step_sample`, not by ``Session.generate`` (see there why)."""
    B, C = context.shape[:2]
    P = 0 if prefix_actions is None else prefix_actions.shape[1]
    actions = rollout_actions(actions, prefix_actions, C)
    F = actions.shape[1]
    K = net.cfg.block_frames
    dev = context.device
    session = Session(net, B, dev, cache="dynamic")
    session.prime(context, actions[:, :C])
    before: list[torch.Tensor] = [context]  # the frames the clip's first generated one follows
    outs: list[torch.Tensor] = []
    while session.t < F:
        k = min(K, F - session.t)
        times = torch.arange(session.t, session.t + k)
        a = actions[:, session.t:session.t + k]
        sigmas = flow.step_list(first_steps if session.t == C and first_steps else steps, shift)
        noise = torch.randn((B, k, *context.shape[2:]), generator=gen).to(dev)
        if session.t < C + P:  # the prefix: every step without grad, the whole sampler
            with torch.no_grad():
                x0 = exit_step_sample(net, session.cache, noise, a, times, sigmas, len(sigmas) - 1, gen)
            before.append(x0)
        else:
            x0 = exit_step_sample(net, session.cache, noise, a, times, sigmas, exit_step, gen)
            outs.append(x0)
        session.write(x0.detach(), a)
    return torch.cat([torch.cat(before, 1)[:, -C:].detach(), *outs], 1)


def exit_step_sample(net: FrameTransformer, cache: KVCache, noise: torch.Tensor, actions: torch.Tensor,
                     times: torch.Tensor, sigmas: list[float], exit_step: int, gen: torch.Generator) -> torch.Tensor:
    """The few-step consistency sampler of one block (the steps of ``flow.sample_consistency``:
    predict x0 at each sigma, re-noise it with fresh noise to the next), attending to ``cache``
    and stopped at the exit step (clamped to the step list): the steps before it run without
    grad; the exit step's x0 prediction carries grad and is the block's output; later steps are
    skipped.

    Not ``Session.generate`` / ``flow.sample_consistency``: those run every step, without grad,
    and draw the re-noising noise on the model's device. Here it is drawn on the host from
    ``gen`` (the stage's CPU generator, saved in its resumable state) and then moved, as the
    block's initial noise is."""
    B, k = noise.shape[:2]
    dev = noise.device
    noisy = torch.zeros(k, dtype=torch.bool)
    exit_at = min(exit_step, len(sigmas) - 1)
    x = x0 = noise
    for i, s in enumerate(sigmas):
        sig = torch.full((B, k), float(s), device=dev)
        if i < exit_at:
            with torch.no_grad():
                x0 = flow.x0_from_v(x, sig, net(x, sig, actions, times, noisy, cache=cache).float())
            eps = torch.randn(x0.shape, generator=gen).to(dev)
            x = flow.add_noise(x0, eps, torch.full((B, k), float(sigmas[i + 1]), device=dev))
        else:
            x0 = flow.x0_from_v(x, sig, net(x, sig, actions, times, noisy, cache=cache).float())
            break
    return x0


class SelfRollout(NamedTuple):
    """A DMD step's batch after :meth:`DMDStage.critic_step`: the real clip and its actions, the
    generated frames (with the exit step's grad), the exit step, the critic's mean loss, and the
    frames the generated ones follow (the clip's real context, or a prefix's last frames).
    ``actions`` are those of ``[before || generated]``."""
    x0: torch.Tensor
    actions: torch.Tensor
    generated: torch.Tensor
    exit_step: int
    fake_loss: float
    before: torch.Tensor


class GeneratorModule(TeacherForcing):
    """The generator as DDP/FSDP see it: ``forward(rollout=...)`` runs the whole self-rollout,
    so that the one forward with grad goes through the wrapper (gradient sync, unsharding)."""

    def forward(self, *args: Any, rollout: tuple[Any, ...] | None = None) -> torch.Tensor:  # type: ignore[override]
        if rollout is not None:
            return self_rollout(self.net, *rollout)
        return super().forward(*args)


class DMDStage:
    name = "dmd"
    fsdp_blocks = False  # the rollout calls each block many times per forward: one FSDP unit

    def __init__(self, cfg: DMDExperiment) -> None:
        self.cfg = cfg
        teacher, tcfg = load_teacher(cfg.teacher)
        generator, gcfg = load_teacher(cfg.generator)
        self.teacher_config = tcfg
        self.shift = teacher_shift(tcfg, cfg.dmd.shift)
        self.model_cfg = from_dict(TransformerConfig, dict(gcfg["model"]), "generator model")
        if cfg.dmd.context < 1 or cfg.dmd.context % self.model_cfg.block_frames or cfg.dmd.context >= cfg.frames:
            raise ValueError(f"dmd.context={cfg.dmd.context} must be >= 1, a multiple of the generator's block size "
                             f"({self.model_cfg.block_frames}) and below frames={cfg.frames}")
        if cfg.dmd.rollout_frames and cfg.dmd.rollout_frames < cfg.frames:
            raise ValueError(f"dmd.rollout_frames={cfg.dmd.rollout_frames} must be 0 (no prefix) or at least "
                             f"frames={cfg.frames}")
        self.data = ClipData(tcfg["autoencoder"], cfg.data, cfg.frames, cfg.latent_cache_dir, self.model_cfg,
                             cfg.eval_windows, cfg.train.seed)
        self.real = TeacherForcing(teacher).requires_grad_(False).eval()
        self.fake = TeacherForcing(copy.deepcopy(teacher)).requires_grad_(True)
        if getattr(self.fake.net, "taken_head", None) is not None:  # not trained by the fake-score loss
            self.fake.net.taken_head.requires_grad_(False)
        self.fake_opt = torch.optim.AdamW(self.fake.parameters(), lr=cfg.dmd.critic_lr, betas=(0.9, 0.99))
        self.fake_train: nn.Module = self.fake  # DDP around it with several processes (parallelize)
        self.generator = GeneratorModule(generator.requires_grad_(True))
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.fm = TeacherLossConfig(shift=self.shift, action_dropout=0.0, change_weight=0.0)

    def config_extra(self) -> dict[str, Any]:
        return distilled_world_config(self.model_cfg, self.teacher_config, self.shift,
                                      {"steps": self.cfg.dmd.steps, "first_frame_steps": self.cfg.dmd.first_frame_steps})

    def model(self) -> nn.Module:
        return self.generator

    def parallelize(self, par: Any) -> None:
        """The critic trains on every rank: its gradients are averaged (DDP) in both modes."""
        self.fake_train = par.replicate(self.fake)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"fake_score": self.fake}

    def tokens_per_sample(self) -> int:
        return self.cfg.frames * self.model_cfg.tokens_per_frame

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.next_batch(batch_size, info)

    def _clip(self, before: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        return torch.cat([before, generated], 1)

    def _prefix_actions(self, batch: int) -> torch.Tensor | None:
        """Uniformly random actions for this step's prefix (None: no prefix), its length drawn
        from 0..rollout_frames - frames in blocks."""
        spare = self.cfg.dmd.rollout_frames - self.cfg.frames
        K = self.model_cfg.block_frames
        if spare < K:
            return None
        P = K * int(torch.randint(0, spare // K + 1, (1,), generator=self.gen))
        if not P:
            return None
        return torch.randint(0, self.model_cfg.num_actions, (batch, P), generator=self.gen)

    def critic_step(self, model: nn.Module, batch: Any, step: int) -> SelfRollout:
        """Before the generator's loss (the loop calls it): roll the generator out once (its exit
        step's graph kept for :meth:`loss`), then take the fake score's ``critic_updates`` optimizer
        steps (its own AdamW) on that rollout, so that it learns the generator's current
        distribution (flow matching). Returns the batch :meth:`loss` is computed on."""
        x0, actions = batch
        C = self.cfg.dmd.context
        exit_step = int(torch.randint(0, max(self.cfg.dmd.steps, 1), (1,), generator=self.gen))
        prefix = self._prefix_actions(x0.shape[0])
        out = model(rollout=(x0[:, :C], actions, self.cfg.dmd.steps, self.cfg.dmd.first_frame_steps, self.shift,
                             exit_step, self.gen, prefix))
        before, g = out[:, :C].detach(), out[:, C:]  # a slice of the cat would link back to its graph
        clip_acts = clip_actions(actions, prefix, C)  # from the frames before the generated ones on
        clip = self._clip(before, g.detach())
        fake_losses = []
        for _ in range(self.cfg.dmd.critic_updates):
            fl, _ = teacher_forcing_loss(self.fake_train, clip, clip_acts, self.fm, self.model_cfg.null_action,
                                         self.gen)
            self.fake_opt.zero_grad(set_to_none=True)
            fl.backward()
            torch.nn.utils.clip_grad_norm_(self.fake.parameters(), 1.0)
            self.fake_opt.step()
            fake_losses.append(float(fl.detach()))
        return SelfRollout(x0, clip_acts, g, exit_step, sum(fake_losses) / max(len(fake_losses), 1), before)

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's distribution-matching loss on the rollout of :meth:`critic_step` (``batch``),
        the real score (the teacher) against the fake score, on the clip noised at one sigma."""
        if not isinstance(batch, SelfRollout):
            raise TypeError("DMDStage.loss takes the SelfRollout that critic_step returns for the batch "
                            "(call stage.critic_step(model, batch, step) first, as trainer.loop.train does)")
        x0, actions, g, exit_step, fake_loss, before = batch
        B, F = x0.shape[:2]
        C = self.cfg.dmd.context
        dev = x0.device
        clip = self._clip(before, g.detach())
        s = dmd_sigma(B, self.shift, self.cfg.dmd.sigma_min, self.cfg.dmd.sigma_max, self.gen).to(dev)
        sigma = s[:, None].expand(B, F)
        eps = torch.randn(clip.shape, generator=self.gen).to(dev)
        noisy = flow.add_noise(clip, eps, sigma)
        zeros = torch.zeros(B, F, device=dev)
        with torch.no_grad():
            v_r = self.real(clip, noisy, sigma, actions, zeros).float()
            if self.cfg.dmd.real_cfg != 1.0:
                null = torch.full_like(actions, self.model_cfg.null_action)
                v_ru = self.real(clip, noisy, sigma, null, zeros).float()
                v_r = flow.cfg_velocity(v_r, v_ru, self.cfg.dmd.real_cfg)
            x0_real = flow.x0_from_v(noisy, sigma, v_r)[:, C:]
            x0_fake = flow.x0_from_v(noisy, sigma, self.fake(clip, noisy, sigma, actions, zeros).float())[:, C:]
            grad = dmd_gradient(g.detach(), x0_fake, x0_real)
        loss = dmd_loss(g, grad)
        return loss, {"fake_loss": fake_loss, "exit_step": float(exit_step), "dmd_grad_norm": float(grad.abs().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return few_step_eval(model, self.data, self.cfg.eval_steps, self.shift, self.cfg.train.precision)

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.data.sampler.state(), "gen": self.gen.get_state(),
                "fake_opt": self.fake_opt.state_dict()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.data.sampler.load_state(state["sampler"])
        self.gen.set_state(state["gen"])
        self.fake_opt.load_state_dict(state["fake_opt"])
