"""Figures of a task's support set that depend on the data family: support images per class,
example signal traces per class, and the values of the most class-separating features of
vectors (table rows, gene expression). matplotlib's object-oriented API on the Agg canvas,
loaded on use (as :mod:`medmeta.eval.plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmeta.eval.plots import PathLike, _class_colors, _figure, _save

__all__ = [
    "IMAGES_PER_CLASS",
    "TOP_FEATURES",
    "TRACES_PER_CLASS",
    "plot_feature_values",
    "plot_signal_traces",
    "plot_support_images",
    "separating_features",
]

#: Most support images / traces drawn per class, and features on the feature figure.
IMAGES_PER_CLASS = 5
TRACES_PER_CLASS = 3
TOP_FEATURES = 8


def _by_class(labels: np.ndarray, n_classes: int, per_class: int) -> list[np.ndarray]:
    """The first ``per_class`` indices of each class ``0..n_classes-1`` (in order)."""
    return [np.flatnonzero(labels == c)[:per_class] for c in range(n_classes)]


def _names(class_names: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    n = max(len(class_names or ()), int(labels.max()) + 1 if labels.size else 0)
    return list(class_names or ()) + [f"class {i}" for i in range(len(class_names or ()), n)]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """One image ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C 1, 3 or 4) as ``[H, W, 3]`` or
    ``[H, W]`` floats in [0, 1] (uint8 / 255; other values stretched to their range)."""
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def plot_support_images(
    images: np.ndarray, labels: np.ndarray, path: PathLike, *,
    class_names: Sequence[str] | None = None, per_class: int = IMAGES_PER_CLASS,
    title: str | None = None,
) -> Path:  # fmt: skip
    """A grid of support images: one row per class (its name on the left), up to
    ``per_class`` images each.

    Args:
        images: ``[n, H, W]``, ``[n, H, W, C]`` or ``[n, C, H, W]`` (uint8 or float).
        labels: ``[n]`` int class labels in ``[0, N)``.
        path: the PNG to write.
        class_names: the N class names (``class i`` when missing).
    """
    y = np.asarray(labels, dtype=np.int64)
    names = _names(class_names, y)
    rows = _by_class(y, len(names), per_class)
    cols = max(1, max(len(r) for r in rows))
    fig = _figure(1.3 * cols + 2.2, 1.3 * len(names) + 0.7)
    axes = np.atleast_2d(fig.subplots(len(names), cols, squeeze=False))
    for c, index in enumerate(rows):
        for j in range(cols):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(index):
                rgb = _as_rgb(images[index[j]])
                ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=1)
            else:
                ax.set_axis_off()
        axes[c, 0].set_ylabel(names[c], rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title or "Support images of the new task, one row per class")
    return _save(fig, path)


def plot_signal_traces(
    signals: np.ndarray, labels: np.ndarray, path: PathLike, *,
    class_names: Sequence[str] | None = None, per_class: int = TRACES_PER_CLASS,
    title: str | None = None, ylabel: str = "z-score",
) -> Path:  # fmt: skip
    """Example traces per class: one row per class (its name on the left), up to
    ``per_class`` support recordings side by side on a shared y-axis, x-axis in samples.

    Args:
        signals: ``[n, C, L]`` recordings (e.g. as the model reads them: its window,
            standardised per record); each of the C channels is drawn.
        labels: ``[n]`` int class labels in ``[0, N)``.
        path: the PNG to write.
        class_names: the N class names (``class i`` when missing).
        ylabel: the unit of the values.
    """
    x = np.asarray(signals, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"signals must have shape [n, C, L], got {list(x.shape)}")
    y = np.asarray(labels, dtype=np.int64)
    names = _names(class_names, y)
    rows = _by_class(y, len(names), per_class)
    cols = max(1, max(len(r) for r in rows))
    colors = _class_colors(len(names))
    fig = _figure(3.3 * cols + 1.8, 1.25 * len(names) + 1.0)
    axes = fig.subplots(len(names), cols, squeeze=False, sharex=True, sharey=True)
    samples = np.arange(x.shape[-1])
    for c, index in enumerate(rows):
        for j in range(cols):
            ax = axes[c, j]
            if j >= len(index):
                ax.set_axis_off()
                continue
            for ch in range(x.shape[1]):
                ax.plot(samples, x[index[j], ch], lw=0.8, color=colors[c], alpha=1.0 - 0.3 * ch)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_title(f"recording {j + 1}", fontsize=9)
        axes[c, 0].set_ylabel(f"{names[c]}\n{ylabel}", fontsize=9)
    for j in range(cols):
        axes[-1, j].set_xlabel("sample")
    fig.suptitle(title or "Example support recordings per class")
    return _save(fig, path)


def separating_features(x: np.ndarray, labels: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` columns of ``x`` ``[n, F]`` with the largest F-statistic
    between the classes of ``labels`` (variance of the class means over the mean
    within-class variance; a column constant within classes but not across them first)."""
    y = np.asarray(labels, dtype=np.int64)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])  # [N, F]
    within = np.stack([x[y == c].var(0) for c in classes]).mean(0)
    between = means.var(0)
    score = between / (within + 1e-9 * (1.0 + between))
    return np.argsort(-score, kind="stable")[: min(top, x.shape[1])]


def plot_feature_values(
    x: np.ndarray, labels: np.ndarray, path: PathLike, *,
    class_names: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
    top: int = TOP_FEATURES, title: str | None = None, xlabel: str = "value",
) -> Path:  # fmt: skip
    """The values of the ``top`` most class-separating features (by
    :func:`separating_features`): one line per feature, each example a dot coloured by
    class (spread vertically within its class's band), each class mean a bar.

    Args:
        x: ``[n, F]`` feature vectors (e.g. a support set as the model reads it).
        labels: ``[n]`` int class labels in ``[0, N)``.
        path: the PNG to write.
        class_names: the N class names; feature_names: the F feature names.
        xlabel: what the values are.
    """
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"x must have shape [n, F], got {list(v.shape)}")
    y = np.asarray(labels, dtype=np.int64)
    names = _names(class_names, y)
    features = list(feature_names) if feature_names is not None else [
        f"feature {i}" for i in range(v.shape[1])]  # fmt: skip
    chosen = separating_features(v, y, top)
    colors = _class_colors(len(names))
    fig = _figure(9.5, 0.55 * len(chosen) * max(1.0, len(names) / 3) + 1.8)
    ax = fig.subplots()
    band = 0.8 / len(names)
    rng = np.random.default_rng(0)  # the dots' vertical spread only
    for c in range(len(names)):
        sel = y == c
        if not sel.any():
            continue
        offset = (c - (len(names) - 1) / 2) * band
        for row, f in enumerate(chosen):
            ys = row + offset + rng.uniform(-0.3, 0.3, sel.sum()) * band
            ax.scatter(v[sel, f], ys, s=22, color=colors[c], alpha=0.8, edgecolors="none",
                       label=names[c] if row == 0 else None)  # fmt: skip
            ax.plot([v[sel, f].mean()] * 2, [row + offset - band / 2, row + offset + band / 2],
                    color=colors[c], lw=2.5)  # fmt: skip
    for row in range(len(chosen) - 1):
        ax.axhline(row + 0.5, color="lightgray", lw=0.8)
    ax.set_yticks(range(len(chosen)), [features[f] for f in chosen])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="class (bar: mean)"
    )
    ax.set_title(
        title or f"The {len(chosen)} of {v.shape[1]} features that best separate the classes"
    )
    return _save(fig, path)
