"""Console-script shims (installed as `dreamstep-play`)."""

from __future__ import annotations


def play_main() -> None:
    import play

    raise SystemExit(play.main())
