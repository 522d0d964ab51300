"""Gene expression: a real .h5ad built at test time from the embedded PBMC 68k set."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from medmeta.data import DataError, load, load_h5ad
from medmeta.data.formats.npz import read_npz
from medmeta.data.registry import dataset_path


@pytest.fixture(scope="module")
def pbmc_arrays():
    with dataset_path("pbmc68k_celltypes") as path:
        return read_npz(path)


def _h5ad(path, a, labels=None):
    names = a["class_names"]
    cell_type = pd.Categorical(
        names[a["labels"]] if labels is None else labels, categories=list(names)
    )
    obs = pd.DataFrame(
        {"cell_type": cell_type, "louvain": a["louvain"].astype(str)}, index=a["cell_ids"]
    )
    adata = anndata.AnnData(
        X=sp.csr_matrix(a["X_lognorm"]), obs=obs, var=pd.DataFrame(index=a["gene_names"])
    )
    adata.layers["scaled"] = a["X"]
    adata.write_h5ad(path)
    return path


def test_h5ad_roundtrip(tmp_path, pbmc_arrays):
    a = pbmc_arrays
    path = _h5ad(tmp_path / "pbmc.h5ad", a)
    ds = load_h5ad(path, "cell_type", group_key="louvain")
    assert ds.x.shape == (700, 765) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x, a["X_lognorm"])
    assert ds.classes == [str(c) for c in a["class_names"]]
    np.testing.assert_array_equal(ds.labels, a["labels"])
    np.testing.assert_array_equal(ds.groups, a["louvain"].astype(str))
    assert list(ds.meta["gene_names"][:3]) == ["HES4", "TNFRSF4", "SSU72"]
    emb = load("pbmc68k_celltypes")
    assert ds.class_counts() == emb.class_counts()
    scaled = load_h5ad(path, "cell_type", layer="scaled")
    np.testing.assert_array_equal(scaled.x, a["X"])
    sub = load_h5ad(path, "cell_type", genes=["SSU72", "HES4"])
    np.testing.assert_array_equal(sub.x, a["X_lognorm"][:, [2, 0]])


def test_h5ad_errors(tmp_path, pbmc_arrays, truncate):
    a = pbmc_arrays
    path = _h5ad(tmp_path / "pbmc.h5ad", a)
    with pytest.raises(
        DataError,
        match=r"label_key 'bulk_labels' is not an obs column; obs "
        r"columns are \['cell_type', 'louvain'\]",
    ):
        load_h5ad(path, "bulk_labels")
    with pytest.raises(DataError, match="layer 'counts' not found"):
        load_h5ad(path, "cell_type", layer="counts")
    with pytest.raises(DataError, match="2 requested genes are absent"):
        load_h5ad(path, "cell_type", genes=["HES4", "NOTAGENE1", "NOTAGENE2"])
    with pytest.raises(DataError, match="above the limit"):
        load_h5ad(path, "cell_type", max_bytes=1_000_000)  # 700 x 765 x 4 = 2.1 MB
    labels = a["class_names"][a["labels"]].astype(object)
    labels[[3, 9]] = None
    nan_path = _h5ad(tmp_path / "nan.h5ad", a, labels=labels)
    with pytest.raises(DataError, match="has 2 missing labels") as err:
        load_h5ad(nan_path, "cell_type")
    assert str(nan_path) in str(err.value)
    bad = truncate(path, tmp_path / "cut.h5ad", 0.5)
    with pytest.raises(DataError, match=r"not a readable \.h5ad") as err:
        load_h5ad(bad, "cell_type")
    assert str(bad) in str(err.value)
