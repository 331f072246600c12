#!/usr/bin/env python
"""Play a dreamstep world with keyboard or gamepad: ``python play.py --world maze3d``.

Without a display it plays headless with a scripted policy and writes a video
(``out/play_headless.mp4``). ``python play.py --help`` lists the options; the window's
F1 key lists the controls. The application lives in :mod:`window.app`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from window.app import main as play_main

    return play_main(argv)


if __name__ == "__main__":
    sys.exit(main())
