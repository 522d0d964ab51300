"""Fuzz the AnnData reader (:func:`medmeta.data.formats.expression.load_h5ad`,
``read_h5ad_cells``): HDF5 through h5py (its structure first in a child process), then
anndata's layout.

Seeds: 12 cells x 20 genes of the embedded PBMC 68k data set (dense and sparse X, with a
categorical cell-type column, a layer and ``.raw``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, main


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats import expression

    path = fresh(scratch, ("cells.h5ad", data)) / "cells.h5ad"
    return [
        (lambda: _quick(expression.load_h5ad, path, "cell_type", use_raw=True,
                        max_bytes=MAX_BYTES), (DataError,)),
        (lambda: _quick(expression.read_h5ad_cells, path, max_bytes=MAX_BYTES), (DataError,)),
    ]  # fmt: skip


def _quick(read: Callable[..., object], *args: object, **kwargs: object) -> object:
    """``read(*args, **kwargs)`` with the child process that reads the HDF5 structure
    (``expression._PROBE``) given 3 s, less than the fuzzer's ``-timeout``."""
    from medmeta.data.formats import expression

    saved, expression.PROBE_SECONDS = expression.PROBE_SECONDS, 3
    try:
        return read(*args, **kwargs)
    finally:
        expression.PROBE_SECONDS = saved


def _seeds() -> dict[str, bytes]:
    import tempfile
    import warnings

    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse

    from medmeta.data.formats.npz import read_npz

    z = read_npz(DATASETS / "pbmc68k_celltypes.npz")
    x = z["X"][:12, :20]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([str(z["class_names"][k]) for k in z["labels"][:12]])},
        index=[str(c) for c in z["cell_ids"][:12]],
    )
    var = pd.DataFrame(index=[str(g) for g in z["gene_names"][:20]])
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, matrix in [("dense", x), ("sparse", scipy.sparse.csr_matrix(x))]:
            adata = anndata.AnnData(matrix, obs=obs, var=var)
            adata.layers["counts"] = np.rint(x)
            adata.raw = adata
            path = Path(tmp) / f"{name}.h5ad"
            adata.write_h5ad(path)
            seeds[f"pbmc-{name}.h5ad"] = path.read_bytes()
    return seeds


HARNESS = Harness("h5ad", _calls, _seeds, ("medmeta.data.formats.expression", "anndata"))
# (anndata is imported but not instrumented: instrumenting it and its dependencies takes
# minutes; coverage feedback comes from medmeta's code and the inputs' effects on it)

if __name__ == "__main__":
    main(HARNESS)
