"""Few-shot evaluation: seeded episodes, accuracy with a 95% CI, clinical metrics
(balanced accuracy, macro-F1, one-vs-rest AUROC, per-class sensitivity/specificity,
confusion matrix), calibration (ECE, reliability diagrams, NLL, Brier), temperature
scaling, and plots (:mod:`medmeta.eval.plots`, matplotlib loaded on use).
"""

from medmeta.eval import metrics, plots
from medmeta.eval.calibration import (
    Reliability,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_logits,
    nll,
    reliability,
)
from medmeta.eval.evaluate import (
    EpisodePredictions,
    EvalResult,
    collect_predictions,
    evaluate,
    summarize,
)

__all__ = [
    "EpisodePredictions",
    "EvalResult",
    "Reliability",
    "brier_score",
    "collect_predictions",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_logits",
    "metrics",
    "nll",
    "plots",
    "reliability",
    "summarize",
]
