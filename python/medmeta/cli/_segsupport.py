"""The support set of a segmentation task (torch-free, so the edge path of ``medmeta
predict`` can enrol with it): labelled images with the chosen classes relabelled ``1..N``,
checked, and the images that form the support."""

from __future__ import annotations

import numpy as np

from medmeta.cli import _segdata as sd
from medmeta.data import DataError

__all__ = ["choose_support", "load_support"]


def _labels_in(data: sd.SegData, rows: slice | np.ndarray, ids: list[int]) -> list[int]:
    counts = sum(np.bincount(np.asarray(data.masks[i]).ravel(), minlength=len(data.class_names))
                 for i in np.arange(len(data))[rows])  # fmt: skip
    return [c for c in ids if counts[c] > 0]


def load_support(spec: str, classes: str | None, class_names: str | None) -> sd.SegData:
    """The labelled support data with the chosen classes relabelled ``1..N`` (the others
    background). A class without any pixel, or a volume without any chosen class, is an
    error naming the class and the file."""
    raw = sd.load_segdata(spec, class_names=class_names)
    if raw.masks is None:
        raise DataError("the support set needs masks (label maps) beside its images", spec)
    ids = sd.parse_seg_classes(raw, classes, "--classes")
    present = _labels_in(raw, slice(None), list(range(1, len(raw.class_names))))
    for c in ids or []:
        if c not in present:
            raise DataError(f"no pixel of class {raw.class_names[c]!r} (label {c}) in any "
                            f"support mask; labels present: {present or 'none'}", spec)  # fmt: skip
    ids = ids or present
    if not ids:
        raise DataError("every support mask is empty (background only); outline at least one "
                        "class", spec)  # fmt: skip
    for v in raw.volumes:
        if not _labels_in(raw, slice(v.start, v.start + v.count), ids):
            own = _labels_in(raw, slice(v.start, v.start + v.count),
                             list(range(1, len(raw.class_names))))  # fmt: skip
            names = [f"{raw.class_names[c]} (label {c})" for c in ids]
            raise DataError(f"the volume has no voxel of the requested class(es) "
                            f"{', '.join(names)}; its labels: {own or 'none'}", v.path)  # fmt: skip
    return sd.keep_classes(raw, ids, remap=True)


def choose_support(data: sd.SegData, shots: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(support rows, held-out rows)``: every image with foreground (``shots`` None; an
    empty 2-D mask is an error naming its file), or ``shots`` seeded images per class."""
    counts = data.pixel_counts()[:, 1:]
    empty = counts.sum(1) == 0
    if shots is None:
        if empty.any() and not data.volumes:
            raise DataError("support mask is empty (background only); outline at least one "
                            "class, or drop the image", data.ids[int(np.argmax(empty))])  # fmt: skip
        return np.flatnonzero(~empty), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in range(counts.shape[1]):
        pool = [i for i in rng.permutation(np.flatnonzero(counts[:, k] > 0)) if i not in chosen]
        if len(pool) < shots:
            raise DataError(f"class {data.class_names[k + 1]!r} appears in {len(pool)} free "
                            f"images, fewer than --shots {shots}", "--shots")  # fmt: skip
        chosen += [int(i) for i in pool[:shots]]
    return np.asarray(chosen), np.setdiff1d(np.arange(len(data)), chosen)
