"""Fuzz the NIfTI reader (:func:`medmeta.data.formats.nifti.read_nifti`,
``nifti_slices``, ``load_nifti_segmentation``) and nibabel's header parsing under it.

Gzip inputs are written as ``.nii.gz``, the others as ``.nii``. Seeds: 6 x 6 x 4 crops of
the sample volumes of ``tests/data/files`` (big- and little-endian, 3-D and 4-D, an integer
label map), plain and gzipped."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

from ._harness import FILES, MAX_BYTES, Call, Harness, fresh, main


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.nifti import load_nifti_segmentation, nifti_slices, read_nifti

    name = "volume.nii.gz" if data[:2] == b"\x1f\x8b" else "volume.nii"
    path = fresh(scratch, (name, data)) / name
    return [
        (lambda: read_nifti(path, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: read_nifti(path, canonical=False, dtype=None, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: nifti_slices(path, axis=0, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_nifti_segmentation(path, path, max_bytes=MAX_BYTES), (DataError,)),
    ]


def _seeds() -> dict[str, bytes]:
    import nibabel as nib
    import numpy as np

    anat = nib.load(FILES / "anatomical.nii")
    four = nib.load(FILES / "example4d.nii.gz")
    volumes = {
        "anatomical-be.nii": nib.Nifti1Image(
            np.asarray(anat.dataobj)[10:16, 10:16, 10:14], anat.affine, anat.header),
        "anatomical-le.nii": nib.Nifti1Image(
            np.asarray(anat.dataobj)[10:16, 10:16, 10:14].astype("<i2"), anat.affine),
        "example4d.nii": nib.Nifti1Image(
            np.asarray(four.dataobj)[60:66, 40:46, 10:14], four.affine, four.header),
        "labels.nii": nib.Nifti1Image(
            (np.asarray(anat.dataobj)[10:16, 10:16, 10:14] > 300).astype(np.uint8), anat.affine),
        "nifti2.nii": nib.Nifti2Image(
            np.asarray(anat.dataobj)[10:16, 10:16, 10:14].astype(np.float32), anat.affine),
    }  # fmt: skip
    seeds = {}
    for name, img in volumes.items():
        raw = img.to_bytes()
        seeds[name] = raw
        seeds[name + ".gz"] = gzip.compress(raw, mtime=0)
    return seeds


HARNESS = Harness("nifti", _calls, _seeds, ("medmeta.data.formats.nifti", "nibabel"),
                  ("medmeta", "nibabel"))  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
