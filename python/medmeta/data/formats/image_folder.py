"""Folders of images, one sub-folder per class (PNG, JPEG, TIFF, BMP; 8/16-bit; gray/RGB).

``root/<class name>/<image file>``: classes are the sub-folder names in sorted order. PNG, JPEG
and BMP are decoded with Pillow, TIFF with tifffile (which also reads 16-bit RGB and float
TIFFs). Each image's dimensions are read from its header and checked against ``max_pixels``
before it is decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medmeta.edge.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, pil_image_module, read_image

from ..dataset import ArrayDataset
from ..errors import DataError, OnError, SkippedFile, check_on_error, report_skipped

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "load_image_folder", "read_image"]

logger = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _as_float(arr: np.ndarray, scale: bool) -> np.ndarray:
    out = arr.astype(np.float32)
    if scale and arr.dtype.kind == "u":
        out /= np.float32(np.iinfo(arr.dtype).max)
    return out


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float32 ``[H, W]`` or ``[H, W, C]`` image (antialiased bilinear, Pillow)."""
    image_mod = pil_image_module()
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    planes = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack(
        [
            np.asarray(
                image_mod.fromarray(np.ascontiguousarray(planes[..., c])).resize(
                    (w, h), image_mod.Resampling.BILINEAR
                )
            )
            for c in range(planes.shape[-1])
        ],
        axis=-1,
    )
    return out[..., 0] if arr.ndim == 2 else out


def _kind(entry: os.DirEntry) -> str:
    """``"dir"``, ``"file"`` or ``"broken"`` (a link that loops or leads nowhere, an entry
    that cannot be stat-ed): symlinks are followed once, never walked into recursively."""
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "broken"
    except OSError:  # ELOOP (a symlink loop), EACCES, ...
        return "broken"


def _scan(folder: str) -> dict[str, str]:
    """``{name: kind}`` of the entries of ``folder`` (see :func:`_kind`)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name: _kind(e) for e in entries}
    except OSError as err:
        raise DataError(f"cannot list the folder ({err.strerror or err})", folder) from err


def _list_classes(root: str, class_names: Sequence[str] | None) -> list[str]:
    if not os.path.isdir(root):
        raise DataError(
            "image folder not found (expected a directory with one sub-folder per class)", root
        )
    found = sorted(n for n, kind in _scan(root).items() if kind == "dir" and not n.startswith("."))
    if not found:
        raise DataError("no class sub-folders found (expected root/<class>/<image>)", root)
    if class_names is None:
        return found
    missing = [c for c in class_names if c not in found]
    if missing:
        raise DataError(f"class folders {missing} not found; sub-folders are {found}", root)
    return list(class_names)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    scale: bool = True,
    class_names: Sequence[str] | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    on_error: OnError = "raise",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ArrayDataset:
    """Load ``root/<class>/<image>`` into an :class:`ArrayDataset`.

    Args:
        root: folder with one sub-folder per class.
        size: ``(H, W)`` (or one int) to resize every image to; by default all images must have
            the same size, and a mismatch raises :class:`DataError` naming the file.
        channels: 1 (grayscale; colour images are converted with ITU-R 601 luma weights) or 3
            (grayscale images are repeated); by default all images must agree.
        scale: ``True`` (default): float32 output, unsigned 8/16-bit data divided by its maximum
            (255 or 65535) so mixed bit depths share a ``[0, 1]`` range. ``False``: the native
            dtype is kept and all images must share it.
        class_names: the class folders to load, in label order (default: all, sorted).
        extensions: file suffixes treated as images (case-insensitive); hidden files and other
            suffixes are ignored and listed in ``meta["ignored"]``.
        on_error: ``"raise"`` (default) or ``"skip"``: skip unreadable or mismatched files and
            report them in ``dataset.skipped`` and in a log warning.
        max_pixels: refuse images whose header claims more pixels than this.

    Returns:
        :class:`ArrayDataset` with ``x`` of shape ``[N, H, W]`` (one channel) or
        ``[N, H, W, 3]``, labels by folder, and ``extra["file"]`` the path of each example
        relative to ``root``.
    """
    check_on_error(on_error)
    root_s = os.fspath(root)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}", "channels")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"size must be a positive int or (H, W), got {size!r}", "size")
    exts = tuple(e.lower() for e in extensions)
    names = _list_classes(root_s, class_names)

    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    skipped: list[SkippedFile] = []
    ignored: list[str] = []
    first: dict[str, Any] = {}
    total = 0

    for label, cname in enumerate(names):
        cdir = os.path.join(root_s, cname)
        scanned = _scan(cdir)
        entries = sorted(n for n, kind in scanned.items() if kind != "dir")
        paths = []
        for fname in entries:
            if scanned[fname] == "broken":
                logger.warning("%s: a broken or looping link, not an image; ignored",
                               os.path.join(cdir, fname))  # fmt: skip
                ignored.append(os.path.join(cname, fname))
            elif fname.startswith(".") or not fname.lower().endswith(exts):
                ignored.append(os.path.join(cname, fname))
            else:
                paths.append(os.path.join(cdir, fname))
        if not paths:
            raise DataError(
                f"class folder {cname!r} contains no image files ({', '.join(exts)})", cdir
            )
        kept = 0
        for path in paths:
            total += 1
            try:
                img = _load_one(path, size, channels, scale, first, max_pixels)
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped.append(SkippedFile(path, err.problem))
                continue
            images.append(img)
            labels.append(label)
            files.append(os.path.relpath(path, root_s))
            kept += 1
        if kept == 0:
            raise DataError(
                f"every image of class {cname!r} was unreadable ({len(paths)} skipped)", cdir
            )
    if ignored:
        logger.info("ignored %d non-image or hidden files under %s", len(ignored), root_s)
    report_skipped(logger, skipped, total)
    x = np.stack(images)
    meta = {
        "name": os.path.basename(os.path.normpath(root_s)),
        "path": root_s,
        "format": "image_folder",
        "ignored": ignored,
    }
    return ArrayDataset(
        x,
        np.asarray(labels, dtype=np.int64),
        names,
        meta=meta,
        extra={"file": np.asarray(files)},
        skipped=skipped,
    )


def _load_one(
    path: str,
    size: tuple[int, int] | None,
    channels: int | None,
    scale: bool,
    first: dict[str, Any],
    max_pixels: int | None,
) -> np.ndarray:
    arr = read_image(path, max_pixels=max_pixels)
    native = arr.dtype
    c = 1 if arr.ndim == 2 else 3
    if channels is None:
        first.setdefault("channels", (c, path))
        c0, p0 = first["channels"]
        if c != c0:
            kind = {1: "grayscale", 3: "colour"}
            raise DataError(
                f"image is {kind[c]} but {os.path.basename(p0)!r} is {kind[c0]}; pass "
                "channels=1 or channels=3 to convert",
                path,
            )
    if not scale:
        first.setdefault("dtype", (native, path))
        d0, p0 = first["dtype"]
        if native != d0:
            raise DataError(
                f"pixel type {native} differs from {d0} of "
                f"{os.path.basename(p0)!r}; use scale=True to mix bit depths",
                path,
            )
    target = channels or c
    if target == c and size is None and not scale:
        out = arr
    else:
        out = _as_float(arr, scale)
        if target == 1 and c == 3:
            out = out @ _LUMA
        elif target == 3 and c == 1:
            out = np.repeat(out[..., None], 3, axis=-1)
        if size is not None:
            out = _resize(out, size)
        if not scale:
            if native.kind in "ui":
                info = np.iinfo(native)
                out = np.clip(np.rint(out), info.min, info.max)
            out = out.astype(native)
    hw = out.shape[:2]
    first.setdefault("size", (hw, path))
    hw0, p0 = first["size"]
    if hw != hw0:
        raise DataError(
            f"image is {hw[0]}x{hw[1]} (HxW) but {os.path.basename(p0)!r} is {hw0[0]}x{hw0[1]}; "
            "pass size=(H, W) to resize",
            path,
        )
    return out
