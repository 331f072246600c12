"""One logging set-up for every command: messages are plain lines on stdout; under torchrun only rank 0
speaks (the other ranks keep their warnings and errors, prefixed with their rank).

    from world.log import get_logger
    log = get_logger()
    log.info("[teacher] resumed from ...")     # printed once, by rank 0

The rank comes from torchrun's ``RANK`` (0 without torchrun); :func:`setup_logging` sets it again
when a process learns it later.
"""

from __future__ import annotations

import logging
import os
import sys

NAME = "dreamstep"


class _Stdout(logging.StreamHandler):
    """A handler that writes to the current ``sys.stdout`` (also when it was replaced after set-up, as
    pytest's capture does)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_logging(rank: int | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``dreamstep`` logger for this process (idempotent): rank 0 at ``level``, other ranks
    at WARNING with a ``[rank N]`` prefix."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    log = logging.getLogger(NAME)
    for h in [h for h in log.handlers if isinstance(h, _Stdout)]:
        log.removeHandler(h)
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(level if rank == 0 else logging.WARNING)
    log.propagate = False
    return log


def get_logger() -> logging.Logger:
    """The project's logger, set up on first use."""
    log = logging.getLogger(NAME)
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        setup_logging()
    return log
