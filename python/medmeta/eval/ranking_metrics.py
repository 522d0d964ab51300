"""Ranking metrics for rare-positive binary tasks (drug screening), in numpy.

* ROC-AUC: the Mann-Whitney U statistic from average ranks, ties counted one half
  (:func:`medmeta.eval.metrics.auroc`); equals scikit-learn's ``roc_auc_score``.
* AUPRC as average precision, ``AP = sum_n (R_n - R_(n-1)) P_n`` over the distinct score
  thresholds from high to low (tied scores form one threshold), as scikit-learn's
  ``average_precision_score``: no interpolation.
* ΔAUPRC: AUPRC minus the task's fraction of positives (the AUPRC of a random ranking), as
  in FS-Mol (Stanley et al., "FS-Mol: A Few-Shot Learning Dataset of Molecules", NeurIPS
  Datasets and Benchmarks 2021). 0 is chance, whatever the active fraction; ROC-AUC hides
  how rare actives are, ΔAUPRC does not.

Every function takes ``scores [..., L]`` (higher = more likely positive) and binary
``labels [..., L]`` (1 / True = positive) and returns one value per row ``[...]`` (a float
for 1-D input); a row without a positive (or, for ROC-AUC, without a negative) gives NaN.
"""

from __future__ import annotations

import numpy as np

from medmeta.eval.metrics import auroc

__all__ = ["average_precision", "delta_auprc", "roc_auc"]


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores float64, labels bool)`` after checking shapes, finiteness and binariness."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {list(s.shape)} and labels {list(y.shape)} differ in shape")
    if s.ndim == 0 or s.shape[-1] == 0:
        raise ValueError(f"scores must be [..., L] with L >= 1, got shape {list(s.shape)}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are NaN/inf")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            bad = y[~np.isin(y, (0, 1))].reshape(-1)[0]
            raise ValueError(f"labels must be 0/1 (or bool), found {bad!r}")
        y = y.astype(bool)
    return s, y


def _per_row(out: np.ndarray) -> np.ndarray | float:
    return float(out) if out.ndim == 0 else out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve per row, ties counted one half (average ranks).

    Args:
        scores: ``[..., L]`` scores.
        labels: ``[..., L]`` 0/1 or bool, 1 = positive.

    Returns:
        ``[...]`` (float for 1-D input); NaN for a row without a positive or a negative.
    """
    s, y = _check(scores, labels)
    return auroc(s, y)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """AUPRC as average precision per row, as scikit-learn's ``average_precision_score``.

    The queries are sorted by decreasing score; at the end of each run of tied scores (one
    threshold) the precision ``TP / (TP + FP)`` is weighted by the recall gained there.

    Args:
        scores: ``[..., L]`` scores.
        labels: ``[..., L]`` 0/1 or bool, 1 = positive.

    Returns:
        ``[...]`` in ``[0, 1]`` (float for 1-D input); NaN for a row without a positive.
    """
    s, y = _check(scores, labels)
    L = s.shape[-1]
    flat_s, flat_y = s.reshape(-1, L), y.reshape(-1, L)
    order = np.argsort(-flat_s, axis=-1, kind="stable")
    v = np.take_along_axis(flat_s, order, -1)  # [R, L] decreasing
    tp = np.cumsum(np.take_along_axis(flat_y, order, -1), axis=-1, dtype=np.float64)
    run_end = np.ones_like(v, dtype=bool)
    run_end[:, :-1] = v[:, 1:] != v[:, :-1]  # the last position of each tied run
    tp_at_end = np.where(run_end, tp, 0.0)
    # TP at the previous threshold: the running maximum of TP at run ends, shifted by one
    prev = np.zeros_like(tp)
    prev[:, 1:] = np.maximum.accumulate(tp_at_end, axis=-1)[:, :-1]
    precision = tp / np.arange(1, L + 1)
    gained = np.where(run_end, tp - prev, 0.0)  # positives gained at each threshold
    n_pos = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, (gained * precision).sum(-1) / n_pos, np.nan)
    return _per_row(ap.reshape(s.shape[:-1]))


def delta_auprc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """ΔAUPRC per row: :func:`average_precision` minus the row's fraction of positives
    (FS-Mol, Stanley et al. 2021); 0 = a random ranking, ``1 - fraction`` = perfect.

    Args:
        scores: ``[..., L]`` scores.
        labels: ``[..., L]`` 0/1 or bool, 1 = positive.

    Returns:
        ``[...]`` (float for 1-D input); NaN for a row without a positive.
    """
    s, y = _check(scores, labels)
    ap = np.asarray(average_precision(s, y))
    return _per_row(ap - y.mean(-1))
