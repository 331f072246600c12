"""Benchmarks: each ``python -m benchmarks.NAME --out FILE.json`` measures one thing and writes a report."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class BenchmarkError(Exception):
    """What a benchmark cannot measure as asked (a missing input, incompatible models); its command
    prints the message as one ``error:`` line and exits with status 2."""


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A benchmark's ``main``: a :class:`BenchmarkError` becomes one ``error:`` line and status 2."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BenchmarkError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run
