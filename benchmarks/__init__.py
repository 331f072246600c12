"""Benchmarks: each ``python -m benchmarks.NAME --out FILE.json`` measures one thing and writes a report."""


class BenchmarkError(Exception):
    """What a benchmark cannot measure as asked (a missing input, incompatible models); its command
    prints the message as one ``error:`` line and exits with status 2."""
