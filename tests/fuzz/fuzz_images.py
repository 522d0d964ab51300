"""Fuzz the image readers: :func:`medmeta.edge.images.read_image` (PNG, JPEG, BMP with
Pillow; TIFF with tifffile) and :func:`medmeta.data.formats.image_folder.load_image_folder`.

Inputs starting with a TIFF signature are written as ``.tif``, the others as ``.png``
(Pillow recognises PNG, JPEG and BMP by content). Seeds: small crops of the embedded MRI,
X-ray and blood-cell images in every mode the readers handle (8/16-bit grey, RGB, RGBA,
palette, grey + alpha, JPEG, BMP, TIFF 8/16-bit, float and planar RGB)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_PIXELS, Call, Harness, fresh, main

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.image_folder import load_image_folder
    from medmeta.edge.images import read_image

    suffix = ".tif" if data[:4] in _TIFF_MAGIC else ".png"
    root = fresh(scratch, (f"cls/image{suffix}", data))
    path = root / "cls" / f"image{suffix}"
    return [
        (lambda: read_image(path, max_pixels=MAX_PIXELS), (DataError,)),
        (lambda: load_image_folder(root, size=(12, 12), channels=1, max_pixels=MAX_PIXELS),
         (DataError,)),
        (lambda: load_image_folder(root, scale=False, max_pixels=MAX_PIXELS), (DataError,)),
    ]  # fmt: skip


def _seeds() -> dict[str, bytes]:
    import numpy as np
    import tifffile
    from PIL import Image

    from medmeta.data.formats.npz import read_npz

    mri = read_npz(DATASETS / "brain_tumor_mri.npz", ["images"])["images"][0, 20:36, 20:36]
    blood = read_npz(DATASETS / "pbc_blood.npz", ["images"])["images"][0, 6:22, 6:22]
    grey16 = mri.astype(np.uint16) * 257
    images = {
        "grey8.png": Image.fromarray(mri),
        "grey16.png": Image.fromarray(grey16),
        "rgb.png": Image.fromarray(blood),
        "rgba.png": Image.fromarray(np.dstack([blood, mri])),
        "palette.png": Image.fromarray(blood).quantize(8),
        "grey-alpha.png": Image.fromarray(np.dstack([mri, mri])),
        "bilevel.png": Image.fromarray(mri > 100),
        "rgb.jpg": Image.fromarray(blood),
        "grey.bmp": Image.fromarray(mri),
    }
    seeds = {}
    for name, im in images.items():
        buf = io.BytesIO()
        im.save(buf, format={"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name.split(".")[1]])
        seeds[name] = buf.getvalue()
    tiffs = {
        "grey8.tif": mri,
        "grey16-be.tif": grey16.astype(">u2"),
        "rgb.tif": blood,
        "float.tif": mri.astype(np.float32) / 255,
        "planar.tif": np.moveaxis(blood, -1, 0),
    }
    for name, arr in tiffs.items():
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else None)
        seeds[name] = buf.getvalue()
    return seeds  # fmt: skip


HARNESS = Harness(
    "images",
    _calls,
    _seeds,
    ("medmeta.edge.images", "medmeta.data.formats.image_folder", "PIL.Image",
     "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.BmpImagePlugin", "tifffile"),
    ("medmeta", "PIL", "tifffile"),
)  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
