"""Worlds: the built-in games, adapters for external Gymnasium games, and dreamed worlds.

>>> from world import make_world
>>> w = make_world("adventure", camera="follow")
>>> frame, info = w.reset(seed=0)
>>> frame, reward, terminated, truncated, info = w.step("RIGHT")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from world.core import (
    InvalidActionError,
    InvalidSettingError,
    StateNotSupportedError,
    StepResult,
    UnknownWorldError,
    World,
    WorldError,
)

# name -> "module:Class"; modules import lazily so that `import world` stays light.
BUILTIN_WORLDS: dict[str, str] = {
    "adventure": "world.adventure:AdventureWorld",
    "maze3d": "world.maze3d:MazeWorld",
}
GYM_PREFIX = "gym:"


def list_worlds() -> list[str]:
    return sorted(BUILTIN_WORLDS)


def world_class(name: str) -> type[World] | None:
    """The World class of a built-in world (imported, not built), or None for another name."""
    if name not in BUILTIN_WORLDS:
        return None
    import importlib

    module_name, cls_name = BUILTIN_WORLDS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def player_finder(name: str) -> Callable[..., tuple[float, float] | None] | None:
    """The world's ``find_player`` (see :class:`world.core.World`), or None."""
    cls = world_class(name)
    return None if cls is None else cls.find_player


def creature_finder(name: str) -> Callable[..., Any] | None:
    """The world's ``find_creatures`` (see :class:`world.core.World`), or None."""
    cls = world_class(name)
    return None if cls is None else cls.find_creatures


def make_world(name: str, **settings: Any) -> World:
    """Create a world by name.

    ``name`` is a built-in world (see :func:`list_worlds`) or ``"gym:<env id>"`` for any
    Gymnasium environment with image observations, e.g. ``"gym:ALE/Breakout-v5"``.
    """
    if name.startswith(GYM_PREFIX):
        from world.gym_adapter import GymWorld

        return GymWorld(name[len(GYM_PREFIX):], **settings)
    if name == "dream":  # a trained world model (default: the shipped checkpoint)
        from world.dream import DreamWorld

        return DreamWorld(**settings)
    if name not in BUILTIN_WORLDS:
        raise UnknownWorldError(
            f"unknown world {name!r}; built-in worlds: {list_worlds()}, or "
            f"'{GYM_PREFIX}<gymnasium id>' (e.g. 'gym:ALE/Breakout-v5') for an external game, or 'dream' "
            f"for a trained world model"
        )
    module, cls = BUILTIN_WORLDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**settings)


__all__ = [
    "World", "StepResult", "WorldError", "InvalidActionError", "InvalidSettingError",
    "UnknownWorldError", "StateNotSupportedError", "make_world", "list_worlds",
    "BUILTIN_WORLDS", "GYM_PREFIX",
]
