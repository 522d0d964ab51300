"""medmeta.data: read medical data as it is, validate it, and ship real datasets.

Formats (optional libraries are imported only when used; ``pip install medmeta[data]``):

* NPZ (MedMNIST and flat layouts): :func:`load_npz`, :func:`read_npz`
* image folders (PNG/JPEG/TIFF, 8/16-bit, gray/RGB): :func:`load_image_folder`,
  :func:`read_image`
* DICOM (files, multi-frame, series; HU, windows, hashed patient ids): :func:`read_dicom`,
  :func:`load_dicom_series`, :func:`load_dicom_folder`, :func:`patient_key`
* NIfTI (canonical orientation, slices/patches, label maps): :func:`read_nifti`,
  :func:`nifti_slices`, :func:`load_nifti_segmentation`, :func:`extract_patches`
* clinical tables (CSV/Parquet; encoding fitted on the support set): :func:`read_table`,
  :class:`ClinicalTable`, :class:`TableEncoder`
* gene expression (AnnData ``.h5ad``): :func:`load_h5ad`
* time series (arrays, CSV, windows around beats): :func:`timeseries_from_arrays`,
  :func:`load_timeseries_csv`, :func:`windows_around`, :func:`sliding_windows`; ECG beats
  around annotations from WFDB records or CSV files: :func:`load_wfdb_beats`,
  :func:`load_beat_csv`

Containers and checks: :class:`ArrayDataset`, :class:`SegmentationDataset`,
:func:`check_class_sizes`, :class:`DataError`. Embedded datasets: :func:`load`,
:func:`list_datasets`, :func:`dataset_info`. Torch transforms: :mod:`medmeta.data.transforms`.
Few-shot episodes: :class:`EpisodeSampler` (classification) and
:class:`SegmentationEpisodeSampler` (segmentation, PANet / SSL-ALPNet style).

Importing this package loads only numpy; torch is imported with :mod:`.transforms`.
"""

from __future__ import annotations

import importlib
from typing import Any

from medmeta.edge.windowing import WINDOW_PRESETS, apply_window

from .dataset import ArrayDataset, SegmentationDataset, check_class_sizes
from .errors import DataError, SkippedFile
from .registry import (
    CROSS_DOMAIN_DATASETS,
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_info,
    format_table,
    list_datasets,
    load,
)

_LAZY = {
    "load_npz": "formats.npz",
    "read_npz": "formats.npz",
    "load_image_folder": "formats.image_folder",
    "read_image": "formats.image_folder",
    "read_dicom": "formats.dicom",
    "load_dicom_series": "formats.dicom",
    "load_dicom_folder": "formats.dicom",
    "patient_key": "formats.dicom",
    "DicomImage": "formats.dicom",
    "DicomVolume": "formats.dicom",
    "read_nifti": "formats.nifti",
    "nifti_slices": "formats.nifti",
    "load_nifti_segmentation": "formats.nifti",
    "extract_patches": "formats.nifti",
    "volume_to_slices": "formats.nifti",
    "NiftiVolume": "formats.nifti",
    "read_table": "formats.table",
    "ClinicalTable": "formats.table",
    "TableEncoder": "formats.table",
    "load_h5ad": "formats.expression",
    "timeseries_from_arrays": "formats.timeseries",
    "load_timeseries_csv": "formats.timeseries",
    "windows_around": "formats.timeseries",
    "sliding_windows": "formats.timeseries",
    "load_wfdb_beats": "formats.wfdb_records",
    "load_beat_csv": "formats.beat_csv",
    "EpisodeBatch": "episodes",
    "EpisodeSampler": "episodes",
    "as_features": "episodes",
    "features_of": "episodes",
    "split_classes": "episodes",
    "SegmentationEpisodeBatch": "segmentation_episodes",
    "SegmentationEpisodeSampler": "segmentation_episodes",
    "SuperpixelEpisodeSampler": "superpixel_episodes",
}
_SUBMODULES = (
    "episodes",
    "segmentation_episodes",
    "transforms",
    "formats",
    "registry",
    "dataset",
    "errors",
)

__all__ = [
    "CROSS_DOMAIN_DATASETS",
    "DEFAULT_DATASET",
    "WINDOW_PRESETS",
    "ArrayDataset",
    "DataError",
    "DatasetInfo",
    "SegmentationDataset",
    "SkippedFile",
    "apply_window",
    "check_class_sizes",
    "dataset_info",
    "format_table",
    "list_datasets",
    "load",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
