"""Keyboard and gamepad input of the play window: keymaps, the held-input rule, scripted keys."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from window.hud import Line, help_lines
from world.core import World, WorldError
from world.keymap import Keymap, load_keymap
from world.paths import KEYMAPS

#: window controls used when the keymap does not set them ("hud" is not a keymap control yet)
DEFAULT_CONTROLS: dict[str, str] = {
    "reset": "r", "pause": "p", "step": ".", "help": "f1", "hud": "f2", "screenshot": "f12",
    "record": "f9", "quit": "escape", "faster": "]", "slower": "[", "policy": "tab",
    "view": "f8", "steps": "f5", "save": "f6", "load": "f7",
}


class PlayError(WorldError, ValueError):
    """Bad command-line input or keymap for the play window."""


class WindowError(RuntimeError):
    """SDL or OpenGL could not open the play window."""


DEAD_ZONE = 0.35  # stick deflection below this is no input
#: keys of the automatic keymap for worlds that ship none (e.g. many gym:<id> games)
AUTO_KEYS = {"UP": "up", "DOWN": "down", "LEFT": "left", "RIGHT": "right", "FIRE": "space"}
AUTO_NUMBER_KEYS = "1234567890"


# ---------------------------------------------------------------------- keymap and input
def key_code(name: str, where: str) -> int:
    """The pygame key code of a key name, or an error naming the bad name."""
    import pygame

    with warnings.catch_warnings():  # key names resolve without pygame.init(); silence its warning
        warnings.simplefilter("ignore")
        try:
            return pygame.key.key_code(name)
        except ValueError:
            raise PlayError(
                f"{where}: unknown key name {name!r}; use names as pygame.key.name() prints them, "
                f"e.g. 'up', 'w', 'space', 'return', 'tab', 'escape', 'f1', '.', '['") from None


def auto_keymap(action_names: Sequence[str]) -> Keymap:
    """A keymap for a world that ships none: arrows/space by action name, and number keys
    1, 2, ... for actions 1, 2, ... (the first ten)."""
    keys = {AUTO_KEYS[a]: a for a in action_names if a in AUTO_KEYS}
    keys.update({k: a for k, a in zip(AUTO_NUMBER_KEYS, action_names[1:])})
    return Keymap("auto", keys)


def resolve_keymap(world: World, override: str | None) -> Keymap:
    """``--keymap`` if given, else the world's own ``keymap()`` (the gym adapter resolves its
    generic keymap per game), else its shipped keymap file, else :func:`auto_keymap`."""
    if override is not None:
        return load_keymap(override, world.action_names)
    own = getattr(world, "keymap", None)
    if callable(own):
        return own()
    if (KEYMAPS / f"{world.keymap_name}.yaml").is_file():
        return load_keymap(world.keymap_name, world.action_names)
    return auto_keymap(world.action_names)


@dataclass
class Bindings:
    """A keymap resolved to action indices, plus the window controls by key name."""

    keys: dict[str, int]
    hat: dict[str, int]
    axes: dict[int, tuple[int, int]]
    buttons: dict[int, int]
    controls: dict[str, str]  # key name -> control name
    keymap: Keymap

    @classmethod
    def from_keymap(cls, keymap: Keymap, action_names: Sequence[str]) -> Bindings:
        index = {a: i for i, a in enumerate(action_names)}
        where = f"keymap {keymap.name!r}"
        for name in keymap.keys:
            key_code(name, where)
        controls = {**DEFAULT_CONTROLS, **keymap.controls}
        by_key: dict[str, str] = {}
        for control, key in controls.items():
            key_code(key, f"{where} control {control!r}")
            if key in by_key:
                raise PlayError(f"{where}: key {key!r} is bound to both controls "
                                f"{by_key[key]!r} and {control!r}; give each its own key")
            if key in keymap.keys:
                raise PlayError(f"{where}: key {key!r} is bound to action {keymap.keys[key]!r} "
                                f"and to control {control!r}; give each its own key")
            by_key[key] = control
        return cls(keys={k: index[a] for k, a in keymap.keys.items()},
                   hat={d: index[a] for d, a in keymap.hat.items()},
                   axes={i: (index[n], index[p]) for i, (n, p) in keymap.axes.items()},
                   buttons={b: index[a] for b, a in keymap.buttons.items()},
                   controls=by_key, keymap=keymap)

    def control_keys(self) -> dict[str, str]:
        """control name -> key name."""
        return {c: k for k, c in self.controls.items()}

    def help(self) -> list[Line]:
        """The help overlay's lines for these bindings."""
        km = self.keymap
        action_keys: dict[str, list[str]] = {}
        for key, action in km.keys.items():
            action_keys.setdefault(action, []).append(key)
        pad = []
        if km.hat:
            pad.append("d-pad: " + ", ".join(f"{d} {a}" for d, a in km.hat.items()))
        pad += [f"stick axis {i}: {n} / {p}" for i, (n, p) in km.axes.items()]
        pad += [f"button {b}: {a}" for b, a in km.buttons.items()]
        return help_lines(action_keys, pad, self.control_keys())


def chord_combiner(world: World) -> Callable[[list[int]], int] | None:
    """For worlds that combine held inputs into one action (the gym adapter's
    ``action_for_pressed``: UP + RIGHT + FIRE -> UPRIGHTFIRE), a function from the held
    actions (in press order) to that action, falling back to the most recent one."""
    combine = getattr(world, "action_for_pressed", None)
    if not callable(combine):
        return None
    names = world.action_names

    def chord(held: list[int]) -> int:
        return int(combine([names[i] for i in held])) or held[-1]

    return chord


class ActionInput:
    """The action asked for by held inputs: the most recently pressed one wins (or, with
    ``combine``, the action the world makes of all of them); a press released before the
    next tick still counts for that tick; nothing held = NOOP (0).

    Inputs are named sources ("key:right", "pad0:hat:up", "pad0:axis1", ...), so keys and
    gamepads share one press order.
    """

    def __init__(self, combine: Callable[[list[int]], int] | None = None) -> None:
        self._held: dict[str, int] = {}  # source -> action, in press order
        self._tap: int | None = None
        self._combine = combine

    def press(self, source: str, action: int) -> None:
        self._held.pop(source, None)
        self._held[source] = action
        self._tap = action

    def release(self, source: str) -> None:
        self._held.pop(source, None)

    def set(self, source: str, action: int | None) -> None:
        """Level-style inputs (d-pad, stick): press on a change of action, release on None."""
        if action is None:
            self.release(source)
        elif self._held.get(source) != action:
            self.press(source, action)

    def release_prefix(self, prefix: str) -> None:
        for source in [s for s in self._held if s.startswith(prefix)]:
            self.release(source)

    def clear(self) -> None:
        self._held.clear()
        self._tap = None

    def current(self) -> int:
        if self._held:
            held = list(self._held.values())
            return self._combine(held) if self._combine else held[-1]
        return self._tap or 0

    def end_tick(self) -> None:
        self._tap = None


def axis_action(value: float, pair: tuple[int, int], dead_zone: float = DEAD_ZONE) -> int | None:
    """The action of a stick axis position: [negative, positive] outside the dead zone."""
    if value <= -dead_zone:
        return pair[0]
    if value >= dead_zone:
        return pair[1]
    return None


def hat_actions(value: tuple[int, int], hat: dict[str, int]) -> dict[str, int | None]:
    """d-pad direction -> its action when pushed, else None (pygame's hat y is +1 for up)."""
    x, y = value
    pushed = {"left": x < 0, "right": x > 0, "up": y > 0, "down": y < 0}
    return {d: (hat[d] if on else None) for d, on in pushed.items() if d in hat}


# ---------------------------------------------------------------------- scripted keys
def parse_script(text: str) -> list[tuple[str | None, int]]:
    """'right*10,wait*2,f12' -> [("right", 10), (None, 2), ("f12", 1)]; names are checked."""
    steps: list[tuple[str | None, int]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, _, count = token.partition("*")
        name = name.strip().lower()
        if count and (not count.strip().isdigit() or int(count) < 1):
            raise PlayError(f"--script-keys: {token!r} needs a positive count after '*', e.g. right*10")
        n = int(count) if count else 1
        if name != "wait":
            key_code(name, "--script-keys")
        steps.append((None if name == "wait" else name, n))
    if not steps:
        raise PlayError(f"--script-keys is empty ({text!r}); e.g. 'right*10,f12,escape'")
    return steps


def script_timeline(steps: Sequence[tuple[str | None, int]]) -> dict[int, list[tuple[bool, str]]]:
    """tick -> [(pressed?, key)]: each key goes down at its tick and up ``count`` ticks later."""
    events: dict[int, list[tuple[bool, str]]] = {}
    t = 0
    for key, count in steps:
        if key is not None:
            events.setdefault(t, []).append((True, key))
            events.setdefault(t + count, []).append((False, key))
        t += count
    return events
