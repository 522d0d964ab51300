"""A 2-D map of embeddings by principal component analysis (PCA), with class prototypes
projected into the same map.

The map is fitted on the query embeddings only, so it shows how the queries spread; the
prototypes go through the same affine map (centre, then project), which keeps means: a
prototype that is the mean of some embeddings lands on the mean of their map points.

PCA (Pearson 1901) through the thin SVD of the centred data is exact and needs no random
start, so the map is a deterministic function of its input. Each component's sign is fixed
(its largest-magnitude loading is positive), since the SVD leaves it arbitrary. Randomness
enters only when more than ``max_points`` embeddings are given: a seeded subset is drawn for
drawing (the fit still uses every point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EmbeddingMap", "pca_map"]


@dataclass(frozen=True)
class EmbeddingMap:
    """Embeddings projected to 2-D.

    Attributes:
        points: ``[m, 2]`` map coordinates of the shown embeddings (``m <= n``).
        labels: ``[m]`` int labels of the shown points, or ``None``.
        index: ``[m]`` rows of the input embeddings that are shown.
        prototypes: ``[N, 2]`` map coordinates of the prototypes, or ``None``.
        components: ``[2, D]`` unit projection axes (a zero row where the data have no second
            direction, e.g. ``D = 1`` or fewer than 3 distinct points).
        mean: ``[D]`` the centre subtracted before projecting.
        explained: ``[2]`` share of the embeddings' variance along each axis (0 for an axis
            without variance).
        method: ``"PCA"``.
    """

    points: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    prototypes: np.ndarray | None
    components: np.ndarray
    mean: np.ndarray
    explained: np.ndarray
    method: str = "PCA"

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Map more ``[k, D]`` vectors into the same 2-D coordinates ``[k, 2]``."""
        x = _matrix("x", x, self.mean.shape[0])
        return (x - self.mean) @ self.components.T

    def axis_labels(self) -> tuple[str, str]:
        """``("PC1 (62% of variance)", "PC2 (21% of variance)")``."""
        return tuple(  # type: ignore[return-value]
            f"PC{i + 1} ({100 * e:.0f}% of variance)" if e > 0 else f"PC{i + 1} (no variance)"
            for i, e in enumerate(self.explained)
        )


def _matrix(name: str, x: object, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, D], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns, got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise ValueError(f"{name} has {bad} rows with NaN or inf; expected finite values")
    return a


def _labels(labels: object, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape [n] = [{n}], got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each row so its largest-magnitude entry is positive (first one on ties)."""
    out = components.copy()
    for row in out:
        if row.any():
            row *= np.sign(row[np.argmax(np.abs(row))])
    return out


def pca_map(
    embeddings: np.ndarray,
    labels: np.ndarray | None = None,
    prototypes: np.ndarray | None = None,
    *,
    max_points: int = 3000,
    seed: int = 0,
) -> EmbeddingMap:
    """Project embeddings (and prototypes) to their first two principal components.

    Args:
        embeddings: ``[n, D]`` real, finite, ``n >= 1``.
        labels: ``[n]`` int labels (``>= 0``) or ``None``.
        prototypes: ``[N, D]`` class prototypes or ``None``.
        max_points: show at most this many embeddings (a seeded random subset beyond it).
        seed: seeds that subset.

    Returns:
        :class:`EmbeddingMap`. With ``D = 1`` or fewer than three distinct points the second
        axis (or both) has no variance and its coordinates are 0.

    Raises:
        ValueError: bad shapes, dtypes, NaN/inf, ``n = 0`` or ``max_points < 1``.
    """
    x = _matrix("embeddings", embeddings)
    n, d = x.shape
    if n == 0:
        raise ValueError("embeddings must hold at least one row, got shape (0, D)")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be an int >= 1, got {max_points!r}")
    y = None if labels is None else _labels(labels, n)
    protos = None if prototypes is None else _matrix("prototypes", prototypes, d)

    mean = x.mean(axis=0)
    centred = x - mean
    # thin SVD: centred = U S Vt, rows of Vt are the principal axes by decreasing variance
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    # axes carrying no variance (beyond rounding) are dropped, not kept as noise directions
    rank = int((var > total * 1e-12).sum()) if total > 0 else 0
    components = np.zeros((2, d))
    explained = np.zeros(2)
    for i in range(min(2, rank)):
        components[i] = vt[i]
        explained[i] = var[i] / total
    components = _fix_signs(components)

    index = np.arange(n)
    if n > max_points:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(n, size=max_points, replace=False))
    points = centred[index] @ components.T
    return EmbeddingMap(
        points=points,
        labels=None if y is None else y[index],
        index=index,
        prototypes=None if protos is None else (protos - mean) @ components.T,
        components=components,
        mean=mean,
        explained=explained,
    )
