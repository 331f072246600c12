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
    # workers choosing a number each from the lock files could pick the same one. -noreset: by
    # default the server resets when its last client leaves, and a window opened during that reset
    # fails to connect (seen on a loaded machine: the third env of a test that opens three in turn)
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp",
                             "-noreset"],
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


# Under pytest-xdist (make test: one worker per core) every worker, and the processes it starts,
# computes on one thread: two workers of two threads each would oversubscribe the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from tests.trainer_helpers import ROOT  # noqa: E402 - after the thread setting above

TINY = str(ROOT / "tests" / "pipeline_tiny.yaml")
PIPELINE_ENV = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
# a teacher long enough to be killed in the middle, with checkpoints to resume from
PIPELINE_LONGER = ["--set", "teacher.train.steps=40", "--set", "teacher.train.ckpt_every=5"]


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """The folder ``name`` made by ``build(folder)`` once per test run: with pytest-xdist the workers
    share it (the first builds it under a file lock, the others wait and reuse it). Tests must only
    read it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    out = base / name
    with FileLock(str(out) + ".lock"):
        if not (out / ".built").is_file():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A finished tiny ``trainer.pipeline`` run on the default game (``tests/pipeline_tiny.yaml``, the
    teacher a little longer), built once per test run; its output is in ``run/``, what it printed in
    ``stdout.txt`` (the stage commands)."""
    import sys

    def build(folder: Path) -> None:
        r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out",
                            str(folder / "run"), "--preset", TINY, *PIPELINE_LONGER], cwd=ROOT, env=PIPELINE_ENV,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (folder / "stdout.txt").write_text(r.stdout)

    return build_once(tmp_path_factory, "tiny_pipeline", build)
