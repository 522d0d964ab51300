"""ArrayDataset / SegmentationDataset containers and check_class_sizes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from medmeta.data import ArrayDataset, DataError, SegmentationDataset, check_class_sizes, load


def test_array_dataset_basics_on_real_images():
    pbc = load("pbc_blood")
    ds = ArrayDataset(pbc.x[:50], pbc.labels[:50] % 3, ["a", "b", "c"], groups=np.arange(50) // 5)
    assert len(ds) == 50
    assert ds.classes == ["a", "b", "c"]
    x0, y0 = ds[7]
    np.testing.assert_array_equal(x0, pbc.x[7])
    assert y0 == pbc.labels[7] % 3
    by = ds.indices_by_class()
    assert sorted(np.concatenate(list(by.values())).tolist()) == list(range(50))
    for k, idx in by.items():
        assert (ds.labels[idx] == k).all()
    sub = ds.subset(by[1])
    assert len(sub) == by[1].size and sub.classes == ds.classes
    np.testing.assert_array_equal(sub.groups, ds.groups[by[1]])
    np.testing.assert_array_equal(sub.x, ds.x[by[1]])
    assert ds.class_counts() == {"a": by[0].size, "b": by[1].size, "c": by[2].size}
    assert "ArrayDataset(" in repr(ds) and "uint8[50, 28, 28, 3]" in repr(ds)


def test_array_dataset_torch_tensors():
    x = torch.randn(6, 3)
    ds = ArrayDataset(x, torch.tensor([0, 1, 0, 1, 2, 2]))
    assert ds.num_classes == 3
    _, yi = ds[torch.tensor([1, 3])]
    assert isinstance(yi, torch.Tensor) and yi.tolist() == [1, 1]
    sub = ds.subset([4, 5])
    assert torch.equal(sub.x, x[4:6])


@pytest.mark.parametrize(
    ("x", "y", "names", "match"),
    [
        (np.zeros((3, 2)), [0, 1], None, "3 examples but 2 labels"),
        (
            np.zeros((3, 2)),
            [0, 1, 2],
            ["a", "b"],
            r"label 2 at index 2 is out of range \(expected 0\.\.1",
        ),
        (np.zeros((3, 2)), [0, -1, 0], None, "label -1 at index 1"),
        (np.zeros((3, 2)), [0.0, 1.0, 0.0], None, "labels must be integers"),
        (np.zeros((3, 2)), [[0, 1], [0, 1], [1, 0]], None, r"labels must have shape \[N\]"),
        (np.array([[0.0, np.nan], [1, 1], [2, 2]]), [0, 1, 0], None, "example 0 contains NaN"),
        (np.zeros((2, 2)), [0, 1], ["a", "a"], "class names must be unique"),
    ],
)
def test_array_dataset_rejects_bad_labels(x, y, names, match):
    with pytest.raises(DataError, match=match):
        ArrayDataset(x, y, names)


def test_array_dataset_rejects_bad_groups():
    with pytest.raises(DataError, match=r"groups must have shape \[3\]"):
        ArrayDataset(np.zeros((3, 1)), [0, 0, 1], groups=[1, 2])


def test_check_class_sizes_names_the_small_class():
    pbmc = load("pbmc68k_celltypes")
    counts = check_class_sizes(pbmc, shots=1, queries=7)
    assert counts["CD4+/CD45RA+/CD25- Naive T"] == 8
    with pytest.raises(DataError) as err:
        check_class_sizes(pbmc, shots=5, queries=10)
    msg = str(err.value)
    assert "class 'CD4+/CD45RA+/CD25- Naive T' (label 1) has only 8 examples" in msg
    assert "class 'CD34+' (label 7) has only 13 examples" in msg
    assert "shots + queries = 5 + 10 = 15" in msg
    assert "Dendritic" not in msg  # 240 examples: large enough
    # restricting to large classes passes
    assert check_class_sizes(pbmc, 15, classes=["Dendritic", "CD19+ B"]) == {
        "Dendritic": 240,
        "CD19+ B": 95,
    }
    with pytest.raises(DataError, match="unknown class 'nope'"):
        check_class_sizes(pbmc, 1, classes=["nope"])


def test_segmentation_dataset_validation_and_presence():
    masks = np.zeros((3, 4, 4), dtype=np.uint8)
    masks[0, 1, 1] = 1
    masks[2, 0, 0] = 2
    ds = SegmentationDataset(
        np.zeros((3, 4, 4), np.float32), masks, ["bg", "a", "b"], groups=["p1", "p1", "p2"]
    )
    assert ds.indices_by_class()[1].tolist() == [0]
    assert ds.indices_by_class()[2].tolist() == [2]
    assert ds.class_counts() == {"bg": 3, "a": 1, "b": 1}
    with pytest.raises(DataError, match=r"class 'b' .* has only 1 examples"):
        check_class_sizes(ds, 2, classes=[2])
    sub = ds.subset([2])
    assert sub.groups.tolist() == ["p2"] and sub.masks[0, 0, 0] == 2
    with pytest.raises(DataError, match=r"mask values must lie in 0\.\.1"):
        SegmentationDataset(np.zeros((3, 4, 4)), masks, ["bg", "a"])
    with pytest.raises(DataError, match="do not match images"):
        SegmentationDataset(np.zeros((3, 5, 4)), masks, ["bg", "a", "b"])
    with pytest.raises(DataError, match="integer class ids"):
        SegmentationDataset(np.zeros((3, 4, 4)), masks.astype(float), ["bg", "a", "b"])


def test_import_is_light():
    """``import medmeta.data`` must not import torch or any optional library."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import medmeta.data
        heavy = [m for m in ("torch", "pandas", "pydicom", "nibabel", "anndata", "PIL",
                             "tifffile", "h5py") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    from pathlib import Path

    import medmeta

    pkg_root = str(Path(medmeta.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code, pkg_root],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == ""
