"""Loading trained models (world model, autoencoder, IDM) from run folders, checkpoint
folders or shipped ``.safetensors`` files with their model cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from model.idm import IDMConfig, InverseDynamics
from model.transformer import FrameTransformer, TransformerConfig
from trainer.checkpoint import CheckpointError, latest_checkpoint, load_into, load_weights
from trainer.config import from_dict
from trainer.latents import _file_hash

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"


def resolve_full(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run folder, checkpoint folder or shipped .safetensors -> (weights file, full config)."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise CheckpointError(f"run folder {p} has no complete checkpoint yet")
        p = ckpt
    if p.is_dir():
        meta_file = p / "meta.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{p} is not a checkpoint folder (no meta.json)")
        cfg = json.loads(meta_file.read_text())["config"]
        weights = p / "ema.safetensors" if (p / "ema.safetensors").is_file() else p / "model.safetensors"
        return weights, cfg
    if p.suffix == ".safetensors" and p.is_file():
        card = p.with_suffix(".yaml")
        if not card.is_file():
            raise CheckpointError(f"shipped checkpoint {p} has no model card {card} (it holds the config)")
        return p, yaml.safe_load(card.read_text())["config"]
    raise CheckpointError(f"checkpoint {p} not found: give a run folder, a checkpoint folder or a .safetensors file")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_world_model(path: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[FrameTransformer, dict[str, Any], str]:
    """The frame transformer at ``path`` (eval, frozen, fp32), its full config and weights id."""
    weights, cfg = resolve_full(path)
    if "model" not in cfg or "autoencoder" not in cfg:
        raise CheckpointError(f"{path} is not a world-model checkpoint (its config has no model/autoencoder)")
    net = FrameTransformer(from_dict(TransformerConfig, cfg["model"], f"{weights} config"))
    state = {k: v.float() for k, v in _strip(load_weights(weights), "net.").items()}
    load_into(net, state, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, cfg, _file_hash(weights)


def load_idm(path: str | Path, device: str | torch.device = "cpu") -> tuple[InverseDynamics, str]:
    weights, cfg = resolve_full(path)
    net = InverseDynamics(from_dict(IDMConfig, cfg["model"], f"{weights} config"))
    load_into(net, {k: v.float() for k, v in load_weights(weights).items()}, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, _file_hash(weights)


def default_idm(world: str) -> Path | None:
    """The shipped IDM of a world, else its run folder under runs/, else None."""
    for cand in (SHIPPED / f"{world}_idm.safetensors", Path("runs") / f"{world}_idm"):
        if cand.exists():
            return cand
    return None
