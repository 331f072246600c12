"""The fidelity protocol as a public API (docs/EVALUATION.md).

- :mod:`evaluation.rollouts`: real rollouts on held-out seeds (:func:`play_real`, :class:`RecordedRollouts`)
  and the model's open-loop rollouts (:func:`generate`);
- :mod:`evaluation.fidelity`: every fidelity field of a set of rollouts (:func:`fidelity`, the IDM's
  :func:`idm_features`) and the whole protocol for one checkpoint (:func:`evaluate`);
- :mod:`evaluation.metrics`: PSNR, SSIM, sharpness, Fréchet distance, event counts;
- :mod:`evaluation.report`: the report's table, plot and frame strip;
- :mod:`evaluation.curve`: quality against training steps, measured while a run trains;
- ``python -m evaluation`` (also ``python -m trainer.evaluate``): the command.

It imports the models (:mod:`model`) and the games (:mod:`world`), never the trainer.
"""

from evaluation.fidelity import evaluate, idm_features  # (not `fidelity`: the name of its module)
from evaluation.rollouts import (
           EVAL_SEED_BASE,
           HORIZON,
           EvaluationError,
           Rollouts,
           generate,
           play_real,
)

__all__ = ["EVAL_SEED_BASE", "HORIZON", "EvaluationError", "Rollouts", "evaluate", "generate", "idm_features",
           "play_real"]
