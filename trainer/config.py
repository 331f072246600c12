"""Strict YAML configs: dataclasses loaded from one file per experiment.

- An unknown key anywhere is an error that names it, where it was, and the valid keys.
- ``base: other.yaml`` (relative to the file) inherits from another config, at most one
  level deep; the child's keys override the base's, merged per section.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from model.io import ConfigError, from_dict  # noqa: F401 - strict dataclass configs (re-exported)

T = TypeVar("T")










def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; shipped configs are in assets/configs/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        raise ConfigError(f"{path} is empty; a config names at least its stage, e.g. start from "
                          f"assets/configs/adventure_teacher.yaml (or write 'base: <shipped config>')")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    if "base" in data:
        base_path = (path.parent / str(data.pop("base"))).resolve()
        base = read_yaml_no_base(base_path, child=path)
        data = _merge(base, data)
    return data


def read_yaml_no_base(path: Path, child: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{child}: base config {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if "base" in data:
        raise ConfigError(f"{child}: base config {path} has its own 'base:'; inheritance is one level deep")
    return data


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file (with ``base:``), then apply dotted ``overrides``."""
    data = read_yaml(path)
    want = getattr(cls, "__dataclass_fields__", {}).get("stage")
    if want is not None and "stage" in data and data["stage"] != want.default:
        raise ConfigError(f"{path} is a {data['stage']!r} config, not a {want.default!r} one; run it with "
                          f"python -m trainer {data['stage']}, or give a {want.default} config "
                          f"(assets/configs/)")
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return from_dict(cls, data, str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.depth=4"]`` -> {"train.lr": 1e-4, "model.depth": 4}."""
    from world.io import parse_key_values

    return parse_key_values(items, "an override (--set)", "train.steps=100", error=ConfigError)
