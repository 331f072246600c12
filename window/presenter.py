"""Drawing: frames as textures in window rectangles (nearest filtering, integer scale, letterboxed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from world.paths import shader_source


# ---------------------------------------------------------------------- drawing
class Rect(NamedTuple):
    """A window rectangle in pixels, origin at the top left."""

    x: int
    y: int
    w: int
    h: int


def fit_scale(area: tuple[float, float], image: tuple[int, int]) -> float:
    """The largest integer scale of ``image`` (w, h) that fits ``area``, or the exact fit
    when even 1x does not fit."""
    s = min(area[0] / image[0], area[1] / image[1])
    return float(math.floor(s)) if s >= 1 else s


def layout_row(window: tuple[int, int], images: Sequence[tuple[int, int]], gap: int = 8) -> list[Rect]:
    """Rectangles for images (w, h) side by side, one common scale, centred (letterboxed)."""
    ww, wh = window
    n = len(images)
    cell_w = (ww - gap * (n - 1)) / n
    s = min(fit_scale((cell_w, wh), im) for im in images)
    sizes = [(max(1, int(w * s)), max(1, int(h * s))) for w, h in images]
    x = (ww - sum(w for w, _ in sizes) - gap * (n - 1)) // 2
    rects = []
    for w, h in sizes:
        rects.append(Rect(x, (wh - h) // 2, w, h))
        x += w + gap
    return rects


class Presenter:
    """Draws named textures into window rectangles (nearest filtering, alpha blended)."""

    def __init__(self, ctx: Any) -> None:
        import moderngl

        self.ctx, self._mgl = ctx, moderngl
        self.prog = ctx.program(vertex_shader=shader_source("present.vert"),
                                fragment_shader=shader_source("present.frag"))
        self.vbo = ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], "f4").tobytes())
        self.vao = ctx.vertex_array(self.prog, [(self.vbo, "2f", "in_corner")])
        self.textures: dict[str, Any] = {}

    def upload(self, name: str, image: np.ndarray) -> None:
        """Set texture ``name`` to an (H, W, 3|4) uint8 image (row 0 at the top)."""
        h, w, c = image.shape
        tex = self.textures.get(name)
        if tex is None or tex.size != (w, h) or tex.components != c:
            if tex is not None:
                tex.release()
            tex = self.ctx.texture((w, h), c, alignment=1)
            tex.filter = (self._mgl.NEAREST, self._mgl.NEAREST)
            tex.repeat_x = tex.repeat_y = False
            self.textures[name] = tex
        tex.write(np.ascontiguousarray(image), alignment=1)

    def draw(self, window: tuple[int, int], layers: Sequence[tuple[str, Rect]],
             background: tuple[float, float, float] = (0.06, 0.06, 0.07)) -> None:
        """Clear the window and draw each (texture name, rect) in order."""
        ctx, (ww, wh) = self.ctx, window
        ctx.screen.use()
        ctx.viewport = (0, 0, ww, wh)
        ctx.scissor = None
        ctx.disable(self._mgl.DEPTH_TEST | self._mgl.CULL_FACE)
        ctx.enable(self._mgl.BLEND)
        ctx.blend_func = self._mgl.SRC_ALPHA, self._mgl.ONE_MINUS_SRC_ALPHA
        ctx.clear(*background)
        for name, r in layers:
            self.prog["u_rect"].value = (2 * r.x / ww - 1, 1 - 2 * (r.y + r.h) / wh,
                                         2 * (r.x + r.w) / ww - 1, 1 - 2 * r.y / wh)
            self.textures[name].use(0)
            self.vao.render(self._mgl.TRIANGLE_STRIP)

    def read_window(self, window: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 of what was drawn (the back buffer, before the flip), top row first."""
        ww, wh = window
        raw = self.ctx.screen.read(viewport=(0, 0, ww, wh), components=3, alignment=1)
        return np.frombuffer(raw, np.uint8).reshape(wh, ww, 3)[::-1].copy()

    def release(self) -> None:
        for tex in self.textures.values():
            tex.release()
        for obj in (self.vao, self.vbo, self.prog):
            obj.release()
