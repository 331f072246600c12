"""Loading trained models (world model, autoencoder, IDM, reward/termination heads) from run folders, checkpoint
folders or shipped ``.safetensors`` files with their model cards."""

from __future__ import annotations

from pathlib import Path

import torch

from model.io import (  # noqa: F401 - loading lives in model.io (re-exported for the trainer)
    SHIPPED,
    CheckpointError,
    card_guidance,
    default_heads,
    default_idm,
    from_dict,
    load_heads,
    load_idm,
    load_into,
    load_weights,
    load_world_model,
    resolve_full,
    strip_prefix,
)
from model.transformer import FrameTransformer, TransformerConfig
from world.log import get_logger


def init_from(net: torch.nn.Module, path: str | Path, what: str) -> Path:
    """Load the weights of a run, checkpoint or shipped file into a new stage's ``net`` (``init``:
    continue training from trained weights); the model config must match. Returns the weights file."""
    weights, cfg = resolve_full(path)
    state = strip_prefix(load_weights(weights), "net.")
    if isinstance(net, FrameTransformer) and isinstance(cfg.get("model"), dict):
        src_cfg = from_dict(TransformerConfig, cfg["model"], f"{weights} config")
        shape = ("window", "sink", "block_frames", "pose_moves", "pose_radius", "pose_gain", "pose_taken",
                 "pose_values")
        if any(getattr(src_cfg, k) != getattr(net.cfg, k) for k in shape):
            # another window/sink/block size (e.g. a long-context teacher from the shipped one): the
            # time-distance bias is extended (FrameTransformer.load_from), every other weight copied; a
            # pose bias or taken head the source lacks starts fresh
            src = FrameTransformer(src_cfg)
            load_into(src, state, str(weights))
            try:
                net.load_from(src)
            except (ValueError, RuntimeError) as e:
                raise CheckpointError(f"cannot initialise the {what} from {weights}: {e}") from None
            get_logger().info(f"[{what}] initialised from {weights} (window {src_cfg.window} -> {net.cfg.window}, "
                  f"sink {src_cfg.sink} -> {net.cfg.sink})")
            return weights
    load_into(net, state, str(weights))
    get_logger().info(f"[{what}] initialised from {weights}")
    return weights













