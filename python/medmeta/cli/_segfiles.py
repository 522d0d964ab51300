"""Folders of images with masks on the command line (torch-free): which file is an image,
which is its mask, and how label maps are read and checked.

Layouts (PNG, JPEG, TIFF, BMP; or NIfTI volumes with label maps, ``.nii`` / ``.nii.gz``):

* ``ROOT/images/<name>.<ext>`` with ``ROOT/masks/<name>.<ext>`` (``labels/`` also works;
  the mask may also be named ``<name>_mask.<ext>``);
* flat: ``ROOT/<name>.<ext>`` beside ``ROOT/<name>_mask.<ext>`` (or ``_label``, ``_labels``,
  ``_seg``, ``_gt``, ``_masks``);
* a folder of images without masks (unlabelled: self-supervised training, or query images).

2-D masks hold class ids ``0..N`` (0 = background) or, for one class, 0/255. Class names
come from ``--class-names`` (names, or a text file with one name per line), else from a
``classes.txt`` / ``class_names.txt`` in ROOT, else ``class_1 .. class_N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmeta.data import DataError
from medmeta.edge.images import IMAGE_EXTENSIONS

__all__ = [
    "LAYOUT_HELP",
    "MASK_SUFFIXES",
    "class_names_from",
    "find_pairs",
    "is_nifti",
    "label_map",
    "stem",
]

IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "label", "labelsTr", "segmentations")
MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_seg", "_gt")
NAMES_FILES = ("classes.txt", "class_names.txt")
NIFTI = (".nii", ".nii.gz")

LAYOUT_HELP = (
    "a folder ROOT/images/* with ROOT/masks/* (same names), or ROOT/<name>.png beside "
    "ROOT/<name>_mask.png (PNG/JPEG/TIFF, or NIfTI volumes with label maps)"
)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI)


def stem(path: Path) -> str:
    """The file name without its extension (``.nii.gz`` counts as one)."""
    name = path.name
    for ext in NIFTI:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _is_input(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and (
        path.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(path)
    )  # fmt: skip


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_input(p))


def _mask_stem(s: str) -> str | None:
    """``name`` for a mask stem ``name_mask`` (any of :data:`MASK_SUFFIXES`), else None."""
    return next((s[: -len(x)] for x in MASK_SUFFIXES if s.endswith(x) and len(s) > len(x)), None)


def _subfolder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _masks_of_file(path: Path) -> dict[str, Path]:
    """``{stem: mask}`` for one image file: ``<name>_mask.<ext>`` beside it, or
    ``../masks/<name>.<ext>`` when it lies in an ``images/`` folder."""
    found = [p for p in _files(path.parent) if _mask_stem(stem(p)) == stem(path)]
    mask_dir = _subfolder(path.parent.parent, MASK_DIRS) if path.parent.name in IMAGE_DIRS else None
    if mask_dir is not None:
        found += [p for p in _files(mask_dir) if stem(path) in (stem(p), _mask_stem(stem(p)))]
    return {stem(path): found[0]} if found else {}


def find_pairs(spec: str | Path) -> list[tuple[Path, Path | None]]:
    """``[(image file, its mask file or None)]`` of a folder or one image file (see the
    module docstring). Every image has a mask, or none has; a mask without its image and an
    image without a mask among masked ones are errors naming the file."""
    path = Path(spec)
    if path.is_file():
        images, masks = [path], _masks_of_file(path)
    elif path.is_dir():
        root = path
        image_dir, mask_dir = _subfolder(root, IMAGE_DIRS), _subfolder(root, MASK_DIRS)
        if image_dir is not None:
            images = _files(image_dir)
            found = _files(mask_dir) if mask_dir is not None else []
            masks = {_mask_stem(stem(m)) or stem(m): m for m in found}
        else:
            found = _files(root)
            images = [p for p in found if _mask_stem(stem(p)) is None]
            masks = {_mask_stem(stem(m)): m for m in found if _mask_stem(stem(m)) is not None}
    else:
        raise DataError("no such file or folder", spec)
    if not images:
        raise DataError(f"no images found; expected {LAYOUT_HELP}", spec)
    by_stem = {stem(p): p for p in images}
    orphans = [m for s, m in masks.items() if s not in by_stem]
    if orphans and path.is_dir():
        raise DataError(f"mask without an image (expected an image named {orphans[0].name} "
                        f"or {_mask_stem(stem(orphans[0])) or stem(orphans[0])}.<ext>)",
                        orphans[0])  # fmt: skip
    pairs = [(p, masks.get(stem(p))) for p in images]
    missing = [p for p, m in pairs if m is None]
    if masks and missing:
        raise DataError(
            f"image without a mask (other images have one; expected "
            f"{stem(missing[0])}_mask{missing[0].suffix} or masks/{missing[0].name})",
            missing[0],
        )
    kinds = {is_nifti(p) for p, _ in pairs}
    if len(kinds) > 1:
        raise DataError("mixes NIfTI volumes and 2-D images; give one kind", spec)
    return pairs


def label_map(raw: np.ndarray, path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """A 2-D mask read from ``path`` as int64 class ids ``[H, W]``: one channel (a gray
    PNG, or an RGB one with equal channels), 0/255 binary masks become 0/1; its size must be
    ``image_size`` (its image's ``(H, W)``)."""
    arr = np.asarray(raw)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if not (arr == arr[..., :1]).all():
            raise DataError(
                "colour mask; expected a single-channel label map (0 = background, 1..N) or a "
                "0/255 binary mask",
                path,
            )
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.rint(arr)):
            raise DataError("mask has non-integer values; expected class ids 0..N", path)
        arr = arr.astype(np.int64)
    if tuple(arr.shape) != tuple(image_size):
        h, w = arr.shape[:2]
        raise DataError(
            f"mask is {h}x{w} (HxW) but its image is {image_size[0]}x{image_size[1]}; a mask "
            "must have its image's size",
            path,
        )
    values = np.unique(arr)
    if len(values) and values.min() < 0:
        raise DataError(f"mask has negative values ({int(values.min())}); expected 0..N", path)
    if 255 in values and set(values.tolist()) <= {0, 255}:
        arr = arr == 255
    return arr.astype(np.int64)


def _names_from_text(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def class_names_from(flag: str | None, root: Path | None, max_label: int, what: str) -> list[str]:
    """The names of labels ``0..K-1`` (``"background"`` first): ``flag`` (comma-separated
    names or a text file, one name per line, the background line optional), else a
    ``classes.txt`` in ``root``, else ``class_1..class_N`` for the largest label found.
    Labels beyond the names are an error naming ``what`` (the file holding the label)."""
    names: list[str] | None = None
    if flag:
        file = Path(flag)
        names = _names_from_text(file.read_text("utf-8")) if file.is_file() else [
            n.strip() for n in flag.split(",") if n.strip()
        ]  # fmt: skip
        source = "--class-names"
    elif root is not None:
        file = next((root / n for n in NAMES_FILES if (root / n).is_file()), None)
        if file is not None:
            names, source = _names_from_text(file.read_text("utf-8")), str(file)
    if names is None:
        return ["background", *(f"class_{k}" for k in range(1, max_label + 1))]
    if not names or names[0].lower() != "background":
        names = ["background", *names]
    if len(set(names)) != len(names):
        raise DataError(f"class names must be unique, got {names}", source)
    if max_label >= len(names):
        raise DataError(
            f"label {max_label} is outside the class list 0..{len(names) - 1} "
            f"({', '.join(names)}; from {source}); expected mask values 0..{len(names) - 1}, "
            "or 0/255 for one class",
            what,
        )
    return names
