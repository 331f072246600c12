"""Shared test setup: SDL without a display by default, and a private Xvfb display on request."""

from __future__ import annotations

import os
import select
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
    # Xvfb picks a free display itself and writes its number to the pipe (-displayfd): two test
    # workers choosing a number each from the lock files could pick the same one
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,))
    os.close(write)
    deadline = time.monotonic() + 10
    got = b""
    while not got.endswith(b"\n"):
        ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read, 16) if ready else b""
        if not chunk:
            os.close(read)
            proc.kill()
            pytest.skip("Xvfb did not start")
        got += chunk
    os.close(read)
    n = int(got)
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"Xvfb :{n} did not start")
        time.sleep(0.05)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)
