"""Stage 1: the AR teacher, trained with teacher forcing (docs/ALGORITHMS.md section 2).

Input = [clean x0[0..F-1] || noisy x_t[0..F-1]] with shared times; each noisy frame draws
its own sigma; the loss is MSE on velocity over the noisy half, with tokens weighted up by
how much they change from the previous frame (so a small model cannot win on the static
background and erase what moves). Actions are dropped to the null action with
probability ``action_dropout`` per frame (for classifier-free guidance); optional context
noise augmentation gives the clean history a small noise level that the model is told.

Frames are encoded once by the frozen autoencoder and cached on disk as latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from model import flow
from model.transformer import FrameTransformer, TransformerConfig
from trainer.data import EpochSampler, split_episodes, window_index
from trainer.distributed import DistInfo
from trainer.judge import ActionJudge, judge_loss
from trainer.latents import LatentCache, load_autoencoder
from trainer.loop import TrainConfig, autocast
from trainer.stages.autoencoder import DataConfig


@dataclass
class TeacherLossConfig:
    shift: float = 3.0               # timestep shift of the training sigma distribution
    action_dropout: float = 0.1      # per-frame probability of the null action
    context_noise: float = 0.0       # max sigma of context noise augmentation (0 = off)
    context_noise_prob: float = 0.5  # share of clips that get context noise
    change_weight: float = 4.0       # token weight = 1 + change_weight * (change / mean change)
    # memory spans: a clip's run of up to memory_span context frames is noised to a level in
    # [memory_sigma, 1] (the model is told it), so that frames after it must take what they need
    # from before it: how a long window learns to recall a place that left the view (0 = off)
    memory_span: int = 0
    memory_prob: float = 0.5         # share of clips with a span
    memory_sigma: float = 0.3        # lowest noise level of a span's frames
    # the level the model's own generated frames enter its cache at, in every rollout (the sampler
    # reads it from the card: model.rollout.SamplerConfig.from_card); 0 = clean
    generated_sigma: float = 0.0
    # rollout spans: in a share of the steps (rollout_prob), a run of rollout_span/2..rollout_span
    # context frames is replaced by the model's own frames, generated (no grad, rollout_steps Euler
    # steps, the real actions) from the real frames before the run. The frames after it still have
    # real targets, so the model learns to pull its drifted frames back to the place its older real
    # frames show: teacher forcing never shows it its own drift (0 = off)
    rollout_span: int = 0
    rollout_prob: float = 0.5
    rollout_steps: int = 4
    # a pose_taken model's taken head: weight of its binary cross-entropy against the data's effective
    # actions (was each frame's pressed move taken?), over the frames whose pressed key moves
    taken_weight: float = 0.1
    # average the head's loss over the taken and the blocked moves separately (each half the weight):
    # blocked moves are about 2% of a recorded dataset, and an unweighted loss leaves the head at
    # "always taken" (docs/TRAINING_LOG.md, tenth session)
    taken_balance: bool = False
    # latent cells weighted by the sprites' motion too: cell weight += motion_weight * (motion / mean
    # motion), motion being the frame's change once the view's scroll is taken out (trainer.motion), so
    # that the player and the creatures weigh where the view stands still as where it scrolls (0 = off)
    motion_weight: float = 0.0
    # the action judge (trainer/judge.py): cross-entropy of the frozen IDM's reading of the model's
    # predicted clean frames (decoded by the frozen autoencoder) against the data's effective actions,
    # on up to idm_frames frames a clip whose noise level is below idm_max_sigma and whose action was
    # not dropped; needs the experiment's ``idm`` (0 = off)
    idm_weight: float = 0.0
    idm_frames: int = 4
    idm_max_sigma: float = 1.0
    # idm_steps >= 2: the judge reads the frames the sampler is drawing instead (idm_max_sigma unused: the
    # stop levels are the grid's), on the batch's first idm_clips clips: each noisy frame is sampled from
    # pure noise (no grad) along an idm_steps-step Euler grid, stopped after a random 1..idm_steps-1
    # steps, and the model's prediction there is judged, so the loss reaches the moves a sample has
    # already half committed to (0 = the teacher-forcing batch's own predictions)
    idm_steps: int = 0
    idm_clips: int = 2
    # the sampled judge's clips cut to their first idm_prefix frames (0 = whole clips): frames drawn
    # from a short real history, as the evaluation draws its first frames after 4 context frames
    idm_prefix: int = 0
    # the sampled judge on the model's own rollouts (0 = off): of each judged clip only the first
    # idm_rollout_from frames are real; the rest, up to idm_prefix, are the model's own (generated
    # without grad, idm_rollout_steps Euler steps, the clip's actions, as in rollout_span), and the
    # judge reads the frames drawn after them, each against the generated frame before it: the
    # controls idm_prefix - idm_rollout_from steps deep into a rollout, where the evaluation's
    # 16-step episodes lose them (needs idm_steps >= 2 and idm_prefix > idm_rollout_from + 1)
    idm_rollout_from: int = 0
    idm_rollout_steps: int = 4

    def __post_init__(self) -> None:
        if self.idm_weight < 0 or self.idm_frames < 1 or not 0 < self.idm_max_sigma <= 1:
            raise ValueError(f"loss.idm_weight must be >= 0, idm_frames >= 1 and idm_max_sigma in (0, 1]; got "
                             f"{self.idm_weight}, {self.idm_frames}, {self.idm_max_sigma}")
        if self.idm_steps == 1 or self.idm_steps < 0 or self.idm_clips < 1 or self.idm_prefix == 1 \
                or self.idm_prefix < 0:
            raise ValueError(f"loss.idm_steps must be 0 (off) or >= 2, idm_clips >= 1 and idm_prefix 0 (whole clips) "
                             f"or >= 2; got {self.idm_steps}, {self.idm_clips}, {self.idm_prefix}")
        if self.idm_rollout_from and (self.idm_rollout_from < 1 or self.idm_steps < 2
                                      or self.idm_prefix < self.idm_rollout_from + 2 or self.idm_rollout_steps < 1):
            raise ValueError(f"loss.idm_rollout_from {self.idm_rollout_from} needs idm_steps >= 2 (got {self.idm_steps}), "
                             f"idm_prefix >= idm_rollout_from + 2 (got {self.idm_prefix}) and idm_rollout_steps >= 1 "
                             f"(got {self.idm_rollout_steps}); set loss.idm_rollout_from: 0 to judge real histories")
        if self.motion_weight < 0:
            raise ValueError(f"loss.motion_weight must be >= 0, got {self.motion_weight}")
        if self.taken_weight < 0:
            raise ValueError(f"loss.taken_weight must be >= 0, got {self.taken_weight}")
        if self.memory_span < 0 or not 0 <= self.memory_prob <= 1 or not 0 <= self.memory_sigma <= 1:
            raise ValueError(f"loss.memory_span must be >= 0, memory_prob and memory_sigma in [0, 1]; got "
                             f"{self.memory_span}, {self.memory_prob}, {self.memory_sigma}")
        if not 0 <= self.generated_sigma < 1:
            raise ValueError(f"loss.generated_sigma must be in [0, 1), got {self.generated_sigma}")
        if self.rollout_span < 0 or not 0 <= self.rollout_prob <= 1 or self.rollout_steps < 1:
            raise ValueError(f"loss.rollout_span must be >= 0, rollout_prob in [0, 1] and rollout_steps >= 1; "
                             f"got {self.rollout_span}, {self.rollout_prob}, {self.rollout_steps}")


@dataclass
class TeacherExperiment:
    stage: str = "teacher"
    run_dir: str = "runs/adventure_teacher"
    world: str = "adventure"
    autoencoder: str = "runs/adventure_ae"   # a run folder, checkpoint folder or .safetensors
    latent_cache_dir: str = "data/latents"
    frames: int = 8
    data: DataConfig = field(default_factory=DataConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    loss: TeacherLossConfig = field(default_factory=TeacherLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_windows: int = 64
    # start from these weights (a run, checkpoint or shipped .safetensors with the same model config),
    # e.g. to continue training the shipped teacher in a new session; ignored when the run resumes
    init: str = ""
    # the inverse-dynamics model of loss.idm_weight's action judge (a run, checkpoint or .safetensors)
    idm: str = ""

    def __post_init__(self) -> None:
        if self.loss.idm_weight > 0 and not self.idm:
            raise ValueError(f"loss.idm_weight {self.loss.idm_weight} needs the world's inverse-dynamics model: set "
                             "idm (e.g. assets/checkpoints/adventure_idm.safetensors) or loss.idm_weight: 0")


def token_change_weights(x0: torch.Tensor, change_weight: float, motion: torch.Tensor | None = None,
                         motion_weight: float = 0.0) -> torch.Tensor:
    """(B, F, 1, h, w) weights: 1 + k * change/mean(change) (+ m * motion/mean(motion) with ``motion``
    (B, F, h, w) and ``motion_weight`` m), normalised to mean 1.

    The change of frame i is the mean absolute latent difference to frame i-1 per token
    (frame 0 takes frame 1's); the motion, the same in pixels once the view's scroll is taken out
    (:mod:`trainer.motion`).
    """
    diff = (x0[:, 1:] - x0[:, :-1]).abs().mean(2, keepdim=True)
    diff = torch.cat([diff[:, :1], diff], 1)
    w = 1.0 + change_weight * diff / diff.mean().clamp(min=1e-6)
    if motion is not None and motion_weight > 0:
        m = motion.to(w.device, w.dtype)[:, :, None]
        w = w + motion_weight * m / m.mean().clamp(min=1e-6)
    return w / w.mean()


def teacher_forcing_loss(model: nn.Module, x0: torch.Tensor, actions: torch.Tensor, cfg: TeacherLossConfig,
                         null_action: int, gen: torch.Generator | None = None,
                         context: torch.Tensor | None = None, context_sigma: torch.Tensor | None = None,
                         taken: torch.Tensor | None = None, moving: torch.Tensor | None = None,
                         taken_prior: float = 0.0, motion: torch.Tensor | None = None,
                         judge: ActionJudge | None = None, effective: torch.Tensor | None = None,
                         judge_model: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-matching loss of one batch of clips x0 (B, F, C, h, w) with actions (B, F).

    ``context`` (same shape) replaces x0 as the clean history the noisy frames see (e.g. with
    a rollout span of the model's own frames); the targets stay x0. ``context_sigma`` (B, F):
    the level each context frame enters at, noised to it and told to the model (the model's own
    frames at ``generated_sigma``, as the sampler writes them at play); context noise
    augmentation applies to the frames it leaves at 0. ``taken`` (B, F) bool, for a ``pose_taken``
    model: which pressed moves the world took (the data's effective actions); the model's taken head
    is then trained on them (``cfg.taken_weight``) over the frames where ``moving`` (B, F) bool; its
    accuracy and blocked-move recall are read as play decides, with ``taken_prior`` (the model's
    ``taken_prior``, log-odds) added to the logits. ``motion`` (B, F, h, w): the clips' sprite motion,
    for ``cfg.motion_weight``. ``judge`` and ``effective`` (B, F), the data's effective actions: the
    action judge's loss (``cfg.idm_weight``); ``judge_model``: the model the sampled judge calls (the
    same weights uncompiled: its batch and grad mode differ from the training step's; default ``model``)."""
    B, F = x0.shape[:2]
    dev = x0.device
    u = torch.rand(B, F, generator=gen).to(dev)
    sigma = flow.shift_sigma(u, cfg.shift)
    eps = torch.randn(x0.shape, generator=gen).to(dev)
    x_t = flow.add_noise(x0, eps, sigma)
    drop = torch.rand(B, F, generator=gen).to(dev) < cfg.action_dropout
    acts = torch.where(drop, torch.full_like(actions, null_action), actions)
    base = x0 if context is None else context
    clean = base
    clean_sigma = torch.zeros(B, F, device=dev)
    if cfg.context_noise > 0:
        use = (torch.rand(B, 1, generator=gen) < cfg.context_noise_prob).float().to(dev)
        clean_sigma = torch.rand(B, F, generator=gen).to(dev) * cfg.context_noise * use
    if context_sigma is not None:
        clean_sigma = torch.where(context_sigma > 0, context_sigma.to(dev), clean_sigma)
    if cfg.context_noise > 0 or context_sigma is not None:
        clean = flow.add_noise(base, torch.randn(x0.shape, generator=gen).to(dev), clean_sigma)
    if cfg.memory_span > 0 and F > 2:
        clean, clean_sigma = memory_spans(base, clean, clean_sigma, cfg, gen)
    # poses (a model with pose attention) follow the pressed actions, not the dropped ones: the player
    # moved whether or not the model is told the key of that frame
    logits = None
    if taken is None:
        v = model(clean, x_t, sigma, acts, clean_sigma, pose_actions=actions)
    else:
        v, logits = model(clean, x_t, sigma, acts, clean_sigma, pose_actions=actions, taken=taken)
    target = flow.velocity_target(x0, eps)
    w = token_change_weights(x0, cfg.change_weight, motion, cfg.motion_weight)
    err = (v.float() - target).pow(2)
    loss = (err * w).mean()
    metrics = {"mse_unweighted": err.detach().mean().item()}
    if judge is not None and cfg.idm_weight > 0:
        if effective is None:
            raise ValueError("loss.idm_weight needs the clips' effective actions")
        if cfg.idm_steps >= 2:
            jl, jm = sampled_judge_loss(judge_model or model, judge, x0, actions, effective, cfg, gen, taken)
        else:
            jl, jm = judge_loss(judge, x0, x_t, sigma, v, effective, drop, cfg.idm_frames, cfg.idm_max_sigma, gen)
        loss = loss + cfg.idm_weight * jl
        metrics.update(jm)
    if logits is not None and taken is not None:
        m = moving if moving is not None else torch.ones_like(taken, dtype=torch.bool)
        y = taken.float().to(dev)
        bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        mf = m.float().to(dev)
        n = mf.sum().clamp(min=1)
        blocked = mf * (1 - y)
        nb = blocked.sum()
        if cfg.taken_balance and float(nb) > 0:
            kept = mf * y
            head = 0.5 * (bce * kept).sum() / kept.sum().clamp(min=1) + 0.5 * (bce * blocked).sum() / nb
        else:
            head = (bce * mf).sum() / n
        loss = loss + cfg.taken_weight * head
        metrics["taken_bce"] = float((bce.detach() * mf).sum() / n)
        says = (logits.detach().float() + taken_prior) > 0
        metrics["taken_acc"] = float(((says.float() == y).float() * mf).sum() / n)
        # the share of blocked moves the head calls blocked (nan in a batch without any)
        metrics["taken_blocked_recall"] = float(((~says).float() * blocked).sum() / nb) \
            if float(nb) > 0 else float("nan")
    return loss, metrics


def sampled_judge_loss(model: nn.Module, judge: ActionJudge, x0: torch.Tensor, actions: torch.Tensor,
                       effective: torch.Tensor, cfg: TeacherLossConfig, gen: torch.Generator | None = None,
                       taken: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The action judge on frames being sampled (``cfg.idm_steps`` >= 2): the noisy frames of the first
    ``cfg.idm_clips`` clips (their first ``cfg.idm_prefix`` frames, if set) start from pure noise beside
    their real context (teacher forcing: every frame is drawn at once, each from the real frames before
    it) and follow the ``cfg.idm_steps``-step Euler grid of the training shift without grad for a
    random 1..idm_steps-1 steps; the model's clean-frame prediction at that level, with grad, is judged
    (:func:`trainer.judge.judge_loss`) against the effective actions. Actions are not dropped. Returns (loss, metrics with ``judge_sigma``)."""
    B = min(cfg.idm_clips, x0.shape[0])
    P = x0.shape[1] if not cfg.idm_prefix else min(cfg.idm_prefix, x0.shape[1])
    x, a, eff = x0[:B, :P], actions[:B, :P], effective[:B, :P]
    kw = {} if taken is None else {"taken": taken[:B, :P]}
    F = x.shape[1]
    start = min(cfg.idm_rollout_from, F - 2) if cfg.idm_rollout_from else 0
    if start:  # frames start.. are the model's own; the judged frames are drawn from them
        x = own_frames(model, x, a, start, cfg.idm_rollout_steps, cfg.shift, gen, kw.get("taken"))
    grid = [float(g) for g in flow.sigma_grid(cfg.idm_steps + 1, cfg.shift)]
    stop = int(torch.randint(1, cfg.idm_steps, (1,), generator=gen))
    zeros = torch.zeros(B, F, device=x.device)

    def velocity(x_t: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.full((B, F), level, device=x.device)
        out = model(x, x_t, sigma, a, zeros, pose_actions=a, **kw)
        return (out[0] if isinstance(out, tuple) else out), sigma

    x_t = torch.randn(x.shape, generator=gen).to(x.device)
    with torch.no_grad():
        for i in range(stop):
            v, _ = velocity(x_t, grid[i])
            x_t = flow.euler_step(x_t, v.float(), grid[i], grid[i + 1])
    v, sigma = velocity(x_t, grid[stop])
    # frames up to ``start`` have a real frame before them: left out where the judge reads rollouts
    skip = torch.zeros_like(zeros, dtype=torch.bool)
    skip[:, :start] = True
    loss, m = judge_loss(judge, x, x_t, sigma, v, eff, skip, cfg.idm_frames, 1.0, gen)
    return loss, {**m, "judge_sigma": grid[stop]}


def own_frames(model: nn.Module, x: torch.Tensor, actions: torch.Tensor, start: int, steps: int, shift: float,
               gen: torch.Generator | None = None, taken: torch.Tensor | None = None, end: int | None = None,
               context_sigma: float = 0.0) -> torch.Tensor:
    """The clips x (B, F, ...) with frames start..end (default: to the clip's end) replaced by the
    model's own, streamed as at play from the real frames before ``start`` with the clips' actions
    (``steps`` Euler steps, no guidance, no grad; each entered into the cache at ``context_sigma``; a
    ``pose_taken`` model's real frames primed with the data's ``taken``, its own decided by its head).
    ``model``: a :class:`FrameTransformer` or the :class:`TeacherForcing` (or DDP) wrapping one."""
    from model.rollout import SamplerConfig, Session

    net = model
    while not isinstance(net, FrameTransformer):
        net = getattr(net, "module", None) or net.net
    B, F = x.shape[:2]
    end = F if end is None else end
    sampler = SamplerConfig(kind="euler", steps=steps, shift=shift, context_sigma=context_sigma)
    with torch.no_grad():  # the transformer has no train-only layers: no eval() switch needed
        session = Session(net, B, x.device, generator=gen, cache="dynamic")
        session.prime(x[:, :start], actions[:, :start], defer=True,
                      taken=None if taken is None else taken[:, :start])
        frames = [session.generate(actions[:, t:t + 1], sampler, fuse=True).float() for t in range(start, end)]
    out = x.clone()
    out[:, start:end] = torch.cat(frames, 1)
    return out


def memory_spans(x0: torch.Tensor, clean: torch.Tensor, clean_sigma: torch.Tensor, cfg: TeacherLossConfig,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise one run of context frames per chosen clip (``memory_prob``): length 1..``memory_span``,
    starting after frame 0, each frame at its own level in [``memory_sigma``, 1]; frame 0 and the
    frames outside the run keep their context. Returns the new (clean, clean_sigma)."""
    B, F = x0.shape[:2]
    dev = x0.device
    use = torch.rand(B, generator=gen) < cfg.memory_prob
    length = torch.randint(1, min(cfg.memory_span, F - 2) + 1, (B,), generator=gen)
    start = (torch.rand(B, generator=gen) * (F - 1 - length).clamp(min=1)).long() + 1
    t = torch.arange(F)
    span = (use[:, None] & (t[None] >= start[:, None]) & (t[None] < (start + length)[:, None])).to(dev)
    level = (cfg.memory_sigma + (1 - cfg.memory_sigma) * torch.rand(B, F, generator=gen)).to(dev)
    new_sigma = torch.where(span, level, clean_sigma)
    noised = flow.add_noise(x0, torch.randn(x0.shape, generator=gen).to(dev), new_sigma)
    return torch.where(span[..., None, None, None], noised, clean), new_sigma


def rollout_span(net: FrameTransformer, x0: torch.Tensor, actions: torch.Tensor, cfg: TeacherLossConfig,
                 gen: torch.Generator | None = None,
                 taken: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """The clips x0 (B, F, ...) with one run of frames [start, start + length) replaced by the
    model's own: each generated from the real frames before the run and the frames it generated
    since, with the clip's actions (``cfg.rollout_steps`` Euler steps, no guidance, no grad),
    entered into its cache as the sampler does at play (at ``generated_sigma``). The run's length is
    ``rollout_span // 2``..``rollout_span`` (at most F - 2); at least one real frame comes before it
    and one after it. ``taken`` (B, F): a ``pose_taken`` model's real context frames enter with the
    data's taken moves, as in the loss. Returns (context, start, length)."""

    F = x0.shape[1]
    hi = min(cfg.rollout_span, F - 2)
    length = int(torch.randint(max(1, min(hi, cfg.rollout_span // 2)), hi + 1, (1,), generator=gen))
    start = int(torch.randint(1, F - length, (1,), generator=gen))
    context = own_frames(net, x0, actions, start, cfg.rollout_steps, cfg.shift, gen, taken, end=start + length,
                         context_sigma=cfg.generated_sigma)
    return context, start, length


class TeacherForcing(nn.Module):
    """Wraps the transformer so that DDP sees one forward: forward_teacher."""

    def __init__(self, net: FrameTransformer) -> None:
        super().__init__()
        self.net = net

    def forward(self, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                clean_sigma: torch.Tensor, pose_actions: torch.Tensor | None = None,
                taken: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if taken is None:
            return self.net.forward_teacher(clean, noisy, sigma, actions, clean_sigma, pose_actions)
        return self.net.forward_teacher(clean, noisy, sigma, actions, clean_sigma, pose_actions, taken,
                                        return_taken=True)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def check_joined(datasets: list[str], caches: list[LatentCache], num_actions: int) -> None:
    """Datasets trained on together must be recordings of one world whose actions the model has."""
    from trainer.data import DataError
    from world.dataset import read_metadata

    worlds = {d: (read_metadata(d).get("recording") or {}).get("world") for d in datasets[1:]}
    if worlds:
        first = (read_metadata(datasets[0]).get("recording") or {}).get("world")
        other = {d: w for d, w in worlds.items() if w != first}
        if other:
            raise DataError(f"data.extra_datasets must be recordings of {datasets[0]}'s world {first!r}; "
                            f"{other} differ: train on them apart")
    for d, c in zip(datasets, caches):
        top = int(c.actions.max()) if len(c.actions) else 0
        if top >= num_actions:
            raise DataError(f"{d} holds action {top}, but model.num_actions is {num_actions}: set model.num_actions "
                            "to the world's action count, or drop the dataset")


class ClipData:
    """Windows of ``frames`` latent frames + actions from a dataset, encoded once by the frozen
    autoencoder and cached on disk; deterministic shuffling (exact resume) and held-out windows."""

    def __init__(self, autoencoder: str, data: DataConfig, frames: int, cache_dir: str, model: TransformerConfig,
                 eval_windows: int, seed: int) -> None:
        ae, ae_id = load_autoencoder(autoencoder)
        if ae.cfg.latent_channels != model.latent_channels or ae.cfg.latent_size != model.latent_size:
            raise ValueError(
                f"model.latent_channels/latent_size ({model.latent_channels}, {model.latent_size}) must "
                f"match the autoencoder's ({ae.cfg.latent_channels}, {ae.cfg.latent_size})")
        caches = [LatentCache.build(d, ae, ae_id, cache_dir) for d in data.datasets]
        check_joined(data.datasets, caches, model.num_actions)
        first = caches[0]
        n = first.num_episodes if not data.max_episodes else min(first.num_episodes, data.max_episodes)
        train_ids, hold_ids = split_episodes(n, data.holdout_episodes)
        # the extra datasets' episodes (after the first dataset's) all train
        train_ids += list(range(first.num_episodes, sum(c.num_episodes for c in caches)))
        cache = LatentCache.concat(caches)
        self.cache = cache
        self.frames = frames
        self.train_windows = window_index([cache.length(e) for e in train_ids], frames)
        self.train_windows[:, 0] = np.asarray(train_ids)[self.train_windows[:, 0]]
        hold = window_index([cache.length(e) for e in hold_ids], frames) if hold_ids else np.zeros((0, 2), np.int64)
        if len(hold):
            hold[:, 0] = np.asarray(hold_ids)[hold[:, 0]]
            pick = np.random.default_rng(4321).permutation(len(hold))[:eval_windows]
            hold = hold[np.sort(pick)]
        self.eval_windows = hold
        self.sampler = EpochSampler(len(self.train_windows), seed)

    def clips(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        z, a = self.cache.windows(rows, self.frames)
        return torch.from_numpy(z).float().to(device), torch.from_numpy(a).long().to(device)

    def taken(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(N, F) bool for the same windows as :meth:`clips`: did the world take each pressed move
        (the recorded effective action equals the pressed one)?"""
        return torch.from_numpy(self.cache.window_taken(rows, self.frames)).to(device)

    def effective(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(N, F) long for the same windows as :meth:`clips`: the recorded effective actions."""
        return torch.from_numpy(self.cache.effective[self.cache.window_index(rows, self.frames)]).long().to(device)

    def motion(self, rows: np.ndarray, motion: np.ndarray, device: torch.device) -> torch.Tensor:
        """(N, F, h, w) for the same windows as :meth:`clips`: their rows of a dataset's
        :func:`trainer.motion.motion_cache`."""
        return torch.from_numpy(motion[self.cache.window_index(rows, self.frames)].astype(np.float32)).to(device)

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clips(self.next_rows(batch_size, info), info.device)

    def next_rows(self, batch_size: int, info: DistInfo) -> np.ndarray:
        idx = self.sampler.take(batch_size * info.world_size)[info.rank * batch_size:(info.rank + 1) * batch_size]
        return self.train_windows[idx]


class TeacherStage:
    name = "teacher"
    judge: ActionJudge | None = None  # loss.idm_weight's action judge (set in __init__)

    def __init__(self, cfg: TeacherExperiment) -> None:
        self.cfg = cfg
        self.data = ClipData(cfg.autoencoder, cfg.data, cfg.frames, cfg.latent_cache_dir, cfg.model,
                             cfg.eval_windows, cfg.train.seed)
        self.cache = self.data.cache
        self.eval_windows = self.data.eval_windows
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.net = FrameTransformer(cfg.model)
        if cfg.init:
            from trainer.models import init_from

            init_from(self.net, cfg.init, "teacher")
        self.wrapped = TeacherForcing(self.net)
        # the action judge (loss.idm_weight): the run's autoencoder and the world's IDM, frozen
        self.judge = ActionJudge.load(cfg.autoencoder, cfg.idm) if cfg.loss.idm_weight > 0 else None
        self.taken_prior = self._taken_prior() if cfg.model.pose_taken and cfg.loss.taken_balance else 0.0
        self.sprite_motion: np.ndarray | None = None
        if cfg.loss.motion_weight > 0:
            from trainer.motion import motion_cache

            self.sprite_motion = np.concatenate([motion_cache(d, cfg.model.latent_size, cfg.latent_cache_dir)
                                                 for d in cfg.data.datasets])
            if len(self.sprite_motion) != len(self.cache.latents):
                raise ValueError(f"the motion caches of {cfg.data.datasets} have {len(self.sprite_motion)} frames, their "
                                 f"latent caches {len(self.cache.latents)}: delete the stale ones in "
                                 f"{cfg.latent_cache_dir} and run again")

    def _taken_prior(self) -> float:
        """log(taken / blocked) over the training episodes' pressed moves: the odds a head trained
        with the class-balanced loss did not learn, added back where it decides (logit adjustment)."""
        c = self.cache
        rows = np.unique(self.data.train_windows[:, 0])
        idx = np.concatenate([np.arange(c.offsets[e], c.offsets[e + 1]) for e in rows])
        a = c.actions[idx]
        moves = self.net.pose_moves.numpy()
        moving = np.abs(moves[np.clip(a, 0, len(moves) - 1)]).sum(-1) > 0
        taken = moving & (c.effective[idx] == a)
        n_taken, n_blocked = int(taken.sum()), int((moving & ~taken).sum())
        if not n_blocked or not n_taken:
            raise ValueError(f"loss.taken_balance needs both taken and blocked moves in the training data; "
                             f"{c.num_episodes} episodes have {n_taken} taken and {n_blocked} blocked: "
                             "set loss.taken_balance: false")
        prior = math.log(n_taken / n_blocked)
        from world.log import get_logger

        get_logger().info(f"[teacher] loss.taken_balance: {n_taken} taken and {n_blocked} blocked pressed moves in "
                          f"the training episodes; the head decides with prior log-odds {prior:.3f}")
        return prior

    def _set_prior(self) -> None:
        if self.cfg.model.pose_taken:  # every step, so that a checkpoint (and a resume) carries it
            self.net.taken_prior.fill_(self.taken_prior)

    def model(self) -> nn.Module:
        return self.wrapped

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return 2 * self.cfg.frames * self.cfg.model.tokens_per_frame

    def _clips(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.clips(rows, device)

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, ...]:
        """(latents, actions, taken, motion, effective): the windows' taken moves for a ``pose_taken``
        model, their sprite motion for ``loss.motion_weight`` and their effective actions for
        ``loss.idm_weight``, else None."""
        rows = self.data.next_rows(batch_size, info)
        return (*self.data.clips(rows, info.device), *self._extras(rows, info.device))

    def _extras(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor | None, ...]:
        taken = self.data.taken(rows, device) if self.cfg.model.pose_taken else None
        motion = None if self.sprite_motion is None else self.data.motion(rows, self.sprite_motion, device)
        effective = self.data.effective(rows, device) if self.judge is not None else None
        return taken, motion, effective

    def _taken_args(self, actions: torch.Tensor, taken: torch.Tensor | None) -> dict[str, Any]:
        if taken is None:
            return {}
        moving = self.net.pose_moves.to(actions.device)[actions].abs().sum(-1) > 0
        return {"taken": taken, "moving": moving, "taken_prior": self.taken_prior}

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0, actions = batch[0], batch[1]  # (latents, actions) alone from callers that bring no extras
        taken = batch[2] if len(batch) > 2 else None
        motion = batch[3] if len(batch) > 3 else None
        effective = batch[4] if len(batch) > 4 else None
        lc = self.cfg.loss
        context, ctx_sigma, extra = None, None, {}
        if lc.rollout_span > 0 and x0.shape[1] > 2 and float(torch.rand(1, generator=self.gen)) < lc.rollout_prob:
            context, start, length = rollout_span(self.net, x0, actions, lc, self.gen, taken)
            span = slice(start, start + length)
            extra = {"rollout_len": float(length),
                     "rollout_mse": float((context[:, span] - x0[:, span]).pow(2).mean())}
            if lc.generated_sigma > 0:  # the span's frames enter as the sampler writes them at play
                ctx_sigma = torch.zeros(x0.shape[:2], device=x0.device)
                ctx_sigma[:, span] = lc.generated_sigma
        self._set_prior()
        if self.judge is not None:
            self.judge.to(x0.device)  # loaded on the host; a no-op after the first step
        loss, m = teacher_forcing_loss(model, x0, actions, lc, self.cfg.model.null_action, self.gen, context,
                                       ctx_sigma, motion=motion, judge=self.judge, effective=effective,
                                       # the sampled judge calls the uncompiled module (its batch and grad
                                       # mode differ from the compiled step's); under DDP the wrapped one,
                                       # so that its gradient hooks see every forward
                                       judge_model=None if self.judge is None or _distributed() else self.wrapped,
                                       **self._taken_args(actions, taken))
        return loss, {**m, **extra}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Held-out flow-matching loss with fixed noise (comparable across steps and runs)."""
        if not len(self.eval_windows):
            return {}
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(99)
        losses = []
        dev = next(model.parameters()).device
        for i in range(0, len(self.eval_windows), 16):
            rows = self.eval_windows[i:i + 16]
            x0, a = self._clips(rows, dev)
            taken = self.data.taken(rows, dev) if self.cfg.model.pose_taken else None
            with autocast(dev, self.cfg.train.precision):
                # taken_weight 0: the held-out loss stays the flow-matching loss alone (comparable
                # with models without a taken head); the head's accuracy is reported beside it
                loss, m = teacher_forcing_loss(model, x0, a, TeacherLossConfig(
                    shift=self.cfg.loss.shift, action_dropout=0.0, change_weight=self.cfg.loss.change_weight,
                    taken_weight=0.0), self.cfg.model.null_action, gen, **self._taken_args(a, taken))
            losses.append((float(loss), m["mse_unweighted"], m.get("taken_acc", float("nan")),
                           m.get("taken_blocked_recall", float("nan"))))
        arr = np.array(losses)
        out = {"heldout_loss": float(arr[:, 0].mean()), "heldout_mse": float(arr[:, 1].mean())}
        if self.cfg.model.pose_taken:
            out["heldout_taken_acc"] = float(arr[:, 2].mean())
            if np.isfinite(arr[:, 3]).any():
                out["heldout_taken_blocked_recall"] = float(np.nanmean(arr[:, 3]))
        if self.judge is not None:
            out.update(self.judge_readout(model))
        model.train(was)
        return out

    @torch.no_grad()
    def judge_readout(self, model: nn.Module, levels: tuple[float, ...] = (0.3, 0.6, 0.9)) -> dict[str, float]:
        """The action judge's reading of the model's predicted clean frames on the held-out windows, every
        noisy frame at one noise level (its own fixed noise, apart from the held-out loss's): the share
        of transitions read as the data's effective action (``heldout_judge_acc_s{level}``) and of those
        whose effective action is a move, not action 0 (the worlds' no-op; ``..._moves``). Where in the sampling the controls are decided."""
        model.eval()
        dev = next(model.parameters()).device
        self.judge.to(dev)
        out: dict[str, float] = {}
        for level in levels:
            gen = torch.Generator().manual_seed(7)
            right, n, right_m, n_m = 0, 0, 0, 0
            for i in range(0, len(self.eval_windows), 16):
                rows = self.eval_windows[i:i + 16]
                x0, a = self._clips(rows, dev)
                eff = self.data.effective(rows, dev)
                taken = self.data.taken(rows, dev) if self.cfg.model.pose_taken else None
                sigma = torch.full(x0.shape[:2], level, device=dev)
                x_t = flow.add_noise(x0, torch.randn(x0.shape, generator=gen).to(dev), sigma)
                kw = {} if taken is None else {"taken": taken}
                with autocast(dev, self.cfg.train.precision):
                    v = model(x0, x_t, sigma, a, torch.zeros_like(sigma), pose_actions=a, **kw)
                v = v[0] if isinstance(v, tuple) else v
                x0_hat = flow.x0_from_v(x_t[:, 1:].float(), sigma[:, 1:], v[:, 1:].float())
                B, F1 = x0_hat.shape[:2]
                pred = self.judge.logits(x0[:, :-1].reshape(B * F1, *x0.shape[2:]),
                                         x0_hat.reshape(B * F1, *x0.shape[2:])).argmax(1)
                y = eff[:, 1:].reshape(-1)
                ok = pred == y
                mv = y != 0  # action 0: the world's no-op
                right, n = right + int(ok.sum()), n + len(y)
                right_m, n_m = right_m + int((ok & mv).sum()), n_m + int(mv.sum())
            out[f"heldout_judge_acc_s{level}"] = right / max(n, 1)
            out[f"heldout_judge_acc_s{level}_moves"] = right_m / n_m if n_m else float("nan")
        return out

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.data.sampler.state(), "gen": self.gen.get_state()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.data.sampler.load_state(state["sampler"])
        self.gen.set_state(state["gen"])
