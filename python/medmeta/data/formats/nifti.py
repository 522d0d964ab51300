"""NIfTI volumes (nibabel): canonical orientation, slices, patches and label maps.

The header's shape and data type are checked against ``max_bytes`` (and, for uncompressed
``.nii``, against the file size) before the voxel data are read through nibabel's lazy
``dataobj``, so a header claiming a huge volume or a truncated file fails fast with a
:class:`~medmeta.data.errors.DataError` naming the file.

Canonical orientation is RAS+ (as ``nibabel.as_closest_canonical``): increasing index along
array axes 0, 1, 2 moves towards the patient's Right, Anterior and Superior. Axial slices are
then ``axis=2``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import SegmentationDataset
from ..errors import (
    DEFAULT_MAX_BYTES,
    DataError,
    OnError,
    SkippedFile,
    check_on_error,
    check_size,
    missing_extra,
    report_skipped,
)

__all__ = [
    "NiftiVolume",
    "extract_patches",
    "load_nifti_segmentation",
    "nifti_slices",
    "read_nifti",
    "volume_to_slices",
]

logger = logging.getLogger(__name__)


def _nib() -> Any:
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("nibabel", err) from err
    return nibabel


@dataclass(frozen=True, repr=False)
class NiftiVolume:
    """A NIfTI image in memory.

    Attributes:
        data: ``[X, Y, Z]`` or ``[X, Y, Z, T]`` (float32 by default, scaled by the header's
            ``scl_slope``/``scl_inter``), in canonical RAS+ order when ``canonical``.
        affine: ``[4, 4]`` voxel-to-world (mm) matrix matching ``data``.
        zooms: voxel sizes (mm, then the time step for 4-D).
        axcodes: orientation codes of the array axes, e.g. ``("R", "A", "S")``.
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, ...]
    axcodes: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"NiftiVolume(data={self.data.dtype}{list(self.data.shape)}, "
            f"axcodes={''.join(self.axcodes)}, zooms={self.zooms})"
        )


def _load_image(path: str, max_bytes: int | None) -> Any:
    nib = _nib()
    if not os.path.isfile(path):
        raise DataError("file not found", path)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            img = nib.load(path)
    except Exception as err:
        raise DataError(f"not a readable NIfTI file ({type(err).__name__}: {err})", path) from err
    if not hasattr(img, "dataobj") or not hasattr(img, "header"):
        raise DataError(f"not an image ({type(img).__name__})", path)
    shape = tuple(int(s) for s in img.header.get_data_shape())
    if not shape or any(s <= 0 for s in shape):
        raise DataError(f"header has an empty or invalid shape {shape}", path)
    itemsize = img.header.get_data_dtype().itemsize
    n = int(np.prod(shape, dtype=object))
    check_size(n * max(itemsize, 4), max_bytes, path, f"a volume of shape {shape}")
    _check_data_size(img, path, shape, n * itemsize)
    return img


#: Deflate inflates one byte to at most 1032: a ``.gz`` file of ``S`` bytes holds at most
#: ``1032 * S`` bytes of voxels, whatever its header claims.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20


def _check_data_size(img: Any, path: str, shape: tuple[int, ...], nbytes: int) -> None:
    """Refuse a header whose voxels (``nbytes`` after the data offset) cannot be in the data
    file, before anything of that size is allocated: checked against the file size (plain
    files), the deflate ratio bound then the inflated length counted in 1 MiB chunks
    (compressed files; no more than one chunk is held at a time)."""
    holder = getattr(img, "file_map", {}).get("image")
    data_file = getattr(holder, "filename", None) or path
    offset = int(img.header.get_data_offset()) if hasattr(img.header, "get_data_offset") else 0
    need, have = offset + nbytes, os.path.getsize(data_file)
    compressed = data_file.lower().endswith((".gz", ".mgz", ".bz2", ".zst"))
    if compressed and data_file.lower().endswith((".gz", ".mgz")):
        have = min(have * _DEFLATE_MAX_RATIO, need)
    if compressed and have >= need:
        have = _inflated_length(data_file, need)
    if have < need:
        raise DataError(
            f"the data file holds {'at most ' if compressed else ''}{have:,} bytes but the "
            f"header (shape {shape}, {nbytes:,} bytes of voxels after {offset} bytes) implies "
            f"{need:,}: the file is truncated or the header wrong",
            path,
        )


def _inflated_length(path: str, limit: int) -> int:
    """How many bytes the compressed file ``path`` inflates to, counting up to ``limit``."""
    try:
        with _nib().openers.ImageOpener(path, "rb") as f:
            total = 0
            while total < limit:
                chunk = f.read(min(_CHUNK, limit - total))
                if not chunk:
                    break
                total += len(chunk)
    except Exception as err:  # gzip/bz2/zstd errors on a corrupt stream
        raise DataError(f"the compressed data cannot be read ({type(err).__name__}: {err}); "
                        "the file is corrupt or truncated", path) from err  # fmt: skip
    return total


def _get_data(img: Any, path: str, dtype: Any) -> np.ndarray:
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            data = np.asarray(img.dataobj)
    except Exception as err:
        raise DataError(
            f"cannot read the voxel data ({type(err).__name__}: {err}); the file is "
            "corrupt or truncated",
            path,
        ) from err
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError("voxel data contain NaN or infinity", path)
    return data


def read_nifti(
    path: str | os.PathLike[str],
    *,
    canonical: bool = True,
    dtype: Any = np.float32,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> NiftiVolume:
    """Read a NIfTI-1/2 image (``.nii`` or ``.nii.gz``).

    Args:
        path: the file.
        canonical: reorient to the closest canonical RAS+ orientation.
        dtype: output dtype (``None`` keeps the stored one, scaled if the header asks).
        max_bytes: refuse headers whose shape implies more bytes than this.
    """
    nib = _nib()
    p = os.fspath(path)
    img = _load_image(p, max_bytes)
    data = _get_data(img, p, dtype)
    affine = np.asarray(img.affine, dtype=np.float64)
    try:
        if canonical:
            ornt = nib.orientations.io_orientation(affine)
            data = nib.orientations.apply_orientation(data, ornt)
            affine = affine @ nib.orientations.inv_ornt_aff(ornt, img.header.get_data_shape()[:3])
        axcodes = tuple(nib.orientations.aff2axcodes(affine))
    except (ValueError, np.linalg.LinAlgError, nib.orientations.OrientationError) as err:
        raise DataError(
            f"cannot orient the volume: the header's affine {affine.tolist()} is degenerate "
            f"({type(err).__name__}: {err})",
            p,
        ) from err
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return NiftiVolume(np.ascontiguousarray(data), affine, zooms, axcodes)


def volume_to_slices(volume: np.ndarray, axis: int = 2) -> np.ndarray:
    """``[X, Y, Z]`` -> ``[n_slices, H, W]`` along ``axis`` (2 = axial for RAS+ data).

    A 4-D ``[X, Y, Z, T]`` input gives the slices of every frame, frame by frame.
    """
    if volume.ndim == 4:
        return np.concatenate(
            [volume_to_slices(volume[..., t], axis) for t in range(volume.shape[3])]
        )
    if volume.ndim != 3:
        raise DataError(f"expected a 3-D or 4-D volume, got shape {volume.shape}", "volume")
    if axis not in (0, 1, 2):
        raise DataError(f"axis must be 0, 1 or 2, got {axis}", "axis")
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def extract_patches(
    array: np.ndarray, patch_size: Sequence[int], stride: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Regular patches over the trailing ``len(patch_size)`` axes.

    Args:
        array: ``[*batch, *spatial]``; e.g. ``[Z, H, W]`` slices with a 2-D ``patch_size`` or a
            ``[X, Y, Z]`` volume with a 3-D one.
        patch_size: patch extent per trailing axis.
        stride: step per axis (default: ``patch_size``, non-overlapping). Patches that would
            cross the border are not produced.

    Returns:
        ``(patches [P, *patch_size], origins [P, len(batch) + len(patch_size)])`` where each
        origin row holds the batch index/indices then the patch corner.
    """
    ps = tuple(int(s) for s in patch_size)
    st = ps if stride is None else tuple(int(s) for s in stride)
    k = len(ps)
    if k == 0 or k > array.ndim or len(st) != k or min(ps) < 1 or min(st) < 1:
        raise DataError(
            f"invalid patch_size {ps} / stride {st} for an array of shape {array.shape}",
            "patch_size",
        )
    spatial = array.shape[array.ndim - k :]
    if any(p > s for p, s in zip(ps, spatial, strict=True)):
        raise DataError(f"patch_size {ps} is larger than the spatial shape {spatial}", "patch_size")
    windows = np.lib.stride_tricks.sliding_window_view(
        array, ps, axis=tuple(range(array.ndim - k, array.ndim))
    )
    sl = (slice(None),) * (array.ndim - k) + tuple(slice(None, None, s) for s in st)
    windows = windows[sl]
    grid = windows.shape[: array.ndim]
    patches = np.ascontiguousarray(windows.reshape(-1, *ps))
    idx = np.stack(np.unravel_index(np.arange(patches.shape[0]), grid), axis=1)
    idx[:, array.ndim - k :] *= np.asarray(st)
    return patches, idx


def nifti_slices(
    path: str | os.PathLike[str],
    *,
    axis: int = 2,
    canonical: bool = True,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Slices ``[n, H, W]`` float32 of a 3-D or 4-D NIfTI file (see :func:`volume_to_slices`)."""
    return volume_to_slices(read_nifti(path, canonical=canonical, max_bytes=max_bytes).data, axis)


def _labels_as_int(vol: NiftiVolume, path: str) -> np.ndarray:
    data = vol.data
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            bad = int(np.count_nonzero(rounded != data))
            raise DataError(
                f"label map has {bad} non-integer voxels; expected integer class ids", path
            )
        data = rounded
    if data.size and data.min() < 0:
        raise DataError(f"label map has negative values (min {data.min()})", path)
    if data.size and data.max() > 65535:
        raise DataError(f"label map has values up to {data.max()}; expected class ids", path)
    return data.astype(np.int64)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def load_nifti_segmentation(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    class_names: Sequence[str] | None = None,
    axis: int = 2,
    patch_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    skip_empty: bool = False,
    canonical: bool = True,
    on_error: OnError = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> SegmentationDataset:
    """Volumes and their label maps -> 2-D slices (or patches) with masks.

    Args:
        images: one NIfTI file or a list of them (3-D).
        labels: the matching label maps (same grid: shape and affine), integer class ids.
        class_names: names of the label values ``0..K-1`` (0 = background); by default
            ``["background", "1", ..., str(max label)]``. Values beyond ``K-1`` raise.
        axis: slicing axis in canonical RAS+ space (2 = axial).
        patch_size: ``(h, w)`` to cut each slice into patches, or ``(d, h, w)`` for 3-D
            patches of the volume (masks are cut identically).
        stride: patch stride (default: ``patch_size``).
        skip_empty: drop slices/patches whose mask is all background.
        canonical: reorient to RAS+ first.
        on_error: ``"skip"`` skips unreadable pairs and reports them in ``dataset.skipped``.
        max_bytes: per-volume size limit checked on the header.

    Returns:
        :class:`SegmentationDataset` with images float32 ``[N, H, W]`` (or ``[N, d, h, w]``),
        masks int64 of the same shape, and ``groups`` the image file stem of each example.
    """
    check_on_error(on_error)
    img_list = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    lab_list = [labels] if isinstance(labels, (str, os.PathLike)) else list(labels)
    if len(img_list) != len(lab_list):
        raise DataError(f"{len(img_list)} images but {len(lab_list)} label maps", "labels")
    if not img_list:
        raise DataError("no volumes given", "images")
    xs: list[np.ndarray] = []
    ms: list[np.ndarray] = []
    groups: list[str] = []
    skipped: list[SkippedFile] = []
    for ip, lp in zip(img_list, lab_list, strict=True):
        ip, lp = os.fspath(ip), os.fspath(lp)
        try:
            vol = read_nifti(ip, canonical=canonical, max_bytes=max_bytes)
            lab = read_nifti(lp, canonical=canonical, dtype=None, max_bytes=max_bytes)
            if vol.data.ndim != 3:
                raise DataError(f"expected a 3-D volume, got shape {vol.data.shape}", ip)
            if lab.data.shape != vol.data.shape:
                raise DataError(
                    f"label map shape {lab.data.shape} does not match the image "
                    f"shape {vol.data.shape} of {os.path.basename(ip)!r}",
                    lp,
                )
            if not np.allclose(lab.affine, vol.affine, atol=1e-3):
                raise DataError(
                    f"label map affine (voxel grid) differs from that of {os.path.basename(ip)!r}",
                    lp,
                )
            mask = _labels_as_int(lab, lp)
            if class_names is not None and mask.size and mask.max() >= len(class_names):
                raise DataError(
                    f"label value {int(mask.max())} has no class name "
                    f"({len(class_names)} names given)",
                    lp,
                )
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(ip, err.problem))
            continue
        if patch_size is not None and len(patch_size) == 3:
            x, _ = extract_patches(vol.data, patch_size, stride)
            m, _ = extract_patches(mask, patch_size, stride)
        else:
            x = volume_to_slices(vol.data, axis)
            m = volume_to_slices(mask, axis)
            if patch_size is not None:
                x, _ = extract_patches(x, patch_size, stride)
                m, _ = extract_patches(m, patch_size, stride)
        if skip_empty:
            keep = m.reshape(len(m), -1).any(axis=1)
            x, m = x[keep], m[keep]
        xs.append(x)
        ms.append(m)
        groups.extend([_stem(ip)] * len(x))
    report_skipped(logger, skipped, len(img_list))
    if not xs:
        raise DataError(f"no readable volume among {len(img_list)}", "images")
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(
            f"volumes give examples of different shapes {sorted(shapes)}; use "
            "patch_size= for a common size",
            "images",
        )
    x_all, m_all = np.concatenate(xs), np.concatenate(ms)
    if class_names is None:
        top = int(m_all.max()) if m_all.size else 0
        class_names = ["background", *[str(k) for k in range(1, top + 1)]]
    return SegmentationDataset(
        x_all,
        m_all,
        class_names,
        np.asarray(groups),
        meta={
            "name": _stem(os.fspath(img_list[0])),
            "format": "nifti",
            "axis": axis,
            "canonical": canonical,
        },
        skipped=skipped,
    )
