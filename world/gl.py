"""One ModernGL context per process, shared by every world that renders with OpenGL.

Worlds render offscreen into their own framebuffers. Headless, the context is a
standalone EGL context (Mesa llvmpipe on a CPU-only machine). The play window calls
:func:`set_context` with its window's context first, so that worlds and the window
share one GL context and frames never leave the GPU side of the driver.
"""

from __future__ import annotations

import os
import sys

# llvmpipe's worker threads do not survive fork() (async vector envs fork workers); render
# on the calling thread unless the user asked otherwise. At 64x64 this is not slower.
os.environ.setdefault("LP_NUM_THREADS", "0")

import moderngl  # noqa: E402

_ctx: moderngl.Context | None = None
_pid: int | None = None


class GLUnavailableError(RuntimeError):
    pass


def set_context(ctx: moderngl.Context) -> None:
    global _ctx, _pid
    _ctx, _pid = ctx, os.getpid()


def get_context() -> moderngl.Context:
    """The process's shared context, created on first use (and again after a fork)."""
    global _ctx, _pid
    if _ctx is not None and _pid == os.getpid():
        return _ctx
    errors = []
    for kwargs in ({"backend": "egl"}, {}):
        try:
            ctx = moderngl.create_standalone_context(require=330, **kwargs)
            break
        except Exception as e:  # noqa: BLE001 - report every backend's failure below
            errors.append(f"{kwargs or 'default'}: {e}")
    else:
        raise GLUnavailableError(
            "could not create an OpenGL 3.3 context (" + "; ".join(errors) + "). On Debian/Ubuntu "
            "install Mesa's EGL: apt-get install -y libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri"
        )
    set_context(ctx)
    return ctx


def clear_context() -> None:
    """Forget the shared context (the play window calls this when it closes)."""
    global _ctx, _pid
    _ctx, _pid = None, None


def no_display_reason() -> str | None:
    """Why no window can open here, or None if one may (SDL still gets the last word)."""
    driver = os.environ.get("SDL_VIDEODRIVER", "")
    if driver in ("dummy", "offscreen"):
        return f"SDL_VIDEODRIVER={driver} has no windows"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return "DISPLAY and WAYLAND_DISPLAY are unset"
    return None
