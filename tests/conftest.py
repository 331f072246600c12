"""Shared test setup: SDL without a display by default, and a private Xvfb display on request."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


@pytest.fixture(scope="module")
def xvfb_display() -> Iterator[str]:
    """A private Xvfb server on a free display number (skips without Xvfb)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    n = next(n for n in range(140, 400) if not Path(f"/tmp/.X{n}-lock").exists()
             and not Path(f"/tmp/.X11-unix/X{n}").exists())
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"Xvfb :{n} did not start")
        time.sleep(0.05)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)
