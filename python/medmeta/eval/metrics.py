"""Classification metrics for few-shot episodes, in numpy (no scikit-learn).

Conventions: ``E`` episodes, ``M`` queries per episode, ``N`` ways, ``C`` dataset classes.
Episode labels are in ``[0, N)``; ``classes [E, N]`` maps them to dataset class ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClassCounts",
    "auroc",
    "balanced_accuracy",
    "class_counts",
    "confusion_matrix",
    "episode_macro_auroc",
    "episode_macro_f1",
    "mean_ci95",
    "midranks",
]


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its normal 95% confidence interval.

    The half-width is ``1.96 * std / sqrt(n)`` with the population standard deviation
    (``ddof=0``), the convention of the few-shot literature.

    Args:
        values: ``[n]`` per-episode values, ``n >= 1``.

    Returns:
        ``(mean, half_width)``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[C, C]``: row = true class, column = predicted class.

    Args:
        y_true, y_pred: integer labels of the same shape, values in ``[0, num_classes)``.
        num_classes: ``C``.
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that have at least one true example (rows of ``confusion``)."""
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties getting the mean of the ranks they span.

    Args:
        x: ``[..., L]`` scores.

    Returns:
        ``[..., L]`` float64 ranks (e.g. ``[0.1, 0.5, 0.5, 0.9] -> [1, 2.5, 2.5, 4]``).
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        raise ValueError("midranks needs at least one axis")
    L = a.shape[-1]
    flat = a.reshape(-1, L)
    order = np.argsort(flat, axis=-1, kind="stable")
    v = np.take_along_axis(flat, order, axis=-1)
    pos = np.broadcast_to(np.arange(L), v.shape)
    new_run = np.ones_like(v, dtype=bool)
    new_run[:, 1:] = v[:, 1:] != v[:, :-1]
    first = np.maximum.accumulate(np.where(new_run, pos, 0), axis=-1)
    run_end = np.ones_like(v, dtype=bool)
    run_end[:, :-1] = new_run[:, 1:]
    last = np.minimum.accumulate(np.where(run_end, pos, L - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks_sorted = (first + last) / 2.0 + 1.0
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=-1)
    return ranks.reshape(a.shape)


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve from ranks (Mann-Whitney U), ties counted one half.

    ``AUC = (sum of positive midranks - P (P + 1) / 2) / (P * Nneg)``.

    Args:
        scores: ``[..., L]`` scores, higher = more likely positive.
        positive: ``[..., L]`` booleans, the positives.

    Returns:
        ``[...]`` AUROC per row (a float for 1-D input); NaN where a row has no positive or
        no negative.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.shape != pos.shape:
        raise ValueError(f"scores {s.shape} and positive {pos.shape} differ in shape")
    ranks = midranks(s)
    n_pos = pos.sum(axis=-1).astype(np.float64)
    n_neg = pos.shape[-1] - n_pos
    u = np.where(pos, ranks, 0.0).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return float(out) if out.ndim == 0 else out


def episode_macro_auroc(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of each episode, averaged over its classes (macro).

    Args:
        probs: ``[E, M, N]`` class probabilities (or any scores) of the queries.
        labels: ``[E, M]`` episode labels in ``[0, N)``.

    Returns:
        ``[E]``; classes without positives or negatives in an episode are skipped (NaN when
        none is left).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    N = p.shape[-1]
    scores = np.moveaxis(p, -1, 1)  # [E, N, M]
    positive = y[:, None, :] == np.arange(N)[None, :, None]  # [E, N, M]
    per_class = np.asarray(auroc(scores, positive)).reshape(p.shape[0], N)
    valid = ~np.isnan(per_class)
    with np.errstate(invalid="ignore"):
        return np.where(
            valid.any(-1), np.nansum(per_class, -1) / np.maximum(valid.sum(-1), 1), np.nan
        )


def episode_macro_f1(pred: np.ndarray, labels: np.ndarray, ways: int) -> np.ndarray:
    """Macro-F1 of each episode: ``F1 = 2 TP / (2 TP + FP + FN)`` averaged over its N classes.

    Args:
        pred, labels: ``[E, M]`` predicted and true episode labels in ``[0, ways)``.
        ways: N.

    Returns:
        ``[E]``; a class neither true nor predicted in an episode is left out of its mean
        (with sampled episodes every class has queries, so none is).
    """
    p = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    k = np.arange(ways)[None, :, None]
    is_p, is_y = p[:, None, :] == k, y[:, None, :] == k  # [E, N, M]
    tp = (is_p & is_y).sum(-1)
    fp = (is_p & ~is_y).sum(-1)
    fn = (~is_p & is_y).sum(-1)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    return np.nanmean(f1, axis=-1)


@dataclass(frozen=True)
class ClassCounts:
    """One-vs-rest counts per dataset class ``[C]``, pooled over the episodes containing it."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def sensitivity(self) -> np.ndarray:
        """Recall ``TP / (TP + FN)`` per class (NaN for a class that never appeared)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> np.ndarray:
        """``TN / (TN + FP)`` per class, over the queries of the episodes that contain it."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> np.ndarray:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> np.ndarray:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def support(self) -> np.ndarray:
        """Number of queries of each class."""
        return self.tp + self.fn


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def class_counts(
    pred: np.ndarray, labels: np.ndarray, classes: np.ndarray, num_classes: int
) -> ClassCounts:
    """Per dataset class one-vs-rest counts, pooled over the episodes in which it appears.

    For each episode and each of its N classes ``c``: the episode's queries of class ``c``
    count as positives, its other queries as negatives. Queries of episodes without ``c``
    do not count for ``c`` (they could never be predicted as ``c``).

    Args:
        pred, labels: ``[E, M]`` predicted and true episode labels in ``[0, N)``.
        classes: ``[E, N]`` dataset class id of each episode label.
        num_classes: ``C`` (ids in ``classes`` are below it).
    """
    p = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    cls = np.asarray(classes, dtype=np.int64)
    N = cls.shape[1]
    k = np.arange(N)[None, :, None]
    is_p, is_y = p[:, None, :] == k, y[:, None, :] == k  # [E, N, M]
    counts = {}
    for name, mask in (
        ("tp", is_p & is_y),
        ("fp", is_p & ~is_y),
        ("fn", ~is_p & is_y),
        ("tn", ~is_p & ~is_y),
    ):
        counts[name] = np.bincount(
            cls.reshape(-1), weights=mask.sum(-1).reshape(-1), minlength=num_classes
        ).astype(np.int64)
    return ClassCounts(**counts)


def bootstrap_class_rates(
    pred: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    num_classes: int,
    *,
    resamples: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile intervals ``[C, 2]`` of the pooled sensitivity and specificity of each
    class (:func:`class_counts`), from ``resamples`` bootstrap resamples of the episodes.

    They measure the variation over episodes (which support sets and queries were drawn),
    like the accuracy's CI; they do not cover the finite test set itself. NaN where a class
    is undefined in too many resamples.
    """
    rng = np.random.default_rng(seed)
    E = pred.shape[0]
    sens = np.empty((resamples, num_classes))
    spec = np.empty((resamples, num_classes))
    for b in range(resamples):
        idx = rng.integers(0, E, E)
        counts = class_counts(pred[idx], labels[idx], classes[idx], num_classes)
        sens[b], spec[b] = counts.sensitivity, counts.specificity

    def interval(v: np.ndarray) -> np.ndarray:
        out = np.full((num_classes, 2), np.nan)
        ok = np.isfinite(v).mean(0) >= 0.95
        if ok.any():
            out[ok] = np.nanpercentile(v[:, ok], [2.5, 97.5], axis=0).T
        return out

    return interval(sens), interval(spec)
