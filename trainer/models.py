"""Loading trained models (world model, autoencoder, IDM, reward/termination heads) from run folders, checkpoint
folders or shipped ``.safetensors`` files with their model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.heads import HeadsConfig, RewardHeads
from model.idm import IDMConfig, InverseDynamics
from model.transformer import FrameTransformer, TransformerConfig
from trainer.checkpoint import CheckpointError, file_hash, load_into, load_weights, resolve_full
from trainer.config import ConfigError, from_dict

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def init_from(net: torch.nn.Module, path: str | Path, what: str) -> Path:
    """Load the weights of a run, checkpoint or shipped file into a new stage's ``net`` (``init``:
    continue training from trained weights); the model config must match. Returns the weights file."""
    weights, cfg = resolve_full(path)
    state = _strip(load_weights(weights), "net.")
    if isinstance(net, FrameTransformer) and isinstance(cfg.get("model"), dict):
        src_cfg = from_dict(TransformerConfig, cfg["model"], f"{weights} config")
        if (src_cfg.window, src_cfg.sink, src_cfg.block_frames) != (net.cfg.window, net.cfg.sink, net.cfg.block_frames):
            # another window/sink/block size (e.g. a long-context teacher from the shipped one): the
            # time-distance bias is extended (FrameTransformer.load_from), every other weight copied
            src = FrameTransformer(src_cfg)
            load_into(src, state, str(weights))
            try:
                net.load_from(src)
            except (ValueError, RuntimeError) as e:
                raise CheckpointError(f"cannot initialise the {what} from {weights}: {e}") from None
            print(f"[{what}] initialised from {weights} (window {src_cfg.window} -> {net.cfg.window}, "
                  f"sink {src_cfg.sink} -> {net.cfg.sink})")
            return weights
    load_into(net, state, str(weights))
    print(f"[{what}] initialised from {weights}")
    return weights


def load_world_model(path: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[FrameTransformer, dict[str, Any], str]:
    """The frame transformer at ``path`` (eval, frozen, fp32), its full config and weights id."""
    weights, cfg = resolve_full(path)
    stage = cfg.get("stage")
    if "model" not in cfg or "autoencoder" not in cfg or stage in ("heads", "idm", "autoencoder"):
        what = f"a {stage!r} checkpoint" if stage else "not a world-model checkpoint"
        raise CheckpointError(f"{path} is {what}, not a world model (teacher or distilled student); give a "
                              f"world model, e.g. {SHIPPED / 'adventure_cfpp_frame2.safetensors'}")
    try:
        mcfg = from_dict(TransformerConfig, cfg["model"], f"{weights} config")
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{path} is not a world model this code can build: {e}") from None
    net = FrameTransformer(mcfg)
    state = {k: v.float() for k, v in _strip(load_weights(weights), "net.").items()}
    load_into(net, state, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, cfg, file_hash(weights)


def load_idm(path: str | Path, device: str | torch.device = "cpu") -> tuple[InverseDynamics, str]:
    weights, cfg = resolve_full(path)
    net = InverseDynamics(from_dict(IDMConfig, cfg["model"], f"{weights} config"))
    load_into(net, {k: v.float() for k, v in load_weights(weights).items()}, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, file_hash(weights)


def load_heads(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardHeads, dict[str, Any]]:
    """Reward/termination heads (a ``heads`` run, checkpoint or shipped file) and their config."""
    weights, cfg = resolve_full(path)
    if cfg.get("stage") not in (None, "heads") or "reward_values" not in (cfg.get("model") or {}):
        raise CheckpointError(f"{path} is not a reward/termination heads checkpoint (stage {cfg.get('stage')!r})")
    net = RewardHeads(from_dict(HeadsConfig, cfg["model"], f"{weights} config"))
    load_into(net, {k: v.float() for k, v in load_weights(weights).items()}, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, cfg


def default_heads(world: str) -> Path | None:
    """The shipped reward/termination heads of a world, else its run folder under runs/, else None."""
    for cand in (SHIPPED / f"{world}_heads.safetensors", Path("runs") / f"{world}_heads"):
        if cand.exists():
            return cand
    return None


def default_idm(world: str) -> Path | None:
    """The shipped IDM of a world, else its run folder under runs/, else None."""
    for cand in (SHIPPED / f"{world}_idm.safetensors", Path("runs") / f"{world}_idm"):
        if cand.exists():
            return cand
    return None


def card_guidance(config: dict[str, Any], kind: str) -> float:
    """The action guidance a model card's sampler plays with, for a sampler of ``kind``: the card's
    ``sampler.cfg`` when ``kind`` is the card's own sampler kind (a card without a sampler is a
    teacher's: euler), else 1 (off); a student's guidance is not the teacher's."""
    card_sampler = config.get("sampler") or {}
    return float(card_sampler.get("cfg", 1.0)) if card_sampler.get("kind", "euler") == kind else 1.0

