"""Decoding one image file (PNG, JPEG, BMP with Pillow; TIFF with tifffile) to a numpy array,
with its size checked from the header before anything is decoded. Shared by the edge
runtime's ``predict`` and :mod:`medmeta.data`'s image folders."""

from __future__ import annotations

import os
import struct
import warnings
from typing import Any

import numpy as np

from medmeta.edge.errors import DataError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "pil_image_module", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")
#: Default cap on the pixel count of one image (about 11,585 x 11,585).
DEFAULT_MAX_PIXELS = 2**27
#: A TIFF's page chain is walked before tifffile reads it: more pages than this (one image
#: per file is expected) or a chain that loops back is refused.
MAX_TIFF_PAGES = 1024


def _missing(package: str, pip_name: str, error: ImportError) -> ImportError:
    err = ImportError(
        f"{package} is needed to read this image but is not installed: pip install {pip_name}"
    )
    err.__cause__ = error
    return err


def pil_image_module() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise _missing("Pillow", "pillow", err) from err
    return Image


def _check_pixels(h: int, w: int, max_pixels: int | None, path: str) -> None:
    if h <= 0 or w <= 0:
        raise DataError(f"image header claims an empty size {w}x{h}", path)
    if max_pixels is not None and h * w > max_pixels:
        raise DataError(
            f"image header claims {w}x{h} = {w * h:,} pixels, above the limit of "
            f"{max_pixels:,} (max_pixels=); refused before decoding",
            path,
        )


def _tiff_pages(path: str) -> int:
    """The number of pages (IFDs) of a TIFF file, found by walking its chain of IFD offsets
    (classic and BigTIFF). A chain that loops back on itself (tifffile would follow it
    forever) or holds more than :data:`MAX_TIFF_PAGES` pages raises :class:`DataError`; the
    walk stops where an offset points outside the file, as tifffile's does."""
    with open(path, "rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        version = struct.unpack(order + "H", head[2:4])[0] if order and len(head) >= 8 else 0
        if version not in (42, 43) or (version == 43 and len(head) < 16):
            raise DataError("not a TIFF file (no II*/MM* header)", path)
        count, entry, pointer = ("H", 12, "I") if version == 42 else ("Q", 20, "Q")
        offset = struct.unpack(order + pointer, head[4:8] if version == 42 else head[8:16])[0]
        size, seen = os.fstat(f.fileno()).st_size, set()
        while 8 <= offset < size:
            if offset in seen:
                raise DataError(f"the TIFF's page chain loops back to offset {offset}", path)
            seen.add(offset)
            if len(seen) > MAX_TIFF_PAGES:
                raise DataError(
                    f"TIFF holds more than {MAX_TIFF_PAGES} pages; expected one image per file",
                    path,
                )
            f.seek(offset)
            raw = f.read(struct.calcsize(count))
            if len(raw) < struct.calcsize(count):
                break
            f.seek(offset + len(raw) + struct.unpack(order + count, raw)[0] * entry)
            raw = f.read(struct.calcsize(pointer))
            if len(raw) < struct.calcsize(pointer):
                break
            offset = struct.unpack(order + pointer, raw)[0]
    return len(seen)


def _read_tiff(path: str, max_pixels: int | None) -> np.ndarray:
    try:
        import tifffile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise _missing("tifffile", "tifffile", err) from err
    _tiff_pages(path)
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise DataError("TIFF file holds no image", path)
            series = tf.series[0]
            shape = tuple(int(s) for s in series.shape)
            if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
                h, w = shape[1], shape[2]  # planar RGB
            elif len(shape) >= 2:
                h, w = shape[0], shape[1]
            else:
                raise DataError(
                    f"TIFF image has shape {shape}; expected 2-D or 2-D x channels", path
                )
            _check_pixels(h, w, max_pixels, path)
            if len(shape) > 3 or (
                len(shape) == 3 and shape[-1] not in (1, 3, 4) and shape[0] not in (3, 4)
            ):
                raise DataError(
                    f"TIFF holds a stack of shape {shape}; expected one 2-D grayscale or RGB "
                    "image per file",
                    path,
                )
            arr = series.asarray()
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"cannot decode TIFF ({type(err).__name__}: {err}); the file is corrupt or truncated",
            path,
        ) from err
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_pil(path: str, max_pixels: int | None) -> np.ndarray:
    image_mod = pil_image_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", image_mod.DecompressionBombWarning)
            im = image_mod.open(path)
    except image_mod.DecompressionBombError as err:
        raise DataError(f"image header claims an absurd size ({err}); refused", path) from err
    except Exception as err:
        raise DataError(f"not a readable image ({type(err).__name__}: {err})", path) from err
    with im:
        w, h = im.size
        _check_pixels(h, w, max_pixels, path)
        try:
            mode = im.mode
            if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB" if mode != "1" else "L")
                mode = im.mode
            if mode == "LA":
                im = im.getchannel("L")
                mode = "L"
            arr = np.asarray(im)
        except Exception as err:
            raise DataError(
                f"cannot decode image ({type(err).__name__}: {err}); the file is "
                "corrupt or truncated",
                path,
            ) from err
    if mode == "RGBA":
        arr = arr[..., :3]
    if mode == "I":  # 16-bit images that Pillow widened to int32
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(
                f"32-bit integer image with values {arr.min()}..{arr.max()}; "
                "expected 8- or 16-bit data",
                path,
            )
        arr = arr.astype(np.uint16)
    return arr


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one image file to a numpy array in its native dtype.

    Returns ``[H, W]`` (grayscale) or ``[H, W, 3]`` (colour; alpha dropped) as uint8, uint16
    or float32. Raises :class:`DataError` naming the file if it is missing, corrupt, truncated
    or claims more than ``max_pixels`` pixels.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError("file not found", p)
    arr = _read_tiff(p, max_pixels) if p.lower().endswith(_TIFF) else _read_pil(p, max_pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise DataError(f"decoded image has shape {arr.shape}; expected [H, W] or [H, W, 3]", p)
    if arr.dtype.kind not in "uif":
        raise DataError(f"unsupported pixel type {arr.dtype}", p)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
