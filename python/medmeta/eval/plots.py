"""PNG plots of training and evaluation: learning curves, confusion matrix, reliability
diagram, per-class sensitivity/specificity, and regression predictions with their
predictive intervals.

matplotlib is imported only when a plot is drawn, and only its object-oriented API with the
Agg canvas is used (no pyplot, no change of the global backend). Each function writes one
PNG and returns its path.

``plot_embedding_map`` draws coordinates that the caller projected (e.g. by PCA with
:func:`medmeta.report.embedding.pca_map`), so this module stays free of the projection.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmeta._files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medmeta.eval.calibration import Reliability
    from medmeta.eval.evaluate import EvalResult

__all__ = [
    "plot_confusion_matrix",
    "plot_embedding_map",
    "plot_latency",
    "plot_learning_curves",
    "plot_per_class",
    "plot_regression_intervals",
    "plot_reliability_diagram",
    "regression_point_stats",
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
    """Render ``fig`` as PNG and write it atomically (never a half-written file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())


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
    # the gap between accuracy and confidence, hatched so that an under-confident bin
    # (accuracy above confidence) does not paint over its accuracy bar
    conf_shown = np.where(count > 0, np.nan_to_num(conf), acc)
    ax.bar(centers, np.abs(conf_shown - acc), bottom=np.minimum(acc, conf_shown), width=width,
           fill=False, hatch="///", edgecolor="tab:red", label="gap to confidence")  # fmt: skip
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


def _class_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_embedding_map(
    points: np.ndarray,
    path: PathLike,
    *,
    labels: np.ndarray | None = None,
    prototypes: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    misclassified: np.ndarray | None = None,
    axis_labels: tuple[str, str] = ("dimension 1", "dimension 2"),
    method: str = "PCA",
    title: str | None = None,
) -> Path:
    """Scatter of 2-D embedding coordinates coloured by class, prototypes as stars.

    Args:
        points: ``[m, 2]`` map coordinates of the embeddings.
        path: the PNG to write.
        labels: ``[m]`` int class labels in ``[0, N)`` (one colour when ``None``).
        prototypes: ``[N, 2]`` map coordinates of the class prototypes.
        class_names: names of the N classes for the legend (``class i`` when ``None``).
        misclassified: ``[m]`` bool, points drawn with a black ring.
        axis_labels: x and y axis titles (e.g. with the explained variance).
        method: the projection's name, shown in the title (e.g. ``"PCA"``).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape [m, 2], got {pts.shape}")
    m = len(pts)
    y = np.zeros(m, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if y.shape != (m,):
        raise ValueError(f"labels must have shape [m] = [{m}], got {y.shape}")
    protos = None if prototypes is None else np.asarray(prototypes, dtype=np.float64)
    if protos is not None and (protos.ndim != 2 or protos.shape[1] != 2):
        raise ValueError(f"prototypes must have shape [N, 2], got {protos.shape}")
    n_cls = max(
        int(y.max()) + 1 if m else 0,
        0 if protos is None else len(protos),
        0 if class_names is None else len(class_names),
        1,
    )
    names = list(class_names or []) + [f"class {i}" for i in range(len(class_names or []), n_cls)]
    colors = _class_colors(n_cls)
    fig = _figure(7.5, 5.6)
    ax = fig.subplots()
    for c in range(n_cls):
        sel = y == c
        if sel.any():
            label = names[c] if labels is not None else "embeddings"
            ax.scatter(pts[sel, 0], pts[sel, 1], s=28, color=colors[c], alpha=0.75,
                       edgecolors="none", label=label)  # fmt: skip
    if misclassified is not None:
        wrong = np.asarray(misclassified, dtype=bool).reshape(-1)
        if wrong.any():
            ax.scatter(pts[wrong, 0], pts[wrong, 1], s=60, facecolors="none",
                       edgecolors="black", linewidths=1.0, label="misclassified")  # fmt: skip
    if protos is not None:
        for c, (px, py) in enumerate(protos):
            ax.scatter([px], [py], s=340, marker="*", color=colors[c], edgecolors="black",
                       linewidths=1.2, zorder=3)  # fmt: skip
        # one legend entry for all stars, in neutral grey
        ax.scatter([], [], s=200, marker="*", color="lightgray", edgecolors="black",
                   linewidths=1.2, label="prototype (class mean)")  # fmt: skip
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"Embeddings and prototypes ({method}, 2-D)")
    return _save(fig, path)


def plot_latency(
    rows: Sequence[Mapping[str, Any]], path: PathLike, *, title: str | None = None
) -> Path:
    """Median latency (bars) and 99th percentile (whiskers) per runtime and batch size.

    Args:
        rows: ``{"runtime": str, "batch": int, "p50_ms": float, "p99_ms": float}`` each
            (``p99_ms`` optional).
        path: the PNG to write.
    """
    rows = [r for r in rows if r.get("p50_ms") is not None and not _isnan(r["p50_ms"])]
    runtimes = list(dict.fromkeys(str(r["runtime"]) for r in rows))
    batches = list(dict.fromkeys(r.get("batch") for r in rows))
    colors = _class_colors(max(len(runtimes), 1))
    height = 0.8 / max(len(runtimes), 1)
    fig = _figure(8, max(2.6, 0.42 * len(rows) + 1.6))
    ax = fig.subplots()
    p50 = np.asarray([float(r["p50_ms"]) for r in rows]) if rows else np.ones(1)
    labelled: set[int] = set()
    for r in rows:
        g, k = batches.index(r.get("batch")), runtimes.index(str(r["runtime"]))
        ypos = g + (k - (len(runtimes) - 1) / 2) * height
        mid = float(r["p50_ms"])
        hi = r.get("p99_ms")
        err = None
        if hi is not None and not _isnan(hi) and float(hi) >= mid:
            err = [[0.0], [float(hi) - mid]]
        label = None if k in labelled else str(r["runtime"])
        labelled.add(k)
        ax.barh(ypos, mid, height=height * 0.9, color=colors[k], xerr=err, capsize=3,
                label=label)  # fmt: skip
        end = mid if err is None else mid + err[1][0]
        ax.text(end, ypos, f"  {mid:.3g} ms", va="center", ha="left", fontsize=8)
    ax.set_yticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.invert_yaxis()
    if p50.max() / max(p50.min(), 1e-12) > 30:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(right=ax.get_xlim()[1] * (3.0 if ax.get_xscale() == "log" else 1.2))
    ax.set_xlabel("latency per batch (ms): bar = median, whisker = 99th percentile")
    ax.grid(axis="x", alpha=0.3)
    if rows:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "Inference latency")
    return _save(fig, path)


def _regression_arrays(**arrays: object) -> dict[str, np.ndarray]:
    """The named arrays as float64 ``[n]`` of one length, finite, ``lower <= upper``."""
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        a = np.asarray(value, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name} must be a non-empty array of shape [n], got {list(a.shape)}")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name} holds {bad.size} NaN or infinite values (first at {bad[0]})")
        out[name] = a
    lengths = {name: len(a) for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"true, pred, lower and upper must have one length, got {lengths}")
    if "lower" in out and "upper" in out and (out["upper"] < out["lower"]).any():
        first = int(np.flatnonzero(out["upper"] < out["lower"])[0])
        raise ValueError(f"upper is below lower at point {first}")
    return out


def regression_point_stats(true: Any, pred: Any, lower: Any, upper: Any) -> dict[str, float | int]:
    """What :func:`plot_regression_intervals` prints about its points: ``n``, ``mse``, ``r2``
    (pooled over the points: ``1 - SSE / SST`` around their mean; NaN when every true value
    is the same), ``coverage`` (fraction of true values inside ``[lower, upper]``),
    ``outside`` (their count) and ``width`` (mean interval width).

    Raises:
        ValueError: arrays of different lengths, not 1-D, empty, non-finite, or
            ``upper < lower``.
    """
    a = _regression_arrays(true=true, pred=pred, lower=lower, upper=upper)
    t, p = a["true"], a["pred"]
    inside = (t >= a["lower"]) & (t <= a["upper"])
    sst = float(((t - t.mean()) ** 2).sum())
    sse = float(((t - p) ** 2).sum())
    return {"n": len(t), "mse": sse / len(t), "r2": 1 - sse / sst if sst > 0 else math.nan,
            "coverage": float(inside.mean()), "outside": int((~inside).sum()),
            "width": float((a["upper"] - a["lower"]).mean())}  # fmt: skip


def plot_regression_intervals(
    true: Any, pred: Any, lower: Any, upper: Any, path: PathLike, title: str | None = None,
    level: float = 0.9, *, target: str | None = None,
) -> Path:  # fmt: skip
    """Predicted against true values with each prediction's interval as a vertical bar, the
    line y = x, and the points whose true value lies outside their interval in red; the
    title gives the coverage (against the nominal ``level``), R² and n.

    Args:
        true, pred, lower, upper: ``[n]`` true values, predictions and interval bounds
            (e.g. the queries of an adapted few-shot regression task).
        path: the PNG to write.
        title: the first line of the title (default ``"Predictions with 90% intervals"``).
        level: the intervals' nominal coverage in (0, 1).
        target: the predicted quantity's name (axis labels).

    Raises:
        ValueError: see :func:`regression_point_stats`; ``level`` outside (0, 1).
    """
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    stats = regression_point_stats(true, pred, lower, upper)
    t, p = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    out = ~((t >= lo) & (t <= hi))
    fig = _figure(6.8, 6.0)
    ax = fig.subplots()
    for sel, color, marker, label in (
        (~out, "tab:blue", "o", f"prediction, truth inside its interval ({int((~out).sum())})"),
        (out, "tab:red", "D", f"prediction, truth outside its interval ({int(out.sum())})"),
    ):  # fmt: skip
        if sel.any():
            ax.vlines(t[sel], lo[sel], hi[sel], color=color, alpha=0.35, lw=1.6)
            ax.scatter(t[sel], p[sel], s=26, color=color, marker=marker, zorder=3, label=label)
    span = np.concatenate([t, lo, hi])
    edge = 0.04 * (span.max() - span.min() or 1.0)
    ends = [span.min() - edge, span.max() + edge]
    ax.plot(ends, ends, "--", color="gray", lw=1, label="y = x (perfect prediction)")
    ax.set_xlim(ends)
    ax.set_ylim(ends)
    ax.set_aspect("equal")
    name = f" {target}" if target else ""
    ax.set_xlabel(f"true{name}")
    ax.set_ylabel(f"predicted{name} ({100 * level:g}% interval)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    r2 = "n/a" if math.isnan(stats["r2"]) else f"{stats['r2']:.3f}"
    ax.set_title(
        (title or f"Predictions with {100 * level:g}% intervals")
        + f"\ncoverage {100 * stats['coverage']:.1f}% (nominal {100 * level:g}%), "
        f"R² {r2}, n = {stats['n']}"
    )
    return _save(fig, path)
