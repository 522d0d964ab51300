"""Medical image files on the command line: DICOM files, DICOM series folders and NIfTI
volumes as 2-D slices, and class folders of them as labelled datasets.

Values stay in their own unit (rescaled to Hounsfield units for CT): the intensity window is
part of the model's preprocessing (``medmeta train --window``), so a model trained on
windowed CT applies the same window to every DICOM or NIfTI input at prediction, in PyTorch
and on the device alike. Slices are resampled to the model's input size by the same
preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmeta.data import ArrayDataset, DataError

__all__ = ["is_medical", "load_medical_classes", "read_medical"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def is_medical(path: Path) -> bool:
    """A DICOM or NIfTI file, or a folder whose files (searched recursively) include one."""
    if path.is_file():
        return _is_dicom(path) or _is_nifti(path)
    return path.is_dir() and any(_is_dicom(p) or _is_nifti(p) for p in _files(path))


def read_medical(path: Path) -> tuple[np.ndarray, str]:
    """Float32 slices ``[n, H, W]`` of a DICOM file (its frames), a DICOM series folder (in
    slice order) or a NIfTI volume (axial slices of the RAS+ volume), and what was read."""
    from medmeta.data.formats.dicom import load_dicom_series, read_dicom
    from medmeta.data.formats.nifti import nifti_slices

    if path.is_dir():
        vol = load_dicom_series(path)
        return vol.volume, f"DICOM series {path} ({vol.modality}, {len(vol.volume)} slices)"
    if _is_nifti(path):
        slices = nifti_slices(path)
        return slices, f"NIfTI {path} ({len(slices)} axial slices)"
    if _is_dicom(path):
        image = read_dicom(path)
        if image.pixels.ndim != 3:
            raise DataError(f"colour DICOM ({image.photometric}); expected grayscale", path)
        unit = "HU" if image.rescaled and image.modality == "CT" else "stored values"
        return (
            image.pixels,
            f"DICOM {path} ({image.modality}, {len(image.pixels)} frame(s), {unit})",
        )
    raise DataError("expected a DICOM file (.dcm), a DICOM series folder or a NIfTI volume", path)


def load_medical_classes(root: Path) -> ArrayDataset:
    """``root/<class>/...`` of DICOM files or NIfTI volumes: every slice an example of its
    class folder. Slices must share one size (resampling to the model's input happens in its
    preprocessing, after loading)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders (expected root/<class>/<DICOM or NIfTI files>)", root)
    xs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for k, folder in enumerate(classes):
        files = [p for p in _files(folder) if _is_dicom(p) or _is_nifti(p)]
        if not files:
            raise DataError(
                "class folder holds no DICOM (.dcm) or NIfTI (.nii, .nii.gz) files", folder
            )
        for f in files:
            slices, _ = read_medical(f)
            if xs and slices.shape[1:] != xs[0].shape[1:]:
                raise DataError(
                    f"slices are {slices.shape[1]}x{slices.shape[2]}, earlier files "
                    f"{xs[0].shape[1]}x{xs[0].shape[2]}; all slices of a dataset must share a size",
                    f,
                )
            xs.append(slices)
            labels.append(np.full(len(slices), k, dtype=np.int64))
    meta = {"name": root.name, "path": str(root), "format": "medical"}
    return ArrayDataset(
        np.concatenate(xs), np.concatenate(labels), [c.name for c in classes], meta=meta
    )
