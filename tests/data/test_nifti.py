"""NIfTI on the nibabel sample files (anatomical.nii, example4d.nii.gz): canonical
orientation, slices, patches, label maps; truncated, hostile and mismatched copies."""

from __future__ import annotations

import io
import time

import nibabel as nib
import numpy as np
import pytest

from medmeta.data import (
    DataError,
    extract_patches,
    load_nifti_segmentation,
    nifti_slices,
    read_nifti,
)


def test_canonical_orientation(anatomical_path):
    img = nib.load(anatomical_path)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    raw = np.asarray(img.dataobj).astype(np.float32)
    vol = read_nifti(anatomical_path)
    assert vol.axcodes == ("R", "A", "S")
    assert vol.data.shape == (33, 41, 25) and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, raw[::-1])  # L->R flips the first axis
    ref = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(vol.data, ref.get_fdata().astype(np.float32))
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.zooms == (2.0, 2.0, 2.0)
    native = read_nifti(anatomical_path, canonical=False)
    assert native.axcodes == ("L", "A", "S")
    np.testing.assert_array_equal(native.data, raw)


def test_4d_volume_slices(example4d_path):
    vol = read_nifti(example4d_path)
    assert vol.data.shape == (128, 96, 24, 2)
    ref = nib.as_closest_canonical(nib.load(example4d_path)).get_fdata().astype(np.float32)
    np.testing.assert_array_equal(vol.data, ref)
    slices = nifti_slices(example4d_path, axis=2)
    assert slices.shape == (48, 128, 96)
    np.testing.assert_array_equal(slices[24 + 5], ref[:, :, 5, 1])
    sag = nifti_slices(example4d_path, axis=0)
    assert sag.shape == (256, 96, 24)


def _label_map(anatomical_path, path, transform=None):
    img = nib.load(anatomical_path)
    data = np.asarray(img.dataobj).astype(np.float32)
    lab = (data > np.percentile(data, 60)).astype(np.int16) + (
        data > np.percentile(data, 95)
    ).astype(np.int16)
    if transform is not None:
        lab = transform(lab)
    nib.save(nib.Nifti1Image(lab, img.affine), path)
    return lab


def test_segmentation_slices_with_label_map(anatomical_path, tmp_path):
    lab_path = tmp_path / "anatomical_seg.nii.gz"
    lab = _label_map(anatomical_path, lab_path)
    ds = load_nifti_segmentation(anatomical_path, lab_path)
    img = read_nifti(anatomical_path).data
    assert ds.images.shape == (25, 33, 41) and ds.masks.shape == (25, 33, 41)
    np.testing.assert_array_equal(ds.images[7], img[:, :, 7])
    np.testing.assert_array_equal(ds.masks[7], lab[::-1][:, :, 7])  # canonical like the image
    assert ds.classes == ["background", "1", "2"]
    assert set(ds.groups.tolist()) == {"anatomical"}
    nonempty = load_nifti_segmentation(anatomical_path, lab_path, skip_empty=True)
    assert len(nonempty) == int(lab.reshape(-1, 25).any(axis=0).sum())
    named = load_nifti_segmentation(
        anatomical_path, lab_path, class_names=["background", "tissue", "bright"]
    )
    assert named.class_counts()["bright"] == int((lab == 2).any(axis=(0, 1)).sum())


def test_segmentation_patches(anatomical_path, tmp_path):
    lab_path = tmp_path / "seg.nii"
    _label_map(anatomical_path, lab_path)
    ds2 = load_nifti_segmentation(anatomical_path, lab_path, patch_size=(16, 16))
    assert ds2.images.shape == (25 * 2 * 2, 16, 16)
    img = read_nifti(anatomical_path).data
    np.testing.assert_array_equal(ds2.images[0], img[:16, :16, 0])
    np.testing.assert_array_equal(ds2.images[3], img[16:32, 16:32, 0])
    ds3 = load_nifti_segmentation(anatomical_path, lab_path, patch_size=(8, 8, 8), stride=(8, 8, 8))
    assert ds3.images.shape == (4 * 5 * 3, 8, 8, 8)
    patches, origins = extract_patches(img, (8, 8, 8))
    np.testing.assert_array_equal(patches[7], img[tuple(slice(o, o + 8) for o in origins[7])])


def test_label_map_mismatches(anatomical_path, tmp_path):
    wrong = tmp_path / "wrong_shape.nii"
    _label_map(anatomical_path, wrong, transform=lambda a: a[:, :, :20])
    with pytest.raises(DataError, match=r"label map shape \(33, 41, 20\) does not match") as err:
        load_nifti_segmentation(anatomical_path, wrong)
    assert str(wrong) in str(err.value)
    frac = tmp_path / "fractional.nii"
    img = nib.load(anatomical_path)
    nib.save(nib.Nifti1Image(np.full(img.shape, 0.5, np.float32), img.affine), frac)
    with pytest.raises(DataError, match="non-integer voxels"):
        load_nifti_segmentation(anatomical_path, frac)
    lab = tmp_path / "lab.nii"
    _label_map(anatomical_path, lab)
    with pytest.raises(DataError, match="label value 2 has no class name"):
        load_nifti_segmentation(anatomical_path, lab, class_names=["background", "x"])


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])
def test_truncated_copies(files, tmp_path, truncate, name):
    bad = truncate(files / name, tmp_path / name, 0.6)
    with pytest.raises(DataError) as err:
        read_nifti(bad)
    assert str(bad) in str(err.value)
    tiny = truncate(files / name, tmp_path / ("tiny_" + name), 200)
    with pytest.raises(DataError, match="not a readable NIfTI"):
        read_nifti(tiny)


def test_hostile_header_fails_fast(anatomical_path, tmp_path):
    img = nib.load(anatomical_path)
    hdr = img.header.copy()
    hdr.set_data_shape((30000, 30000, 30000))  # 54 TB of int16 claimed
    buf = io.BytesIO()
    hdr.write_to(buf)
    raw = anatomical_path.read_bytes()
    path = tmp_path / "hostile.nii"
    path.write_bytes(buf.getvalue() + raw[len(buf.getvalue()) :])
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="above the limit") as err:
        read_nifti(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in str(err.value)


def test_not_nifti_and_skip(anatomical_path, tmp_path):
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"\1" * 400)
    with pytest.raises(DataError, match="not a readable NIfTI"):
        read_nifti(junk)
    lab = tmp_path / "lab.nii"
    _label_map(anatomical_path, lab)
    ds = load_nifti_segmentation([anatomical_path, junk], [lab, lab], on_error="skip")
    assert len(ds) == 25
    assert [s.path for s in ds.skipped] == [str(junk)]
