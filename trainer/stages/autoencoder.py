"""Stage 0: the frame autoencoder, trained on real frames of recorded datasets.

Loss: L1 + L2 + an image-gradient term (keeps edges sharp), each pixel weighted up where
the frame differs from the previous one (edges under a moving camera, and every moving
object), so that what moves is not averaged away. Evaluation on held-out episodes:
PSNR (the `ae_ceiling_psnr` of docs/EVALUATION.md section 3.2), sharpness ratio and, for a world
that can find its player in a frame (``player_finder``: the adventure), the share of
reconstructions in which the player is found where it really is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from evaluation.metrics import psnr_batch, sharpness_ratio
from model.autoencoder import Autoencoder, AutoencoderConfig, from_uint8, to_uint8
from trainer.data import EpochSampler, load_episodes, split_episodes
from trainer.distributed import DistInfo
from trainer.loop import TrainConfig, autocast
from world.log import get_logger


@dataclass
class DataConfig:
    dataset: str = "data/datasets/adventure-explorer-v0"
    holdout_episodes: int = 8
    max_episodes: int = 0  # 0 = every episode
    # more recorded datasets of the same world whose episodes all train, after ``dataset``'s (the
    # held-out episodes are ``dataset``'s alone, so the held-out loss stays comparable); the stages
    # that train on latent clips (teacher, cd, dmd, ode) read them
    extra_datasets: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        return [self.dataset, *self.extra_datasets]

    def only_one(self, stage: str) -> None:
        """Refuse ``extra_datasets`` in a stage that trains on ``dataset`` alone."""
        if self.extra_datasets:
            raise ValueError(f"{stage}: data.extra_datasets ({self.extra_datasets}) is read by the stages that train "
                             f"on latent clips (teacher, cd, dmd, ode); the {stage} trains on data.dataset alone: "
                             "remove the key, or record one dataset with all the episodes")


@dataclass
class AELossConfig:
    l1: float = 1.0
    l2: float = 1.0
    grad: float = 1.0
    change_weight: float = 4.0  # extra weight on pixels that differ from the previous frame


@dataclass
class AutoencoderExperiment:
    stage: str = "autoencoder"
    run_dir: str = "runs/adventure_ae"
    world: str = "adventure"
    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AELossConfig = field(default_factory=AELossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_frames: int = 512
    # start from these weights (a run, checkpoint or shipped .safetensors with the same model config),
    # e.g. to continue training a shipped autoencoder in a new session; ignored when the run resumes
    init: str = ""


def image_grad_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return ((dx(x) - dx(y)).abs() * w[..., :, 1:]).mean() + ((dy(x) - dy(y)).abs() * w[..., 1:, :]).mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, prev: torch.Tensor,
                        cfg: AELossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted L1 + L2 + gradient loss; images (N, 3, H, W) in [-1, 1]."""
    changed = ((target - prev).abs().amax(1, keepdim=True) > 1e-3).float()
    w = 1.0 + cfg.change_weight * changed
    w = w / w.mean()
    err = recon.float() - target
    l1 = (err.abs() * w).mean()
    l2 = (err.pow(2) * w).mean()
    g = image_grad_loss(recon.float(), target, w)
    loss = cfg.l1 * l1 + cfg.l2 * l2 + cfg.grad * g
    return loss, {"l1": l1.detach().item(), "l2": l2.detach().item(), "grad": g.detach().item()}


def palette_loss(logits: torch.Tensor, targets: torch.Tensor, target: torch.Tensor, prev: torch.Tensor,
                 cfg: AELossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pixel cross-entropy over the palette, weighted up where the frame changed."""
    changed = ((target - prev).abs().amax(1) > 1e-3).float()
    w = 1.0 + cfg.change_weight * changed
    w = w / w.mean()
    ce = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    loss = (ce * w).mean()
    acc = (logits.argmax(1) == targets).float().mean()
    return loss, {"ce": ce.detach().mean().item(), "pixel_acc": acc.item()}


def measure_palette(frames: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The ``size`` most frequent colours of uint8 frames (K, 3), and the share of pixels they cover."""
    sample = frames[:: max(1, len(frames) // 4096)].reshape(-1, 3).astype(np.int64)
    codes = (sample[:, 0] << 16) | (sample[:, 1] << 8) | sample[:, 2]
    uniq, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:size]
    top = uniq[order]
    covered = float(counts[order].sum() / counts.sum())
    top = np.concatenate([top, np.repeat(top[:1], size - len(top))])  # pad with a repeat (never a target)
    return np.stack([(top >> 16) & 255, (top >> 8) & 255, top & 255], 1).astype(np.uint8), covered


class AutoencoderStage:
    name = "autoencoder"

    def __init__(self, cfg: AutoencoderExperiment) -> None:
        self.cfg = cfg
        cfg.data.only_one("autoencoder")
        n_total = _count_episodes(cfg.data.dataset)
        if cfg.data.max_episodes:
            n_total = min(n_total, cfg.data.max_episodes)
        train_ids, hold_ids = split_episodes(n_total, cfg.data.holdout_episodes)
        eps = load_episodes(cfg.data.dataset, train_ids + hold_ids)
        train_eps, hold_eps = eps[: len(train_ids)], eps[len(train_ids):]
        self.frames = np.concatenate([e.frames for e in train_eps])
        if self.frames.shape[1:3] != (cfg.model.image_size, cfg.model.image_size):
            raise ValueError(f"{cfg.data.dataset} has {self.frames.shape[1]}x{self.frames.shape[2]} frames but "
                             f"model.image_size is {cfg.model.image_size}; set model.image_size="
                             f"{self.frames.shape[1]} (or record the world with --setting resolution="
                             f"{cfg.model.image_size})")
        # index of each frame's previous frame (itself at an episode start)
        prev, off = [], 0
        for e in train_eps:
            idx = np.arange(off, off + len(e))
            prev.append(np.concatenate([[off], idx[:-1]]))
            off += len(e)
        self.prev = np.concatenate(prev)
        self.sampler = EpochSampler(len(self.frames), cfg.train.seed)
        hold = np.concatenate([e.frames for e in hold_eps]) if hold_eps else self.frames[:0]
        pick = np.random.default_rng(1234).permutation(len(hold))[: cfg.eval_frames]
        self.eval_frames = hold[np.sort(pick)]
        self.net = Autoencoder(cfg.model)
        if cfg.model.output == "palette":
            colors, covered = measure_palette(self.frames, cfg.model.palette_size)
            self.net.set_palette(torch.from_numpy(colors))
            get_logger().info(f"[autoencoder] palette of {cfg.model.palette_size} colours covers {100 * covered:.2f}% of pixels")
        if cfg.init:
            from trainer.models import init_from

            init_from(self.net, cfg.init, "autoencoder")

    # -- Stage protocol
    def model(self) -> nn.Module:
        return self.net

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return self.cfg.model.latent_size ** 2

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.sampler.take(batch_size * info.world_size)[info.rank * batch_size:(info.rank + 1) * batch_size]
        frames = torch.from_numpy(self.frames[idx])
        x = from_uint8(frames).to(info.device)
        p = from_uint8(torch.from_numpy(self.frames[self.prev[idx]])).to(info.device)
        t = self.net.palette_targets(frames).to(info.device) if self.cfg.model.output == "palette" else None
        return x, p, t

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, prev, targets = batch
        if targets is not None:
            return palette_loss(model(x), targets, x, prev, self.cfg.loss)
        return reconstruction_loss(model(x), x, prev, self.cfg.loss)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not len(self.eval_frames):
            return {}
        return evaluate_autoencoder(model, self.eval_frames, self.cfg.world, self.cfg.train.precision)

    @torch.no_grad()
    def before_checkpoint(self, model: nn.Module, ema: nn.Module | None) -> None:
        """Store the latent normalisation (per-channel mean/std of raw latents of a fixed sample
        of training frames, from the weights that ship: the EMA if there is one)."""
        net = ema if ema is not None else model
        pick = np.random.default_rng(777).permutation(len(self.frames))[:2048]
        was = net.training
        net.eval()
        dev = next(net.parameters()).device
        z = torch.cat([net.encode_raw(from_uint8(torch.from_numpy(self.frames[np.sort(pick[i:i + 256])])).to(dev))
                       for i in range(0, len(pick), 256)])
        net.train(was)
        for m in {id(model): model, id(net): net}.values():
            m.set_latent_stats(z)

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])


def _count_episodes(dataset: str) -> int:
    from trainer.data import dataset_metadata

    try:
        return int(dataset_metadata(dataset)["total_episodes"])
    except FileNotFoundError:
        load_episodes(dataset, [])  # raises the clear "no dataset" error
        raise


@torch.no_grad()
def reconstruct(ae: nn.Module, frames: np.ndarray, precision: str = "auto", batch: int = 128) -> np.ndarray:
    """Encode and decode uint8 frames (N, H, W, 3) -> uint8 reconstructions."""
    was_training = ae.training
    ae.eval()
    dev = next(ae.parameters()).device
    out = []
    for i in range(0, len(frames), batch):
        x = from_uint8(torch.from_numpy(frames[i:i + batch])).to(dev)
        with autocast(dev, precision):
            y = ae.reconstruct(x)
        out.append(to_uint8(y.float()).cpu().numpy())
    ae.train(was_training)
    return np.concatenate(out)


def evaluate_autoencoder(ae: nn.Module, frames: np.ndarray, world: str, precision: str = "auto") -> dict[str, float]:
    rec = reconstruct(ae, frames, precision)
    res = {"psnr": float(psnr_batch(rec, frames).mean()), "sharpness_ratio": sharpness_ratio(rec, frames)}
    from world import player_finder

    find_player = player_finder(world)
    if find_player is not None:  # the share of reconstructions with the player where it really is
        found = 0
        total = 0
        for r, f in zip(rec, frames):
            p_real = find_player(f)
            if p_real is None:
                continue
            total += 1
            p = find_player(r)
            found += p is not None and np.hypot(p[0] - p_real[0], p[1] - p_real[1]) <= 2.0
        res["player_found"] = found / max(total, 1)
    return res
