"""Baselines a statistician would fit on one episode's support set: logistic regression,
a random forest and k nearest neighbours (scikit-learn), scoring the episode's queries.

They see exactly what a meta-learner sees at test time (the ``S`` labelled support
examples of one task) and nothing of the meta-training tasks, so "meta-learning helps"
means "beats these on the same episodes". Generic over feature vectors ``[S, F]``
(fingerprints, expression profiles, table rows); randomness (the forest's bootstrap and
feature draws) comes only from the ``seed`` passed in, one per episode.

* ``"logistic"``: L2-regularised logistic regression (``C=1``, lbfgs), multinomial for
  N > 2 classes (Cox 1958; scikit-learn ``LogisticRegression``).
* ``"random_forest"``: 100 trees, ``max_features="sqrt"`` (Breiman 2001; scikit-learn's
  defaults), one thread.
* ``"knn"``: k nearest neighbours, ``k = min(5, S)``, distance-weighted votes;
  ``metric="jaccard"`` gives Tanimoto neighbours on binary fingerprints.

scikit-learn is imported lazily: ``pip install "medmeta[baselines]"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["BASELINES", "baseline_scores", "make_baseline"]

_SKLEARN_EXTRA = (
    "the support-set baselines need scikit-learn; install the extra: "
    'pip install "medmeta[baselines]"'
)


def _sklearn() -> Any:
    try:
        import sklearn  # noqa: F401
        from sklearn import ensemble, linear_model, neighbors
    except ImportError as error:
        raise ImportError(_SKLEARN_EXTRA) from error
    return ensemble, linear_model, neighbors


def _logistic(seed: int, n_support: int, **params: Any) -> Any:
    _, linear_model, _ = _sklearn()
    kw = {"C": 1.0, "max_iter": 2000, "random_state": seed} | params
    return linear_model.LogisticRegression(**kw)


def _random_forest(seed: int, n_support: int, **params: Any) -> Any:
    ensemble, _, _ = _sklearn()
    kw = {"n_estimators": 100, "max_features": "sqrt", "n_jobs": 1, "random_state": seed}
    return ensemble.RandomForestClassifier(**(kw | params))


def _knn(seed: int, n_support: int, **params: Any) -> Any:
    _, _, neighbors = _sklearn()
    k = int(params.pop("n_neighbors", 5))
    kw = {"n_neighbors": max(1, min(k, n_support)), "weights": "distance"} | params
    return neighbors.KNeighborsClassifier(**kw)


#: Baseline name -> factory ``(seed, n_support, **params) -> unfitted sklearn classifier``.
BASELINES: dict[str, Callable[..., Any]] = {
    "logistic": _logistic,
    "random_forest": _random_forest,
    "knn": _knn,
}


def make_baseline(name: str, seed: int, n_support: int = 1, **params: Any) -> Any:
    """An unfitted scikit-learn classifier by name (see :data:`BASELINES`), seeded with
    ``seed``; ``params`` override the defaults above."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return BASELINES[name](int(seed), n_support, **params)


def _as_matrix(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty [n, F] feature matrix, got shape {list(a.shape)}"
        )
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.isfinite(a.astype(np.float64, copy=False)).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return a


def baseline_scores(
    name: str,
    support_x: Any,
    support_y: Any,
    query_x: Any,
    *,
    seed: int,
    **params: Any,
) -> np.ndarray:
    """Fit baseline ``name`` on one support set and return its query class probabilities.

    Args:
        name: ``"logistic"``, ``"random_forest"`` or ``"knn"``.
        support_x: ``[S, F]`` support features (numpy or a CPU/GPU tensor).
        support_y: ``[S]`` episode labels in ``[0, N)``; every class must occur.
        query_x: ``[M, F]`` query features, the same ``F``.
        seed: the episode's seed (``random_state``).
        params: override the baseline's defaults (e.g. ``n_estimators=100``).

    Returns:
        ``[M, N]`` float64 probabilities, column ``c`` = episode class ``c`` (for a binary
        screening episode, column 1 is the score of "active").
    """
    sx, qx = _as_matrix("support_x", support_x), _as_matrix("query_x", query_x)
    sy = np.asarray(support_y.detach().cpu() if hasattr(support_y, "detach") else support_y)
    if sy.shape != (sx.shape[0],):
        raise ValueError(
            f"support_y must be [S] = [{sx.shape[0]}] labels, got shape {list(sy.shape)}"
        )
    if not np.issubdtype(sy.dtype, np.integer):
        raise ValueError(f"support_y must hold integer episode labels, got dtype {sy.dtype}")
    if sx.shape[1] != qx.shape[1]:
        raise ValueError(f"support_x has {sx.shape[1]} features but query_x has {qx.shape[1]}")
    n_way = int(sy.max()) + 1 if sy.min() >= 0 else 0
    present = np.bincount(sy, minlength=n_way) if n_way else np.zeros(0, int)
    if n_way < 2 or (present == 0).any():
        raise ValueError(
            f"support_y must hold every label 0..N-1 with N >= 2, got counts {present.tolist()} "
            f"(labels {np.unique(sy).tolist()})"
        )
    model = make_baseline(name, seed, len(sy), **params)
    model.fit(sx, sy)
    proba = np.asarray(model.predict_proba(qx), dtype=np.float64)
    out = np.zeros((qx.shape[0], n_way))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = proba
    return out
