"""Calibration: expected calibration error and reliability diagrams, NLL and Brier score,
and temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Shapes: ``logits``/``probs`` ``[n, N]`` (or any ``[..., N]``), ``labels`` ``[n]`` in ``[0, N)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from medmeta.algorithms.base import MetaLearner

__all__ = [
    "Reliability",
    "brier_score",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_logits",
    "log_softmax",
    "nll",
    "reliability",
    "softmax",
]

#: Bounds of the temperature search.
T_MIN, T_MAX = 1e-2, 1e2


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64."""
    return np.exp(log_softmax(logits))


def _flat(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.shape[:-1] != y.shape:
        raise ValueError(
            f"logits {z.shape} do not match labels {y.shape} (want [..., N] and [...])"
        )
    z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= z.shape[-1]):
        raise ValueError(f"labels must lie in [0, {z.shape[-1]})")
    return z, y


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (cross-entropy) of the true labels."""
    z, y = _flat(logits, labels)
    return float(-log_softmax(z)[np.arange(len(y)), y].mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - [y = k])^2`` (0 is best, 2 worst)."""
    p, y = _flat(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(-1).mean())


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data of top-1 predictions in equal-width confidence bins.

    Attributes:
        edges: ``[bins + 1]`` bin edges on [0, 1]; bin ``i`` holds ``edges[i] < conf <= edges[i+1]``
            (confidence 0 goes to bin 0).
        confidence: ``[bins]`` mean confidence per bin (NaN for an empty bin).
        accuracy: ``[bins]`` accuracy per bin (NaN for an empty bin).
        count: ``[bins]`` number of predictions per bin.
        ece: expected calibration error ``sum_i count_i / n * |accuracy_i - confidence_i|``.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float

    def to_dict(self) -> dict[str, Any]:
        nan_none = lambda a: [None if math.isnan(v) else float(v) for v in a]  # noqa: E731
        return {
            "edges": [float(v) for v in self.edges],
            "confidence": nan_none(self.confidence),
            "accuracy": nan_none(self.accuracy),
            "count": [int(v) for v in self.count],
            "ece": self.ece,
        }


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> Reliability:
    """Bin top-1 confidences and compute per-bin accuracy and the ECE.

    Args:
        confidence: ``[n]`` top-1 probabilities in [0, 1].
        correct: ``[n]`` whether each top-1 prediction is right.
        bins: number of equal-width bins (15 as in Guo et al. 2017).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences but {ok.size} correctness flags")
    if conf.size == 0:
        raise ValueError("reliability needs at least one prediction")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    ok_sum = np.bincount(idx, weights=ok, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, ok_sum / np.maximum(count, 1), np.nan)
    ece = float(np.abs(ok_sum - conf_sum).sum() / conf.size)
    return Reliability(edges, mean_conf, acc, count.astype(np.int64), ece)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """ECE of top-1 predictions with ``bins`` equal-width bins (see :func:`reliability`)."""
    return reliability(confidence, correct, bins).ece


def fit_temperature_logits(
    logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``; a golden-section search
    on ``log T`` over ``[1e-2, 1e2]`` finds the minimum to ~1e-6 relative precision
    deterministically (no step size to tune, no divergence when the optimum is at a bound).

    Args:
        logits: ``[..., N]`` uncalibrated logits.
        labels: ``[...]`` true labels in ``[0, N)``.
    """
    z, y = _flat(_numpy(logits), _numpy(labels))
    if len(y) == 0:
        raise ValueError("fit_temperature_logits needs at least one example")
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t))[rows, y].mean())

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2.0))


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def fit_temperature(
    learner: MetaLearner,
    val_set: Any,
    *,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> float:
    """Temperature scaling on validation episodes (Guo et al. 2017).

    Collects the learner's query logits on ``episodes`` seeded episodes of ``val_set``
    (use classes and/or a seed different from the test episodes) and returns the scalar
    ``T`` minimising their NLL; pass it to :func:`medmeta.eval.evaluate` as ``temperature``.
    Scaling by ``T`` does not change the predicted class, only the confidence.
    """
    from medmeta.eval.evaluate import collect_predictions

    preds = collect_predictions(
        learner,
        val_set,
        ways=ways,
        shots=shots,
        queries=queries,
        episodes=episodes,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    return fit_temperature_logits(preds.logits, preds.labels)
