"""The play window's heads-up display and help overlay, as RGBA text panels.

The HUD is the list :data:`HUD_FIELDS`: each field reads the window's *status* (a plain
mapping the app fills every frame: world, fps, step, score, action, ...) and returns its
line of text, or None to hide itself. A new mode (a dreamed world, real and dreamed side by
side) adds its status keys and appends its fields; nothing here needs to know about it.

Panels are drawn with ``pygame.font`` (no display needed) into ``uint8`` RGBA arrays that
the window blends over the game frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Colour = tuple[int, int, int]
WHITE: Colour = (240, 240, 240)
GREY: Colour = (170, 170, 170)
YELLOW: Colour = (255, 214, 64)
RED: Colour = (255, 80, 72)
CYAN: Colour = (110, 210, 255)

#: one line of a panel: its cells (drawn as aligned columns) and its colour
Line = tuple[tuple[str, ...], Colour]

#: what each window control does, in the order the help overlay lists them
CONTROL_HELP: dict[str, str] = {
    "pause": "pause / resume",
    "step": "one step while paused",
    "reset": "new episode",
    "policy": "human / scripted policy",
    "faster": "faster game ticks",
    "slower": "slower game ticks",
    "record": "start / stop recording a dataset",
    "screenshot": "screenshot (PNG)",
    "view": "dream / real / side by side (a dream)",
    "steps": "dream sampling steps 1 / 2 / 4",
    "save": "save the state",
    "load": "load the saved state",
    "hud": "show / hide this HUD",
    "help": "show / hide help",
    "quit": "quit",
}


@dataclass(frozen=True)
class HudField:
    """One HUD line: ``text(status)`` returns the line, or None to hide it."""

    name: str
    text: Callable[[Mapping[str, Any]], str | None]
    colour: Colour = WHITE


def _action_text(s: Mapping[str, Any]) -> str:
    pressed, effective = s["action"], s["effective_action"]
    shown = pressed if effective == pressed else f"{pressed} -> {effective}"
    return f"action {shown}"


def _recording_text(s: Mapping[str, Any]) -> str | None:
    if not s.get("recording"):
        return None
    return f"REC  {s['recorded_episodes']} episodes saved  ({s['recording']})"


def _timing_text(s: Mapping[str, Any]) -> str | None:
    if s.get("frame_ms") is None:
        return None
    lat = s.get("latency_ms")
    return f"frame {s['frame_ms']:.1f} ms   action-to-display {lat:.0f} ms" if lat is not None \
        else f"frame {s['frame_ms']:.1f} ms"


def _dream_text(s: Mapping[str, Any]) -> str | None:
    if not s.get("view"):
        return None
    psnr = s.get("psnr")
    cmp = f"   real vs dream {psnr:.1f} dB" if psnr is not None else ""
    return f"view {s['view']}   {s['sampler']}{cmp}"


HUD_FIELDS: tuple[HudField, ...] = (
    HudField("world", lambda s: f"{s['world']}   episode {s['episode']}  seed {s['seed']}", CYAN),
    HudField("fps", lambda s: f"{s['fps']:.0f} fps   {s['steps_per_s']:.1f} steps/s "
                              f"(tick rate {s['tick_rate']:.3g})"),
    HudField("step", lambda s: f"step {s['step']}   score {s['score']:g}"),
    HudField("action", _action_text),
    HudField("timing", _timing_text),
    HudField("dream", _dream_text, CYAN),
    HudField("controller", lambda s: f"playing: {s['controller']}"),
    HudField("paused", lambda s: "PAUSED" if s["paused"] else None, YELLOW),
    HudField("recording", _recording_text, RED),
    HudField("message", lambda s: s.get("message") or None, GREY),
)


def hud_lines(status: Mapping[str, Any], fields: Sequence[HudField] = HUD_FIELDS) -> list[Line]:
    """The visible HUD lines for ``status``."""
    lines: list[Line] = []
    for f in fields:
        text = f.text(status)
        if text is not None:
            lines.append(((text,), f.colour))
    return lines


def help_lines(action_keys: Mapping[str, Sequence[str]], gamepad: Sequence[str],
               controls: Mapping[str, str]) -> list[Line]:
    """The help overlay: each action's keys, the gamepad inputs, then the window controls.

    ``action_keys`` maps an action name to its keys, ``gamepad`` holds ready-made lines
    ("d-pad: ..."), ``controls`` maps a control name to its key.
    """
    lines: list[Line] = [(("keys",), CYAN)]
    lines += [((action, ", ".join(keys)), WHITE) for action, keys in action_keys.items()]
    if gamepad:
        lines.append((("gamepad",), CYAN))
        lines += [((g,), WHITE) for g in gamepad]
    lines.append((("window",), CYAN))
    ordered = [c for c in CONTROL_HELP if c in controls]
    lines += [((controls[c], CONTROL_HELP[c]), WHITE) for c in ordered]
    return lines


class TextPanels:
    """Renders lines into a translucent RGBA panel, cached by content and font size."""

    def __init__(self, font_px: int = 18, padding: int = 6, background_alpha: int = 185,
                 background: Colour = (12, 12, 16)) -> None:
        import pygame.font

        pygame.font.init()
        self._font_module = pygame.font
        self.padding, self.alpha, self.background = padding, background_alpha, background
        self._fonts: dict[int, Any] = {}
        self._cache: dict[tuple[int, tuple[Line, ...]], np.ndarray] = {}
        self.font_px = font_px

    def _font(self, px: int) -> Any:
        if px not in self._fonts:
            self._fonts[px] = self._font_module.Font(None, px)
        return self._fonts[px]

    def render(self, lines: Sequence[Line], font_px: int | None = None) -> np.ndarray:
        """(H, W, 4) uint8 RGBA panel showing ``lines``; cells of a line form aligned columns."""
        px = font_px or self.font_px
        key = (px, tuple(lines))
        if key not in self._cache:
            if len(self._cache) > 64:  # status text changes every frame; keep the cache small
                self._cache.clear()
            self._cache[key] = self._draw(lines, self._font(px))
        return self._cache[key]

    def _draw(self, lines: Sequence[Line], font: Any) -> np.ndarray:
        import pygame

        ncols = max((len(cells) for cells, _ in lines), default=1)
        gap = font.size("    ")[0]
        widths = [0] * ncols
        for cells, _ in lines:
            if len(cells) > 1:  # single-cell lines (titles) span the columns
                for i, cell in enumerate(cells):
                    widths[i] = max(widths[i], font.size(cell)[0])
        single = max((font.size(cells[0])[0] for cells, _ in lines if len(cells) == 1), default=0)
        columns_w = sum(widths) + gap * (ncols - 1)
        line_h = font.get_linesize()
        w = max(columns_w, single) + 2 * self.padding
        h = line_h * max(len(lines), 1) + 2 * self.padding
        surface = pygame.Surface((w, h))
        surface.fill(self.background)
        for row, (cells, colour) in enumerate(lines):
            x, y = self.padding, self.padding + row * line_h
            for i, cell in enumerate(cells):
                surface.blit(font.render(cell, True, colour, self.background), (x, y))
                x += widths[i] + gap
        rgb = pygame.surfarray.array3d(surface).transpose(1, 0, 2)
        rgba = np.empty((h, w, 4), np.uint8)
        rgba[..., :3] = rgb
        rgba[..., 3] = self.alpha
        return rgba
