"""The read side of checkpoints and model cards: everything that plays, evaluates or benchmarks a trained
model loads it through here, without the trainer.

A model is given as a run folder (its latest checkpoint), a checkpoint folder (its EMA weights when it
has them) or a shipped ``.safetensors`` file whose config is in the model card beside it (the ``.yaml``
that :mod:`trainer.export` writes, with the weights' sha256, checked at every load). Configs are
dataclasses built strictly (:func:`from_dict`): an unknown key is an error that names it.
The write side (atomic checkpoints, export) is in :mod:`trainer.checkpoint` and :mod:`trainer.export`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.autoencoder import Autoencoder, AutoencoderConfig
from model.heads import HeadsConfig, RewardHeads
from model.idm import IDMConfig, InverseDynamics
from model.transformer import FrameTransformer, TransformerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light type checking: numbers given as strings (YAML's 3e-4) and ints for floats."""
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, float, bool, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``, recursing into dataclass-typed fields."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        typ = _dataclass_type(hints[name])
        if typ is not None and (isinstance(value, dict) or value is None):
            kwargs[name] = from_dict(typ, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


class CheckpointError(RuntimeError):
    pass


SHIPPED = REPO_ROOT / "assets" / "checkpoints"  # the weights users get with the repository


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    ckpts = sorted(p for p in root.glob("step_*") if (p / "meta.json").is_file())
    return ckpts[-1] if ckpts else None


def load_weights(path: str | Path, name: str = "model") -> dict[str, torch.Tensor]:
    """Load one weight group from a checkpoint folder or a .safetensors file, with clear errors."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / f"{name}.safetensors"
    if not file.is_file():
        hint = ""
        if path.is_dir():
            hint = f"; this folder has {sorted(p.name for p in path.iterdir())}"
        raise CheckpointError(f"checkpoint weights {file} not found{hint}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {file} is corrupt or not a safetensors file ({e}); delete it and resume from "
            f"an earlier checkpoint, or re-export it"
        ) from e


def load_into(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with an error that names missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    # entries a module fills in itself when older weights lack them (its ``defaulted_state``)
    defaulted = {f"{name}.{k}" if name else k for name, m in module.named_modules()
                 for k in getattr(m, "defaulted_state", ())}
    missing = sorted(set(own) - set(sd) - defaulted)
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{what} does not fit the model config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}; check that the config matches the one it was trained with"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})


def _digest(path: str | Path, algorithm: str) -> str:
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """A short sha1 of a file's bytes: the id that names weights in reports and latent caches (kept sha1:
    another id would orphan every latent cache and change the ids of every earlier report)."""
    return _digest(path, "sha1")[:12]


def content_hash(path: str | Path) -> str:
    """The sha256 of a file's bytes (a model card records it; loading checks it)."""
    return _digest(path, "sha256")


def read_card(weights: Path) -> dict[str, Any]:
    """The model card (``.yaml`` beside a ``.safetensors``) as a dict, with errors that name it."""
    import yaml

    card = weights.with_suffix(".yaml")
    if not card.is_file():
        raise CheckpointError(f"checkpoint {weights} has no model card {card} (it holds the config); export it with "
                              f"python -m trainer.export, or give its run folder")
    try:
        data = yaml.safe_load(card.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise CheckpointError(f"model card {card} is not valid YAML{at} ({getattr(e, 'problem', e)}); fix it or "
                              f"re-export the checkpoint") from e
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise CheckpointError(f"model card {card} has no 'config' section; it is not a dreamstep model card "
                              f"(re-export the checkpoint with python -m trainer.export)")
    return data


def check_content(weights: Path, card: dict[str, Any]) -> None:
    """A card that records its weights' sha256 must match them: flipped bytes in the tensor payload
    (which safetensors' header check does not see) are refused, not played."""
    want = card.get("sha256")
    if want and content_hash(weights) != want:
        raise CheckpointError(f"{weights} does not match the sha256 its model card records ({str(want)[:12]}...): "
                              f"the file is corrupted or was replaced; restore it (git checkout, or copy it again) "
                              f"or re-export it")


def resolve_full(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run folder, checkpoint folder or shipped .safetensors -> (weights file, full config).

    Checkpoint folders give their EMA weights when they have them; a shipped file's config
    is in its model card (the .yaml beside it).
    """

    p = Path(path)
    if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p  # cards name shipped files relative to the repository (assets/...)
    if p.suffix in (".yaml", ".yml") and p.is_file():  # the model card given for its weights
        if not p.with_suffix(".safetensors").is_file():
            raise CheckpointError(f"{p} is a model card without its weights ({p.with_suffix('.safetensors').name} "
                                  f"is not beside it); give the .safetensors file")
        p = p.with_suffix(".safetensors")
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
        card = read_card(p)
        check_content(p, card)
        return p, card["config"]
    raise CheckpointError(f"checkpoint {p} not found: give a run folder, a checkpoint folder or a .safetensors file")


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """A run folder, a checkpoint folder or a shipped .safetensors -> (weights file, model config dict)."""
    weights, cfg = resolve_full(path)
    return weights, cfg["model"]


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


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
    state = {k: v.float() for k, v in strip_prefix(load_weights(weights), "net.").items()}
    load_into(net, state, str(weights))
    net.eval().requires_grad_(False).to(device)
    return net, cfg, file_hash(weights)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Autoencoder, str]:
    """The autoencoder at ``path`` (eval mode, frozen) and an id of its weights."""
    weights, cfg_dict = resolve_checkpoint(path)
    ae = Autoencoder(from_dict(AutoencoderConfig, cfg_dict, f"{weights} config"))
    load_into(ae, load_weights(weights), str(weights))
    ae.eval().requires_grad_(False).to(device)
    return ae, file_hash(weights)


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
