"""medmeta's native CPU kernels on numpy buffers, for the torch-free edge runtime.

The same C++ kernels that compute prototypes and distances in training
(:mod:`medmeta.ops`) run here on numpy arrays, through the plain C library that the
``medmeta-edge`` wheel carries next to this file (``libmedmeta_kernels.so``; its header is
``include/medmeta_kernels.h``), loaded with :mod:`ctypes`: no torch, no pybind11, one library
for every Python version. ``MEDMETA_EDGE_KERNELS=/path/to/lib`` loads another build. If the
library cannot load, these raise :class:`NativeCoreError` with the reason; nothing falls back
to another implementation.

The library checks label ranges and sizes itself; the shapes and dtypes are checked here.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

__all__ = [
    "ABI_VERSION",
    "METRICS",
    "NativeCoreError",
    "class_prototypes",
    "library_path",
    "pairwise_distances",
    "row_distances",
]

METRICS = {"sqeuclidean": 0, "euclidean": 1, "cosine": 2, "dot": 3}
#: The C interface this module speaks (``MEDMETA_KERNELS_ABI_VERSION`` in the header).
ABI_VERSION = 1
_LIBRARY_NAME = {"win32": "medmeta_kernels.dll", "darwin": "libmedmeta_kernels.dylib"}.get(
    sys.platform, "libmedmeta_kernels.so"
)

_lib: ctypes.CDLL | None = None


class NativeCoreError(ImportError):
    """medmeta's native kernel library is missing, or failed to load or to run."""


def check_label_range(labels: np.ndarray, n_way: int) -> None:
    """Raise naming the first of the integer ``labels`` outside ``[0, n_way)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= n_way):
        bad = int(labels[(labels < 0) | (labels >= n_way)][0])
        raise ValueError(f"labels: must be in [0, {n_way}), found {bad}")


def library_path() -> Path:
    """Where the kernel library is: ``$MEDMETA_EDGE_KERNELS``, else next to this file, else
    in ``medmeta/edge/`` of another ``sys.path`` entry (an editable checkout of medmeta
    beside an installed medmeta-edge)."""
    override = os.environ.get("MEDMETA_EDGE_KERNELS")
    if override:
        return Path(override)
    candidates = [Path(__file__).with_name(_LIBRARY_NAME)]
    candidates += [Path(p) / "medmeta" / "edge" / _LIBRARY_NAME for p in sys.path if p]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def _bind(lib: ctypes.CDLL) -> None:
    f32, i64, c_int = ctypes.POINTER(ctypes.c_float), ctypes.c_int64, ctypes.c_int
    lib.medmeta_kernels_abi_version.restype = c_int
    lib.medmeta_last_error.restype = ctypes.c_char_p
    lib.medmeta_class_prototypes_f32.argtypes = [
        f32, ctypes.POINTER(ctypes.c_int64), i64, i64, i64, f32, f32,
    ]  # fmt: skip
    lib.medmeta_pairwise_distances_f32.argtypes = [f32, f32, i64, i64, i64, i64, c_int, f32, f32]
    lib.medmeta_class_prototypes_f32.restype = c_int
    lib.medmeta_pairwise_distances_f32.restype = c_int


def native() -> ctypes.CDLL:
    """The loaded kernel library; raises :class:`NativeCoreError` with the reason."""
    global _lib
    if _lib is None:
        path = library_path()
        try:
            lib = ctypes.CDLL(str(path))
            _bind(lib)
        except (OSError, AttributeError) as exc:
            raise NativeCoreError(
                f"medmeta's kernel library {path} could not be loaded ({exc}); the edge runtime "
                "enrols prototypes with it. Reinstall medmeta-edge for this platform "
                "(pip install --force-reinstall --no-deps medmeta-edge)."
            ) from exc
        version = lib.medmeta_kernels_abi_version()
        if version != ABI_VERSION:
            raise NativeCoreError(
                f"{path} implements kernel ABI {version}, this medmeta.edge needs {ABI_VERSION}; "
                "reinstall medmeta-edge so the library and the Python code match"
            )
        _lib = lib
    return _lib


def _call(name: str, *args: object) -> None:
    lib = native()
    if getattr(lib, name)(*args) != 0:
        raise ValueError(lib.medmeta_last_error().decode(errors="replace"))


def _f32(x: np.ndarray) -> ctypes._Pointer:  # type: ignore[type-arg]
    return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


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
    _call("medmeta_class_prototypes_f32", _f32(emb),
          lab.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), emb.shape[0], n_way, emb.shape[1],
          _f32(out), _f32(wsum))  # fmt: skip
    return out


def _distance(x: np.ndarray, y: np.ndarray, B: int, Q: int, N: int, D: int, metric: str):
    out = np.empty((B, Q, N), np.float32)
    _call("medmeta_pairwise_distances_f32", _f32(x), _f32(y), B, Q, N, D, _metric(metric),
          _f32(out), None)  # fmt: skip
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
