"""The regression part of a report (``ReportData.regression``): its check, run with the
other checks of :func:`~medmeta.report.data.check_report_data` before anything is written,
and the learning curves of a regression meta-training (:func:`plot_regression_curves`).

A few-shot regression shows predictions with predictive intervals (e.g. the deep ensemble of
:mod:`medmeta.algorithms.ensemble_regressor`): the points of one adapted task (true value,
prediction, interval) for the figure, and optionally summaries over test episodes of
:func:`medmeta.eval.regression.summarize_regression` for the metrics table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.eval.plots import regression_point_stats

__all__ = ["REGRESSION_KEYS", "SUMMARY_KEYS", "check_regression", "plot_regression_curves"]

#: Keys of ``ReportData.regression``: required, then optional.
REGRESSION_KEYS = (("true", "pred", "lower", "upper", "level"), ("target", "points", "evaluations"))
#: Numbers a summary of ``regression["evaluations"]`` may hold (``mse`` and ``r2`` required).
SUMMARY_KEYS = ("mse", "mse_ci95", "r2", "r2_ci95", "r2_median", "coverage", "coverage_ci95",
                "width", "width_ci95")  # fmt: skip


def _problem(text: str) -> ValueError:
    return ValueError(f"ReportData.regression{text}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _summary(i: int, pair: Any) -> tuple[str, dict[str, Any]]:
    """One ``(name, summary)`` of ``evaluations``, checked (NaN is allowed: undefined R²)."""
    where = f"['evaluations'][{i}]"
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise _problem(f"{where} must be a (name, summary dict) pair, got {type(pair).__name__}")
    name, summary = pair
    if not isinstance(name, str) or not isinstance(summary, Mapping):
        raise _problem(f"{where} must be a (str, dict) pair, got ({type(name).__name__}, "
                       f"{type(summary).__name__})")  # fmt: skip
    for key in ("mse", "r2"):
        if key not in summary:
            raise _problem(f"{where} lacks {key!r} (a summarize_regression dict is expected)")
    for key in SUMMARY_KEYS:
        v = summary.get(key)
        if v is not None and not _number(v):
            raise _problem(f"{where}[{key!r}] must be a number, got {v!r}")
    episodes = summary.get("episodes")
    if episodes is not None and (not isinstance(episodes, (int, np.integer)) or episodes < 1):
        raise _problem(f"{where}['episodes'] must be a positive int, got {episodes!r}")
    return name, dict(summary)


def check_regression(value: Any) -> dict[str, Any]:
    """``value`` checked and normalised: the four arrays as float64 ``[n]``, ``level`` a
    float, ``evaluations`` a list of ``(name, dict)``, and ``stats`` (the points' ``n``,
    ``mse``, ``r2``, ``coverage``, ``outside``, ``width``) added.

    Raises:
        ValueError: not a dict; a key missing or unknown; arrays not ``[n]`` of one length,
            with NaN or inf, or ``upper < lower``; ``level`` outside (0, 1); a bad summary.
    """
    if not isinstance(value, Mapping):
        raise _problem(f" must be a dict, got {type(value).__name__}")
    required, optional = REGRESSION_KEYS
    missing = [k for k in required if k not in value]
    unknown = [k for k in value if k not in required + optional]
    if missing or unknown:
        raise _problem(f" must have the keys {list(required)} (optional {list(optional)}); "
                       f"missing {missing}, unknown {unknown}")  # fmt: skip
    arrays = {}
    for key in ("true", "pred", "lower", "upper"):
        a = value[key]
        arrays[key] = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        if not np.issubdtype(arrays[key].dtype, np.number) or arrays[key].dtype.kind == "c":
            raise _problem(f"[{key!r}] must hold real numbers, got dtype {arrays[key].dtype}")
    try:
        stats = regression_point_stats(**arrays)
    except ValueError as err:
        raise _problem(f": {err}") from None
    level = value["level"]
    if not _number(level) or not 0 < float(level) < 1 or math.isnan(float(level)):
        raise _problem(f"['level'] must be a number in (0, 1), got {level!r}")
    for key in ("target", "points"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise _problem(f"[{key!r}] must be a str, got {type(value[key]).__name__}")
    evaluations = value.get("evaluations") or ()
    if isinstance(evaluations, (str, bytes, Mapping)):
        raise _problem("['evaluations'] must be a list of (name, summary dict) pairs")
    out: dict[str, Any] = {k: np.asarray(a, dtype=np.float64) for k, a in arrays.items()}
    out |= {"level": float(level), "target": value.get("target"), "points": value.get("points"),
            "evaluations": [_summary(i, p) for i, p in enumerate(evaluations)], "stats": stats}  # fmt: skip
    return out


def plot_regression_curves(
    history: Sequence[Mapping[str, Any]], path: Path, *, title: str | None = None
) -> Path:
    """Learning curves of a regression meta-training, from the rows of
    :attr:`~medmeta.train.FitResult.history` of a regression learner: the training loss
    (``loss``: MSE of the episodes' standardised targets), the validation MSE in the
    target's units (``val_loss``), and the R² of training and validation episodes
    (``accuracy``, ``val_accuracy`` with its 95% CI ``val_ci95``; not clipped: R² can be
    below 0)."""
    from medmeta.eval.plots import _figure, _save, _series

    fig = _figure(13, 4)
    ax_loss, ax_val, ax_r2 = fig.subplots(1, 3)
    ax_loss.plot(*_series(history, "loss"), color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="training loss (MSE, standardised targets)")
    ax_val.plot(*_series(history, "val_loss"), "o-", color="tab:orange")
    ax_val.set(xlabel="step", ylabel="validation MSE (target units)")
    ax_r2.plot(*_series(history, "accuracy"), color="tab:blue", label="training R²")
    val = [r for r in history if r.get("val_accuracy") is not None
           and math.isfinite(float(r["val_accuracy"]))]  # fmt: skip
    if val:
        ax_r2.errorbar([r["step"] for r in val], [float(r["val_accuracy"]) for r in val],
                       yerr=[float(r.get("val_ci95") or 0.0) for r in val], fmt="o-",
                       color="tab:orange", capsize=3, label="validation R² (95% CI)")  # fmt: skip
    ax_r2.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax_r2.set(xlabel="step", ylabel="R² of the query rows")
    ax_r2.legend(loc="lower right")
    for ax in (ax_loss, ax_val, ax_r2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
