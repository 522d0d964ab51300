"""NPZ loader on the embedded sets, on MedMNIST-layout files built from them, and on corrupt,
truncated, pickled and hostile archives."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest

from medmeta.data import DataError, SegmentationDataset, load, load_npz, read_npz
from medmeta.data.registry import dataset_path


def test_load_embedded_npz_file():
    with dataset_path("brain_tumor_mri") as path:
        ds = load_npz(path)
        raw = np.load(path, allow_pickle=False)
        np.testing.assert_array_equal(ds.x, raw["images"])
        np.testing.assert_array_equal(ds.labels, raw["labels"])
    assert ds.classes == ["glioma", "meningioma", "pituitary", "no_tumor"]
    assert ds.class_counts() == dict.fromkeys(ds.classes, 600)


def _medmnist(tmp_path):
    pbc = load("pbc_blood")
    idx = np.arange(0, 4800, 40)  # 120 real images
    x, y = pbc.x[idx], pbc.labels[idx]
    parts = {"train": slice(0, 80), "val": slice(80, 100), "test": slice(100, 120)}
    arrays = {}
    for s, sl in parts.items():
        arrays[f"{s}_images"] = x[sl]
        arrays[f"{s}_labels"] = y[sl, None]  # MedMNIST stores [N, 1]
    path = tmp_path / "bloodmnist.npz"
    np.savez_compressed(path, **arrays)
    return path, x, y


def test_medmnist_layout_roundtrip(tmp_path):
    path, x, y = _medmnist(tmp_path)
    ds = load_npz(path, class_names=load("pbc_blood").classes)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.extra["split"].tolist() == ["train"] * 80 + ["val"] * 20 + ["test"] * 20
    val = load_npz(path, split="val")
    np.testing.assert_array_equal(val.x, x[80:100])
    both = load_npz(path, split=["train", "test"])
    assert len(both) == 100
    with pytest.raises(DataError, match="split 'dev' not in the file"):
        load_npz(path, split="dev")


def test_medmnist_multilabel_refused(tmp_path):
    path = tmp_path / "chest.npz"
    np.savez(
        path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 14), np.uint8)
    )
    with pytest.raises(DataError, match="multi-label targets are not supported") as err:
        load_npz(path)
    assert str(path) in str(err.value)


def test_labels_out_of_range_and_mismatched(tmp_path):
    khan = load("khan")
    bad = tmp_path / "bad_labels.npz"
    y = khan.labels.copy()
    y[5] = 9
    np.savez(bad, X=khan.x, labels=y, class_names=np.array(khan.classes))
    with pytest.raises(DataError, match=r"label 9 at index 5 is out of range") as err:
        load_npz(bad)
    assert str(bad) in str(err.value)
    short = tmp_path / "short.npz"
    np.savez(short, X=khan.x, labels=khan.labels[:-3])
    with pytest.raises(DataError, match="83 examples but 80 labels"):
        load_npz(short)
    nolab = tmp_path / "nolabels.npz"
    np.savez(nolab, X=khan.x)
    with pytest.raises(DataError, match="no labels array 'labels'"):
        load_npz(nolab)


def test_truncated_embedded_copy(tmp_path, truncate):
    with dataset_path("khan") as path:
        for keep in (0.5, 0.99, 100):
            bad = truncate(path, tmp_path / f"khan_{keep}.npz", keep)
            with pytest.raises(DataError) as err:
                load_npz(bad)
            assert str(bad) in str(err.value)


def test_bitflipped_embedded_copy(tmp_path):
    with dataset_path("khan") as path:
        data = bytearray(path.read_bytes())
    # corrupt the compressed stream of X.npy (the first and largest member)
    for i in range(20000, 20400):
        data[i] ^= 0x5A
    bad = tmp_path / "khan_corrupt.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt") as err:
        load_npz(bad)
    assert str(bad) in str(err.value)


def test_pickled_object_arrays_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, images=np.array([{"a": 1}, None], dtype=object), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="pickled Python objects"):
        load_npz(path)


def _npz_with_header(path, shape, payload=b"\0" * 64):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buf.getvalue() + payload)
        lab = io.BytesIO()
        np.save(lab, np.zeros(2, np.int64))
        zf.writestr("labels.npy", lab.getvalue())


def test_hostile_header_fails_fast(tmp_path):
    path = tmp_path / "hostile.npz"
    _npz_with_header(path, (100_000, 100_000, 1000))  # 80 TB claimed
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="above the limit") as err:
        load_npz(path)
    assert time.perf_counter() - t0 < 1.0
    assert "images" in str(err.value) and str(path) in str(err.value)


def test_header_claiming_more_than_stored(tmp_path):
    path = tmp_path / "lying.npz"
    _npz_with_header(path, (2, 1000))  # 16 kB claimed, 64 bytes stored
    with pytest.raises(DataError, match="holds only 64 bytes"):
        read_npz(path)


def test_not_a_zip_and_missing(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(DataError, match=r"not a valid \.npz"):
        load_npz(junk)
    with pytest.raises(DataError, match="file not found"):
        load_npz(tmp_path / "absent.npz")


def test_segmentation_npz(tmp_path):
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 8, 8)) > 0.7).astype(np.uint8)
    path = tmp_path / "seg.npz"
    np.savez(
        path,
        images=rng.integers(0, 255, (5, 8, 8), dtype=np.uint8),
        masks=masks,
        class_names=np.array(["background", "lesion"]),
        source_ids=np.array([1, 1, 2, 2, 3]),
    )
    ds = load_npz(path)
    assert isinstance(ds, SegmentationDataset)
    assert ds.groups.tolist() == [1, 1, 2, 2, 3]
    np.testing.assert_array_equal(ds.masks, masks)
