"""Gene expression: AnnData ``.h5ad`` files with a cell-type or condition column.

The file is first opened in backed mode to read ``n_obs x n_vars`` and the ``obs`` table, so
that a matrix too large to densify is refused (``max_bytes``) before it is loaded.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dataset import ArrayDataset
from ..errors import DEFAULT_MAX_BYTES, DataError, check_size, missing_extra

__all__ = ["h5ad_obs_columns", "load_h5ad", "read_h5ad_cells"]

logger = logging.getLogger(__name__)


def _anndata() -> Any:
    try:
        import anndata
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("anndata", err) from err
    return anndata


def _read(path: str, backed: bool) -> Any:
    ad = _anndata()
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:
        raise DataError(
            f"not a readable .h5ad file ({type(err).__name__}: {err}); the file is "
            "corrupt or truncated",
            path,
        ) from err


def load_h5ad(
    path: str | os.PathLike[str],
    label_key: str,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    genes: Sequence[str] | None = None,
    group_key: str | None = None,
    class_names: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> ArrayDataset:
    """Load an AnnData ``.h5ad`` file as cells x genes with a class per cell.

    Args:
        path: the ``.h5ad`` file.
        label_key: the ``obs`` column with the cell type / condition. Its categories (in
            category order for categoricals, else sorted) are the classes.
        layer: read ``layers[layer]`` instead of ``X``.
        use_raw: read ``raw.X`` (and ``raw.var_names``) instead of ``X``.
        genes: keep only these genes, in this order.
        group_key: an ``obs`` column of donor/sample ids used as ``groups``.
        class_names: fix the classes in label order; labels outside it raise.
        max_bytes: refuse files whose arrays (as their headers claim) or whose matrix in
            dense float32 form would exceed this, before loading them.
        name: dataset name for ``meta["name"]``.

    Returns:
        :class:`ArrayDataset` with ``x`` float32 ``[cells, genes]`` and
        ``meta["gene_names"]``.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError("file not found", p)
    if layer is not None and use_raw:
        raise DataError("give layer= or use_raw=True, not both", "layer")
    n_obs, n_vars, obs, layers = _header(p, max_bytes)
    check_size(n_obs * n_vars * 4, max_bytes, p, f"a dense {n_obs} x {n_vars} float32 matrix")
    for key, what in [(label_key, "label_key"), (group_key, "group_key")]:
        if key is not None and key not in obs.columns:
            raise DataError(
                f"{what} {key!r} is not an obs column; obs columns are {list(obs.columns)}", p
            )
    if layer is not None and layer not in layers:
        raise DataError(f"layer {layer!r} not found; layers are {layers}", p)
    labels_col = obs[label_key]
    isna = labels_col.isna().to_numpy()
    if isna.any():
        first = int(np.flatnonzero(isna)[0])
        raise DataError(
            f"obs column {label_key!r} has {int(isna.sum())} missing labels (first "
            f"at cell {first}); drop or annotate those cells",
            p,
        )
    if class_names is not None:
        names = [str(c) for c in class_names]
    elif hasattr(labels_col, "cat"):
        used = set(labels_col.astype(str))
        names = [str(c) for c in labels_col.cat.categories if str(c) in used]
    else:
        names = sorted(set(labels_col.astype(str)))
    lookup = {c: i for i, c in enumerate(names)}
    values = labels_col.astype(str).to_numpy()
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise DataError(f"labels {unknown[:10]} of {label_key!r} are not in class_names", p)
    y = np.array([lookup[v] for v in values], dtype=np.int64)

    adata = _read(p, backed=False)
    if use_raw:
        if adata.raw is None:
            raise DataError("use_raw=True but the file has no .raw", p)
        matrix, var_names = adata.raw.X, list(map(str, adata.raw.var_names))
    elif layer is not None:
        matrix, var_names = adata.layers[layer], list(map(str, adata.var_names))
    else:
        matrix, var_names = adata.X, list(map(str, adata.var_names))
    if matrix is None:
        raise DataError("the file has no expression matrix (X is empty)", p)
    matrix = _checked(matrix, p)
    if genes is not None:
        pos = {g: i for i, g in enumerate(var_names)}
        missing = [g for g in genes if g not in pos]
        if missing:
            raise DataError(f"{len(missing)} requested genes are absent, e.g. {missing[:5]}", p)
        cols = [pos[g] for g in genes]
        matrix, var_names = matrix[:, cols], list(genes)
    x = _dense(matrix, p)
    groups = None if group_key is None else obs[group_key].astype(str).to_numpy()
    meta = {
        "name": name or os.path.splitext(os.path.basename(p))[0],
        "format": "h5ad",
        "label_key": label_key,
        "gene_names": np.asarray(var_names),
        "cell_ids": np.asarray([str(c) for c in obs.index]),
        "source_matrix": "raw.X" if use_raw else (f"layers[{layer!r}]" if layer else "X"),
    }
    return ArrayDataset(x, y, names, groups, meta=meta)


def _checked(matrix: Any, path: str) -> Any:
    """``matrix``, its sparse structure checked first: scipy's ``toarray`` and slicing trust
    ``indptr``/``indices`` and write out of bounds (a segfault) when a file's are wrong."""
    if hasattr(matrix, "check_format"):
        try:
            matrix.check_format(full_check=True)
        except (ValueError, TypeError, IndexError, OverflowError) as err:
            raise DataError(f"the sparse expression matrix is malformed ({err})", path) from err
    return matrix


def _dense(matrix: Any, path: str) -> np.ndarray:
    """A (sparse or dense) expression matrix as finite float32 ``[cells, genes]``."""
    x = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        cell = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(
            f"expression matrix has {int(bad.sum())} NaN/infinite values (first in cell {cell})",
            path,
        )
    return x


#: The structure of an HDF5 file (every object's header and attribute, and the sizes its
#: datasets claim) is first read in a child process: libhdf5 is not hardened against hostile
#: files (some hang or crash it), and a child that crashes, hangs or runs out of memory
#: costs a :class:`DataError`, not the caller's process.
_PROBE = """
import sys
import h5py
import numpy as np
total = 0
def visit(name, obj):
    global total
    for key in obj.attrs:
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset) and obj.shape is not None:
        total += int(np.prod(obj.shape, dtype=object)) * obj.dtype.itemsize
with h5py.File(sys.argv[1], "r") as f:
    for key in f.attrs:
        f.attrs[key]
    f.visititems(visit)
print(total)
"""
PROBE_SECONDS = 30
PROBE_MEMORY = 2 << 30


def _limit_child() -> None:  # pragma: no cover - runs in the child
    """Memory and CPU-time limits of the probe: it ends on its own even if the reading
    process dies before its timeout kills it (no orphan spinning on a hostile file)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY, PROBE_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (PROBE_SECONDS, PROBE_SECONDS + 5))


def _declared_bytes(path: str) -> int:
    """The bytes that the datasets of the HDF5 file ``path`` claim (shape x item size, from
    their headers: no data is read), found by a child process (see :data:`_PROBE`); anndata
    reads every dataset, so a header claiming terabytes in a small file is caught here."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, path], capture_output=True, text=True,
            timeout=PROBE_SECONDS, preexec_fn=_limit_child if os.name == "posix" else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise DataError(f"reading the HDF5 structure did not finish in {PROBE_SECONDS} s; "
                        "the file is corrupt or hostile", path) from err  # fmt: skip
    if done.returncode == 0 and done.stdout.strip().isdigit():
        return int(done.stdout.strip())
    lines = done.stderr.strip().splitlines()
    why = lines[-1][:300] if done.returncode > 0 and lines else f"exit status {done.returncode}"
    raise DataError(f"not a readable .h5ad (HDF5) file ({why}); the file is corrupt or "
                    "truncated", path)  # fmt: skip


def _header(
    path: str, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[int, int, Any, list[str]]:
    """``(n_obs, n_vars, obs table, layer names)`` of an existing file, read in backed mode
    (the matrix is not loaded) once the sizes its datasets claim fit ``max_bytes``."""
    if not os.path.isfile(path):
        raise DataError("file not found", path)
    check_size(_declared_bytes(path), max_bytes, path, "the arrays the file holds")
    backed = _read(path, backed=True)
    try:
        return (int(backed.n_obs), int(backed.n_vars), backed.obs.copy(),
                list(backed.layers.keys()))  # fmt: skip
    finally:
        if getattr(backed, "file", None) is not None:
            backed.file.close()


def h5ad_obs_columns(path: str | os.PathLike[str]) -> list[str]:
    """The ``obs`` column names of an AnnData file (backed read: no matrix is loaded)."""
    return [str(c) for c in _header(os.fspath(path))[2].columns]


def read_h5ad_cells(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, list[str], list[str]]:
    """The cells of an AnnData file without labels (prediction inputs):
    ``(x [cells, genes] float32 from X, gene names, cell ids)``; a matrix whose dense form
    would exceed ``max_bytes`` is refused before it is loaded."""
    p = os.fspath(path)
    n_obs, n_vars, _, _ = _header(p, max_bytes)
    check_size(n_obs * n_vars * 4, max_bytes, p, f"a dense {n_obs} x {n_vars} float32 matrix")
    adata = _read(p, backed=False)
    if adata.X is None:
        raise DataError("the file has no expression matrix (X is empty)", p)
    genes, cells = [str(g) for g in adata.var_names], [str(c) for c in adata.obs_names]
    return _dense(_checked(adata.X, p), p), genes, cells
