"""medmeta's native CPU kernels on numpy buffers, for the torch-free edge runtime.

The same C++ kernels that compute prototypes and distances in training
(:mod:`medmeta.ops`) run here on numpy arrays through ``medmeta._C`` (which does not import
torch), so a device enrols exactly like training does. If ``_C`` cannot load, these raise
:class:`NativeCoreError` with the reason; nothing falls back to another implementation.

The kernels trust their inputs (a label out of range would write out of bounds), so every
check happens here first.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

__all__ = ["METRICS", "NativeCoreError", "class_prototypes", "pairwise_distances", "row_distances"]

METRICS = {"sqeuclidean": 0, "euclidean": 1, "cosine": 2, "dot": 3}
_FLOAT32 = 0
_CPU = -1

_lib: ModuleType | None = None


class NativeCoreError(ImportError):
    """medmeta's native core (``medmeta._C``) is missing or failed to load."""


def check_label_range(labels: np.ndarray, n_way: int) -> None:
    """Raise naming the first of the integer ``labels`` outside ``[0, n_way)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= n_way):
        bad = int(labels[(labels < 0) | (labels >= n_way)][0])
        raise ValueError(f"labels: must be in [0, {n_way}), found {bad}")


def native() -> ModuleType:
    """The loaded ``medmeta._C``; raises :class:`NativeCoreError` with the reason."""
    global _lib
    if _lib is None:
        try:
            from medmeta import _C
        except ImportError as exc:
            raise NativeCoreError(
                f"medmeta's native core (medmeta._C) could not be loaded ({type(exc).__name__}: "
                f"{exc}); the edge runtime enrols prototypes with it. Reinstall medmeta for this "
                "platform (pip install --force-reinstall --no-deps medmeta)."
            ) from exc
        _lib = _C
    return _lib


def _matrix(name: str, x: np.ndarray, width: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or (width is not None and x.shape[1] != width):
        shape = list(np.shape(x))
        want = f"[n, {width}]" if width is not None else "[n, D]"
        raise ValueError(f"{name}: expected a float32 matrix {want}, got shape {shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _metric(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return METRICS[metric]


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, n_way: int) -> np.ndarray:
    """Class means ``[n_way, D]`` of ``embeddings [S, D]`` with ``labels [S]`` in ``[0, n_way)``.

    The native ``prototypes_forward`` kernel (Snell et al. 2017), as
    :func:`medmeta.ops.prototypes` on CPU.

    Raises:
        ValueError: labels out of range, or a class without any example (named).
    """
    emb = _matrix("embeddings", embeddings)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    if lab.shape != (emb.shape[0],):
        raise ValueError(f"labels: expected shape [{emb.shape[0]}], got {list(lab.shape)}")
    check_label_range(lab, n_way)
    counts = np.bincount(lab, minlength=n_way)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.argmin(counts))} has no support example")
    out = np.empty((n_way, emb.shape[1]), np.float32)
    wsum = np.empty(n_way, np.float32)
    native().prototypes_forward(
        _CPU, 0, _FLOAT32, emb.ctypes.data, lab.ctypes.data, 0, out.ctypes.data,
        wsum.ctypes.data, 1, emb.shape[0], n_way, emb.shape[1],
    )  # fmt: skip
    return out


def _distance(x: np.ndarray, y: np.ndarray, B: int, Q: int, N: int, D: int, metric: str):
    out = np.empty((B, Q, N), np.float32)
    workspace = np.empty(max(B * (Q + N), 1), np.float32)
    if B * Q * N:
        native().distance_forward(
            _CPU, 0, _FLOAT32, x.ctypes.data, y.ctypes.data, out.ctypes.data,
            workspace.ctypes.data, B, Q, N, D, _metric(metric),
        )  # fmt: skip
    return out


def pairwise_distances(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``[n, m]`` between rows of ``x [n, D]`` and ``y [m, D]`` (native kernel;
    ``dot`` is the negative inner product, as in :func:`medmeta.ops.pairwise_distance`)."""
    x = _matrix("x", x)
    y = _matrix("y", y, x.shape[1])
    _metric(metric)
    return _distance(x, y, 1, x.shape[0], y.shape[0], x.shape[1], metric)[0]


def row_distances(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``[n]`` between matching rows of ``x`` and ``y`` (both ``[n, D]``)."""
    x = _matrix("x", x)
    y = _matrix("y", y, x.shape[1])
    if len(y) != len(x):
        raise ValueError(f"y: expected {len(x)} rows like x, got {len(y)}")
    _metric(metric)
    return _distance(x, y, x.shape[0], 1, 1, x.shape[1], metric)[:, 0, 0]
