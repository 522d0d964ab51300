"""Fuzz the DICOM reader (:func:`medmeta.data.formats.dicom.read_dicom` and
``load_dicom_series``) and pydicom's parsing under it.

Seeds: the CT and MR samples of ``tests/data/files`` (whole, and cut down to 16 x 16 pixels),
a MONOCHROME1 variant, a multi-frame one and an enhanced multi-frame one whose rescale sits
in the functional groups."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ._harness import FILES, MAX_BYTES, Call, Harness, fresh, main


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.dicom import load_dicom_series, read_dicom

    folder = fresh(scratch, ("series/image.dcm", data))
    path = folder / "series" / "image.dcm"
    return [
        (lambda: read_dicom(path, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: read_dicom(path, window="lung", force=True, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_dicom_series(folder / "series", max_bytes=MAX_BYTES), (DataError,)),
    ]


def _small(ds, size: int = 16):
    """``ds`` with its pixels cut to the top-left ``size x size`` (and the header to match)."""
    pixels = ds.pixel_array[:size, :size]
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def _seeds() -> dict[str, bytes]:
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    def save(ds) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    seeds = {p.name: p.read_bytes() for p in (FILES / "CT_small.dcm", FILES / "MR_small.dcm")}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        seeds[f"small-{name}"] = save(_small(pydicom.dcmread(FILES / name)))
    mono1 = _small(pydicom.dcmread(FILES / "MR_small.dcm"))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    seeds["monochrome1.dcm"] = save(mono1)
    multi = _small(pydicom.dcmread(FILES / "CT_small.dcm"), 8)
    frames = np.stack([multi.pixel_array, multi.pixel_array[::-1]])
    multi.NumberOfFrames, multi.PixelData = 2, frames.tobytes()
    seeds["multiframe.dcm"] = save(multi)
    enhanced = _small(pydicom.dcmread(FILES / "CT_small.dcm"), 8)
    del enhanced.RescaleSlope, enhanced.RescaleIntercept
    group = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = "2", "-100"
    group.PixelValueTransformationSequence = DicomSequence([transform])
    enhanced.SharedFunctionalGroupsSequence = DicomSequence([group])
    seeds["enhanced.dcm"] = save(enhanced)
    return seeds


HARNESS = Harness("dicom", _calls, _seeds, ("medmeta.data.formats.dicom", "pydicom"),
                  ("medmeta", "pydicom"))  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
