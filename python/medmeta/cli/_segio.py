"""Writing predicted label maps (torch-free): one PNG per 2-D image, one NIfTI label map per
volume (on the volume's own voxel grid, orientation and affine), each written atomically."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import numpy as np

from medmeta._files import atomic_write_bytes
from medmeta.cli._segfiles import is_nifti, stem
from medmeta.data import DataError

__all__ = ["mask_png_bytes", "output_name", "upsample_labels", "write_nifti_labels"]


def output_name(source: str, taken: set[str]) -> str:
    """A file stem for the mask of ``source`` (a file path, or ``name[i]`` for the i-th image
    of a dataset), unique among ``taken`` (which it joins)."""
    base = stem(Path(source)) if not source.endswith("]") else re.sub(r"\[(\d+)\]$", r"_\1",
                                                                      Path(source).name)  # fmt: skip
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "image"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def upsample_labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map ``[H, W]`` int64 at ``size`` from logits ``[K, h, w]`` at the model's size:
    the logits are resized (bilinear with half-pixel centres when enlarging, as torch's
    ``align_corners=False``; area when shrinking), then the argmax is taken."""
    from medmeta.edge.resize import resize_images

    return resize_images(np.asarray(logits, np.float32), size).argmax(0).astype(np.int64)


def mask_png_bytes(labels: np.ndarray, classes: int, visible: bool) -> bytes:
    """A PNG of the label map ``[H, W]``: class ids (8-bit, 16-bit beyond 255 classes) or, with
    ``visible``, ids spread over 0..255 (``k * (255 // N)``, so one class is 0/255)."""
    from PIL import Image

    a = np.asarray(labels, dtype=np.int64)
    if visible:
        a = a * (255 // max(1, classes - 1))
    arr = a.astype(np.uint8) if a.max(initial=0) <= 255 else a.astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def write_nifti_labels(source: Path, slices: np.ndarray, out: Path) -> Path:
    """Write the label map of the NIfTI volume ``source`` to ``out`` (``.nii`` or
    ``.nii.gz``): ``slices [Z, X, Y]`` are its axial slices in canonical RAS+ order
    (:func:`medmeta.data.nifti_slices`), put back on the source's own grid and orientation,
    with its affine (uint8, uint16 beyond 255 classes)."""
    import nibabel as nib

    image = nib.load(str(source))
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3:
        raise DataError(f"expected a 3-D volume for a NIfTI label map, got shape {shape}", source)
    ornt = nib.orientations.io_orientation(image.affine)
    canonical = np.moveaxis(np.asarray(slices), 0, 2)  # [X, Y, Z] in RAS+
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    data = nib.orientations.apply_orientation(canonical, back)
    if data.shape != shape:
        raise DataError(f"label map of shape {data.shape} does not fit the volume {shape}", source)
    dtype = np.uint8 if int(np.max(data, initial=0)) <= 255 else np.uint16
    header = image.header.copy()
    header.set_data_dtype(dtype)
    labels = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), image.affine, header)
    labels.header.set_slope_inter(1, 0)
    raw = labels.to_bytes()
    if is_nifti(out) and out.name.lower().endswith(".gz"):
        raw = gzip.compress(raw, mtime=0)
    return atomic_write_bytes(out, raw)
