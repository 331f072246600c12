"""``python -m evaluation``: the fidelity protocol's command (see :mod:`evaluation.cli`)."""

from evaluation.cli import main

raise SystemExit(main())
