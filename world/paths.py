"""Where dreamstep's shipped files live."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SHADERS = ASSETS / "shaders"
KEYMAPS = ASSETS / "keymaps"
CONFIGS = ASSETS / "configs"
CHECKPOINTS = ASSETS / "checkpoints"


def shader_source(name: str) -> str:
    path = SHADERS / name
    if not path.is_file():
        raise FileNotFoundError(f"shader {name!r} not found at {path}; is the assets/ folder intact?")
    return path.read_text()
