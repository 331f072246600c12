"""``python -m trainer.curve``: the same command as ``python -m evaluation.curve`` (a run's quality
against training steps, docs/TRAINING_LOG.md)."""

from __future__ import annotations

from evaluation.curve import main

if __name__ == "__main__":
    raise SystemExit(main())
