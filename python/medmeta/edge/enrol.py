"""On-device enrolment: class prototypes from support embeddings, and the OOD threshold.

An :class:`Enrolment` is an immutable snapshot (class names, support embeddings and labels,
prototypes, OOD threshold). The runtime swaps whole snapshots, so a prediction always sees
one consistent state while another thread enrols.

Prototypes are class means computed by the native kernel (:func:`kernels.class_prototypes`,
as :func:`medmeta.ops.prototypes` in training). A class exported without its support
examples keeps its exported prototype until it is re-enrolled with ``replace=True``.

Out-of-distribution rule: an input's OOD score is its distance to the *nearest* prototype
(the model's metric, the same distances the logits are made of); it is flagged when the
score exceeds ``threshold``. The threshold is recomputed at every enrolment from the
support set itself:

* ``"leave-one-out"`` (classes with >= 2 examples): for each support example, its distance
  to its own class prototype computed *without* it, ``(K c - z) / (K - 1)`` -- an honest
  stand-in for a new in-distribution input, which an in-sample distance is not; the
  threshold is the ``quantile`` (default 0.95) of these scores, so about 5% or fewer of
  in-distribution inputs are flagged.
* ``"prototype-gap"`` (every class has one example): the median over classes of the
  distance from a prototype to its nearest other prototype -- an input farther from every
  class than classes are from each other.
* ``"none"`` (a single one-shot class): no threshold; nothing is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medmeta.edge import kernels

__all__ = ["DEFAULT_OOD_QUANTILE", "Enrolment", "build_enrolment", "ood_threshold"]

DEFAULT_OOD_QUANTILE = 0.95


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Enrolment:
    """One consistent enrolment state (arrays are read-only).

    Attributes:
        class_names: ``N`` names in output order.
        prototypes: ``[N, D]`` float32.
        embeddings: ``[S, D]`` float32 support embeddings (``S`` may be 0).
        labels: ``[S]`` int64 class indices of ``embeddings``.
        metric: distance of prototypes and OOD scores.
        ood_threshold: flag inputs whose nearest-prototype distance exceeds it (or None).
        ood_quantile: the quantile used by the leave-one-out rule.
        ood_rule: ``"leave-one-out"``, ``"prototype-gap"`` or ``"none"``.
    """

    class_names: tuple[str, ...]
    prototypes: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    metric: str
    ood_threshold: float | None
    ood_quantile: float
    ood_rule: str

    @property
    def counts(self) -> np.ndarray:
        """Stored support examples per class ``[N]`` (0: an exported prototype only)."""
        return np.bincount(self.labels, minlength=len(self.class_names))


def ood_threshold(
    embeddings: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray,
    metric: str,
    quantile: float = DEFAULT_OOD_QUANTILE,
) -> tuple[float | None, str]:
    """``(threshold, rule)`` from the support set (see the module docstring)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"ood quantile must be in (0, 1], got {quantile!r}")
    counts = np.bincount(labels, minlength=len(prototypes))
    keep = counts[labels] >= 2
    if keep.any():
        z, y = embeddings[keep], labels[keep]
        k = counts[y][:, None].astype(np.float32)
        loo = (k * prototypes[y] - z) / (k - 1)
        scores = kernels.row_distances(z, loo.astype(np.float32), metric)
        return float(np.quantile(scores.astype(np.float64), quantile)), "leave-one-out"
    if len(prototypes) >= 2:
        gaps = kernels.pairwise_distances(prototypes, prototypes, metric).astype(np.float64)
        np.fill_diagonal(gaps, np.inf)
        return float(np.median(gaps.min(1))), "prototype-gap"
    return None, "none"


def build_enrolment(
    class_names: Sequence[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    metric: str,
    *,
    quantile: float = DEFAULT_OOD_QUANTILE,
    fixed_prototypes: np.ndarray | None = None,
) -> Enrolment:
    """The enrolment of ``class_names`` from support ``embeddings [S, D]``, ``labels [S]``.

    Args:
        fixed_prototypes: ``[N, D]`` prototypes used for classes without any example
            (exported without their support set); ``None`` makes such a class an error.

    Raises:
        ValueError: a class without examples and without a fixed prototype (named), labels
            out of range, or inconsistent shapes.
    """
    names = tuple(class_names)
    n_way = len(names)
    if n_way == 0:
        raise ValueError("enrolment: no classes")
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    if emb.ndim != 2 or lab.shape != (len(emb),):
        raise ValueError(
            f"enrolment: expected embeddings [S, D] and labels [S], got {list(emb.shape)} "
            f"and {list(lab.shape)}"
        )
    kernels.check_label_range(lab, n_way)
    counts = np.bincount(lab, minlength=n_way)
    empty = np.flatnonzero(counts == 0)
    if fixed_prototypes is None and len(empty):
        raise ValueError(f"class {names[empty[0]]!r} has no enrolment example")
    dim = emb.shape[1] if fixed_prototypes is None else fixed_prototypes.shape[1]
    prototypes = np.empty((n_way, dim), np.float32)
    present = np.flatnonzero(counts > 0)
    if len(present):
        compact = np.full(n_way, -1, np.int64)
        compact[present] = np.arange(len(present))
        prototypes[present] = kernels.class_prototypes(emb, compact[lab], len(present))
    if len(empty):
        prototypes[empty] = fixed_prototypes[empty]
    threshold, rule = ood_threshold(emb, lab, prototypes, metric, quantile)
    return Enrolment(
        names, _frozen(prototypes), _frozen(emb), _frozen(lab), metric, threshold, quantile, rule
    )
