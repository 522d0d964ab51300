"""PNG plots of training and evaluation: learning curves, confusion matrix, reliability
diagram and per-class sensitivity/specificity.

matplotlib is imported only when a plot is drawn, and only its object-oriented API with the
Agg canvas is used (no pyplot, no change of the global backend). Each function writes one
PNG and returns its path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medmeta.eval.calibration import Reliability
    from medmeta.eval.evaluate import EvalResult

__all__ = [
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_per_class",
    "plot_reliability_diagram",
]

PathLike = str | os.PathLike[str]


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _history_rows(history: Any) -> list[Mapping[str, Any]]:
    if isinstance(history, (str, os.PathLike)):
        data = json.loads(Path(history).read_text())
        return list(data["history"] if isinstance(data, dict) else data)
    if hasattr(history, "history"):
        return list(history.history)
    return list(history)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and not _isnan(r[key])]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts, dtype=np.float64)
    return a[:, 0], a[:, 1]


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def plot_learning_curves(history: Any, path: PathLike, *, title: str | None = None) -> Path:
    """Training loss (left) and training / validation accuracy with its 95% CI (right).

    Args:
        history: a :class:`~medmeta.train.FitResult`, its ``history`` (rows with ``step``,
            ``loss``, ``accuracy`` and optionally ``val_accuracy``/``val_ci95``) or the path of
            a ``log.json`` written by :func:`~medmeta.train.meta_fit`.
        path: the PNG to write.
    """
    rows = _history_rows(history)
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    s, v = _series(rows, "loss")
    ax_loss.plot(s, v, color="tab:blue", label="train loss")
    s, v = _series(rows, "val_loss")
    if len(s):
        ax_loss.plot(s, v, "o-", color="tab:orange", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    s, v = _series(rows, "accuracy")
    ax_acc.plot(s, v, color="tab:blue", label="train accuracy")
    val = [r for r in rows if r.get("val_accuracy") is not None and not _isnan(r["val_accuracy"])]
    if val:
        s = np.asarray([r["step"] for r in val], dtype=np.float64)
        v = np.asarray([r["val_accuracy"] for r in val], dtype=np.float64)
        ci = np.asarray([r.get("val_ci95") or 0.0 for r in val], dtype=np.float64)
        ax_acc.errorbar(s, v, yerr=ci, fmt="o-", color="tab:orange", capsize=3,
                        label="val accuracy (95% CI)")  # fmt: skip
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(loc="lower right")
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(
    result: EvalResult, path: PathLike, *, normalize: bool = True, title: str | None = None
) -> Path:
    """Confusion matrix over dataset classes (rows: true, columns: predicted).

    Args:
        result: an :class:`~medmeta.eval.EvalResult`.
        path: the PNG to write.
        normalize: show row fractions (recall per true class) instead of counts; the
            counts are printed in the cells either way.
    """
    cm = np.asarray(result.confusion, dtype=np.float64)
    names = list(result.class_names)
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    size = max(4.0, 0.6 * len(names) + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(
        im, ax=ax, fraction=0.046, label="fraction of true class" if normalize else "count"
    )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = shown.max() if shown.size else 1.0
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                text = f"{shown[i, j]:.2f}\n({int(cm[i, j])})" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.6 * top else "black")  # fmt: skip
    ax.set_title(
        title or f"confusion ({result.ways}-way {result.shots}-shot, {result.episodes} episodes)"
    )
    return _save(fig, path)


def plot_reliability_diagram(
    result: EvalResult | Reliability, path: PathLike, *, title: str | None = None
) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and
    the share of predictions per bin below.

    Args:
        result: an :class:`~medmeta.eval.EvalResult` or its ``reliability``.
        path: the PNG to write.
    """
    rel = getattr(result, "reliability", result)
    edges = np.asarray(rel.edges)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    acc = np.nan_to_num(np.asarray(rel.accuracy, dtype=np.float64))
    conf = np.asarray(rel.confidence, dtype=np.float64)
    count = np.asarray(rel.count, dtype=np.float64)
    fig = _figure(5, 6)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    gap = np.where(count > 0, np.nan_to_num(conf) - acc, 0.0)
    ax.bar(centers, gap, bottom=acc, width=width, color="tab:red", alpha=0.35,
           edgecolor="tab:red", label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    t = getattr(result, "temperature", None)
    label = f"ECE {rel.ece:.3f}" + (f", T = {t:.2f}" if t is not None else "")
    ax.set_title(title or f"reliability diagram ({label})")
    ax_n.bar(centers, count / max(count.sum(), 1.0), width=width, color="gray", edgecolor="black")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("share")
    return _save(fig, path)


def plot_per_class(result: EvalResult, path: PathLike, *, title: str | None = None) -> Path:
    """Sensitivity and specificity of each dataset class as grouped bars.

    Args:
        result: an :class:`~medmeta.eval.EvalResult`.
        path: the PNG to write.
    """
    names = list(result.class_names)
    x = np.arange(len(names))
    fig = _figure(max(5.0, 0.8 * len(names) + 2.0), 4)
    ax = fig.subplots()
    sens = np.nan_to_num(np.asarray(result.sensitivity, dtype=np.float64))
    spec = np.nan_to_num(np.asarray(result.specificity, dtype=np.float64))
    ax.bar(x - 0.2, sens, width=0.4, label="sensitivity", color="tab:blue")
    ax.bar(x + 0.2, spec, width=0.4, label="specificity", color="tab:green")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("rate")
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.legend(loc="upper center", ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "per-class sensitivity and specificity")
    return _save(fig, path)
