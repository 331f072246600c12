"""``python -m trainer.evaluate``: the same command as ``python -m evaluation`` (the fidelity protocol,
docs/EVALUATION.md), kept where the project's earlier commands and reports name it. The protocol's
public API lives in :mod:`evaluation`."""

from __future__ import annotations

from evaluation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
