"""Fuzz the ``.npz`` reader (:func:`medmeta.data.formats.npz.read_npz` / ``load_npz``):
zip container, ``.npy`` headers, MedMNIST / flat / segmentation layouts.

Seeds: the first few examples of every embedded data set (flat, MedMNIST and segmentation
layouts), stored and deflated."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, main

_KEEP = 3  # examples kept per seed: small seeds mutate fast


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.npz import load_npz, read_npz

    path = fresh(scratch, ("input.npz", data)) / "input.npz"
    return [
        (lambda: read_npz(path, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_npz(path, max_bytes=MAX_BYTES), (DataError,)),
    ]


def _slice(arrays: dict, n: int) -> dict:
    """The first ``n`` rows of the per-example arrays; short 1-D arrays (names) as they are."""
    count = len(arrays["labels"]) if "labels" in arrays else None
    out = {}
    for key, arr in arrays.items():
        per_example = count is not None and arr.ndim >= 1 and len(arr) == count
        out[key] = arr[:n] if per_example or key in ("images", "masks", "X") else arr[:16]
        if out[key].ndim == 2 and key not in ("images", "masks"):
            out[key] = out[key][:, :40]  # expression profiles, assay tables: a few columns
    return out


def _seeds() -> dict[str, bytes]:
    import numpy as np

    from medmeta.data.formats.npz import read_npz

    seeds: dict[str, bytes] = {}
    for path in sorted(DATASETS.glob("*.npz")):
        arrays = _slice(read_npz(path), _KEEP)
        for save in (np.savez, np.savez_compressed):
            buf = io.BytesIO()
            save(buf, **arrays)
            seeds[f"{path.stem}-{save.__name__}.npz"] = buf.getvalue()
    blood = _slice(read_npz(DATASETS / "pbc_blood.npz"), 4)
    buf = io.BytesIO()
    np.savez(buf, train_images=blood["images"][:2], train_labels=blood["labels"][:2, None],
             val_images=blood["images"][2:], val_labels=blood["labels"][2:, None],
             class_names=blood["class_names"])  # fmt: skip
    seeds["medmnist-layout.npz"] = buf.getvalue()
    return seeds


HARNESS = Harness("npz", _calls, _seeds, ("medmeta.data.formats.npz",),
                  ("medmeta", "zipfile"))  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
