"""The one World interface shared by real games, adapted Gymnasium games and dreamed worlds.

A World is a tiny, Gymnasium-shaped simulator with a few extras the rest of dreamstep
needs: named actions and a keymap for the play window, the *effective* action of every
step (what really happened: a move into a wall is no move), exact state snapshots, and,
for the built-in games, a per-pixel map of the world content each frame shows.

Conventions
-----------
- Frames are ``uint8`` arrays of shape ``(H, W, 3)``, RGB, row 0 at the top.
- Actions are integers in ``range(len(world.action_names))``; action 0 is always a
  no-op ("NOOP") so that "no key pressed" has a meaning in every world.
- ``reset(seed)`` returns ``(frame, info)``; ``step(a)`` returns a :class:`StepResult`
  that unpacks like Gymnasium's 5-tuple ``(frame, reward, terminated, truncated, info)``.
- ``info`` always holds ``"step"`` (steps since reset) and ``"effective_action"``
  (an index into ``action_names``). Built-in games add ``"player_pos"`` (the player's
  centre in frame pixels, ``(x, y)`` floats) and ``"score"``.
- In a recorded clip, ``actions[i]`` is the action taken *before* frame ``i`` is shown,
  i.e. the action that leads from frame ``i-1`` to frame ``i`` (``actions[0]`` is NOOP).
"""

from __future__ import annotations

import abc
import dataclasses
import numbers
import os
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np


class WorldError(Exception):
    """Base class of the errors a World raises for bad input."""


class InvalidActionError(WorldError, ValueError):
    pass


class InvalidSettingError(WorldError, ValueError):
    pass


class OutputError(WorldError, OSError):
    """An output file or folder cannot be written (read-only, full, not a folder)."""


class InvalidStateError(WorldError, ValueError):
    """``set_state`` was given something that is not one of this world's states."""


class UnknownWorldError(WorldError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StateNotSupportedError(WorldError, NotImplementedError):
    pass


class StepResult(NamedTuple):
    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


def settings_from_kwargs(cls: type, kwargs: dict[str, Any], world: str) -> Any:
    """Build a settings dataclass strictly: an unknown key is an error that names it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise InvalidSettingError(
            f"unknown setting(s) {unknown} for world {world!r}; valid settings: {sorted(fields)}"
        )
    import typing

    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in kwargs.items():
        hint = hints.get(key)
        numeric = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        if hint is float and numeric:
            value = float(value)
        elif hint is int and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif hint is str and (numeric or isinstance(value, os.PathLike)):
            value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        elif hint in (int, float, bool, str) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
            raise InvalidSettingError(f"setting {key!r} of world {world!r} must be {hint.__name__}, got "
                                      f"{type(value).__name__} {value!r}")
        checked[key] = value
    return cls(**checked)


class World(abc.ABC):
    """Base class of every world. Subclasses implement ``_reset`` and ``_step``."""

    #: registry name, e.g. "adventure"
    name: ClassVar[str] = "world"
    #: whether get_state/set_state are exact
    supports_state: ClassVar[bool] = False
    #: evaluation capabilities of a world whose frames can be read back (None: it has none):
    #: ``find_player(frame) -> (x, y) | None``, the player's position in a (real or generated) frame;
    #: ``find_creatures(frame, positions) -> bool array``, which of the creatures at ``positions`` are drawn
    find_player: ClassVar[Callable[..., tuple[float, float] | None] | None] = None
    find_creatures: ClassVar[Callable[..., np.ndarray] | None] = None

    action_names: tuple[str, ...] = ("NOOP",)
    #: steps per second of game time (the play window's default speed)
    tick_rate: float = 15.0
    #: name of the keymap file in assets/keymaps (without .yaml)
    keymap_name: str = "default"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every world's ``set_state`` refuses a dict that is not one of its ``get_state()`` results
        with one clear error (not a bare KeyError from deep inside)."""
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("set_state")
        if impl is None or getattr(impl, "_checked", False):
            return

        def set_state(self: World, state: dict[str, Any], _impl: Any = impl) -> None:
            if not isinstance(state, dict):
                raise InvalidStateError(f"set_state wants the dict get_state() returned, got {type(state).__name__}")
            try:
                _impl(self, state)
            except KeyError as e:
                raise InvalidStateError(f"not a state of world {self.name!r}: it has no {e.args[0]!r}; pass a dict "
                                        f"that get_state() of this world returned") from e
        set_state._checked = True  # type: ignore[attr-defined]
        set_state.__doc__ = impl.__doc__
        cls.set_state = set_state  # type: ignore[method-assign]

    def __init__(self) -> None:
        self._steps = 0
        self._needs_reset = True
        self._last_info: dict[str, Any] = {}

    # ----------------------------------------------------------------- properties
    @property
    @abc.abstractmethod
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of the frames ``reset`` and ``step`` return."""

    def keymap(self):  # -> world.keymap.Keymap (imported lazily: keymap imports core)
        """This world's keymap: ``assets/keymaps/<keymap_name>.yaml`` for its action names."""
        from world.keymap import load_keymap

        return load_keymap(self.keymap_name, self.action_names)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def info(self) -> dict[str, Any]:
        """The info dict of the last reset/step."""
        return dict(self._last_info)

    # ------------------------------------------------------------ what a dream adds (the play window's interface)
    #: a world whose frames a world model generates (world.dream.DreamWorld)
    is_dream: ClassVar[bool] = False

    @property
    def context_frames(self) -> int:
        """Real frames an episode starts from (a dream's context; 1 for a real game)."""
        return 1

    def real_twin(self) -> World | None:
        """For a dream: its real game with the settings it learned (to play side by side); else None."""
        return None

    @property
    def sampling_steps(self) -> int | None:
        """A dream's sampling steps per frame (None for a real game)."""
        return None

    @sampling_steps.setter
    def sampling_steps(self, steps: int) -> None:
        raise InvalidSettingError(f"{self.name} is not a dream: it has no sampling steps")

    @property
    def sampler_summary(self) -> str:
        """A dream's sampler in words (e.g. "consistency 2 steps"); "" for a real game."""
        return ""

    def describe(self) -> dict[str, Any]:
        """JSON-able description used in dataset metadata and reports."""
        return {
            "world": self.name,
            "frame_shape": list(self.frame_shape),
            "tick_rate": self.tick_rate,
            "action_names": list(self.action_names),
            "settings": self.settings_dict(),
        }

    def settings_dict(self) -> dict[str, Any]:
        s = getattr(self, "settings", None)
        return dataclasses.asdict(s) if dataclasses.is_dataclass(s) else {}

    # ----------------------------------------------------------------- actions
    def action_index(self, action: int | str | np.integer) -> int:
        """Validate an action (index or name) and return its index, or raise a clear error."""
        if isinstance(action, str):
            upper = action.upper()
            if upper in self.action_names:
                return self.action_names.index(upper)
            raise InvalidActionError(
                f"unknown action name {action!r} for world {self.name!r}; "
                f"valid names: {list(self.action_names)}"
            )
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise InvalidActionError(
                f"action must be an int in [0, {self.num_actions - 1}] or one of "
                f"{list(self.action_names)}, got {action!r} ({type(action).__name__})"
            )
        a = int(action)
        if not 0 <= a < self.num_actions:
            raise InvalidActionError(
                f"action {a} is out of range for world {self.name!r}: valid actions are "
                f"0..{self.num_actions - 1} = {list(self.action_names)}"
            )
        return a

    # ----------------------------------------------------------------- API
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InvalidSettingError(f"seed must be a non-negative int or None, got {seed!r}")
        self._steps = 0
        self._needs_reset = False
        frame, info = self._reset(None if seed is None else int(seed))
        info.setdefault("effective_action", 0)
        info["step"] = 0
        self._last_info = info
        return frame, dict(info)

    def step(self, action: int | str) -> StepResult:
        if self._needs_reset:
            raise WorldError(f"world {self.name!r}: call reset() before step()")
        a = self.action_index(action)
        res = self._step(a)
        self._steps += 1
        res.info.setdefault("effective_action", a)
        res.info["step"] = self._steps
        if res.terminated or res.truncated:
            self._needs_reset = True
        self._last_info = res.info
        return res

    @abc.abstractmethod
    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]: ...

    @abc.abstractmethod
    def _step(self, action: int) -> StepResult: ...

    def render(self, size: int | None = None) -> np.ndarray:
        """The current frame, optionally re-rendered at ``size`` x ``size`` for display."""
        raise NotImplementedError

    def content_map(self) -> np.ndarray | None:
        """Per-pixel int64 ids of the world content the current frame shows, or None.

        Two pixels (of any two frames of one episode) with the same id show the same
        piece of the world; the evaluation uses it to tell seen from unseen content.
        """
        return None

    def get_state(self) -> dict[str, Any]:
        raise StateNotSupportedError(f"world {self.name!r} does not support get_state()")

    def set_state(self, state: dict[str, Any]) -> None:
        raise StateNotSupportedError(f"world {self.name!r} does not support set_state()")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the world holds (GL objects, an external env)."""

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # shared bookkeeping for subclasses' get_state/set_state
    def _base_state(self) -> dict[str, Any]:
        return {"steps": self._steps, "needs_reset": self._needs_reset,
                "last_info": _copy_info(self._last_info)}

    def _restore_base_state(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])
        self._needs_reset = bool(state["needs_reset"])
        self._last_info = _copy_info(state["last_info"])


def _copy_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in info.items()}
