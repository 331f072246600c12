"""Where dreamstep's shipped files live."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SHADERS = ASSETS / "shaders"
KEYMAPS = ASSETS / "keymaps"
CONFIGS = ASSETS / "configs"


def shader_source(name: str) -> str:
    path = SHADERS / name
    if not path.is_file():
        raise FileNotFoundError(f"shader {name!r} not found at {path}; is the assets/ folder intact?")
    return path.read_text()


def ensure_writable(path: str | Path, what: str) -> Path:
    """Check, before any work, that the file ``path`` can be written: its folder exists or can be made,
    and a file can be created in it. Raises :class:`world.core.OutputError` naming the path and what
    to do (a read-only folder, a full disk, a file where a folder should be)."""
    import os

    from world.core import OutputError
    from world.io import write_failure

    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".dreamstep-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        _kind, why = write_failure(e, folder, full_below=0)
        raise OutputError(f"cannot write {what} {str(path)!r}: {why}; choose a writable folder") from None
    return path
