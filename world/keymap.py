"""Keymaps: YAML files in assets/keymaps mapping keyboard keys and gamepad inputs to actions.

Format::

    keys:            # pygame key names (as pygame.key.name() prints them) -> action name
      up: UP
      w: UP
    gamepad:
      hat: {up: UP, down: DOWN, left: LEFT, right: RIGHT}
      axes: {0: [LEFT, RIGHT], 1: [UP, DOWN]}   # axis index: [negative, positive]
      buttons: {0: FIRE}
    controls:        # window controls, not game actions
      reset: r
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from world.core import WorldError
from world.paths import KEYMAPS

CONTROL_NAMES = ("reset", "pause", "step", "help", "screenshot", "record", "quit", "faster",
                 "slower", "policy", "hud")


class KeymapError(WorldError, ValueError):
    pass


@dataclass
class Keymap:
    name: str
    keys: dict[str, str]
    hat: dict[str, str] = field(default_factory=dict)
    axes: dict[int, tuple[str, str]] = field(default_factory=dict)
    buttons: dict[int, str] = field(default_factory=dict)
    controls: dict[str, str] = field(default_factory=dict)

    def action_for_key(self, key_name: str) -> str | None:
        return self.keys.get(key_name.lower())


def available_keymaps() -> list[str]:
    return sorted(p.stem for p in KEYMAPS.glob("*.yaml"))


def load_keymap(name_or_path: str | Path, action_names: tuple[str, ...] | list[str]) -> Keymap:
    """Load and validate a keymap against a world's action names."""
    path = Path(name_or_path)
    if not path.suffix:
        path = KEYMAPS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise KeymapError(
            f"keymap {str(name_or_path)!r} not found (looked at {path}); "
            f"shipped keymaps: {available_keymaps()}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise KeymapError(f"keymap {path} is not valid YAML: {e}") from e
    allowed = {"keys", "gamepad", "controls"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KeymapError(f"keymap {path}: unknown section(s) {unknown}; valid: {sorted(allowed)}")
    valid = set(action_names)

    def check(action: str, where: str) -> str:
        a = str(action).upper()
        if a not in valid:
            raise KeymapError(
                f"keymap {path}: {where} maps to unknown action {action!r}; "
                f"this world's actions are {list(action_names)}"
            )
        return a

    keys = {str(k).lower(): check(v, f"key {k!r}") for k, v in (data.get("keys") or {}).items()}
    pad = data.get("gamepad") or {}
    hat = {str(k): check(v, f"hat {k!r}") for k, v in (pad.get("hat") or {}).items()}
    axes = {}
    for k, pair in (pad.get("axes") or {}).items():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise KeymapError(f"keymap {path}: axis {k!r} needs [negative_action, positive_action]")
        axes[int(k)] = (check(pair[0], f"axis {k}"), check(pair[1], f"axis {k}"))
    buttons = {int(k): check(v, f"button {k}") for k, v in (pad.get("buttons") or {}).items()}
    controls = {str(k): str(v).lower() for k, v in (data.get("controls") or {}).items()}
    bad = sorted(set(controls) - set(CONTROL_NAMES))
    if bad:
        raise KeymapError(f"keymap {path}: unknown control(s) {bad}; valid: {list(CONTROL_NAMES)}")
    return Keymap(path.stem, keys, hat, axes, buttons, controls)
