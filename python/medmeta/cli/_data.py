"""Data arguments of the command line: a dataset given as an embedded name, an ``.npz``
(MedMNIST or flat layout) or an image folder; a class selection; a support set of K
examples per class. Torch-free (numpy only), so ``medmeta predict`` can use it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.data import ArrayDataset, DataError

DATA_HELP = (
    "an embedded dataset name (see `medmeta datasets`), an .npz file (MedMNIST layout "
    "train_images/train_labels/... or images/labels/class_names), or a folder with one "
    "sub-folder of images per class"
)
CLASSES_HELP = (
    "classes to use, by id or name: '0-4', '5,6,7' or 'basophil,eosinophil' (default: all)"
)


def load_dataset(spec: str, *, on_error: str = "raise") -> ArrayDataset:
    """The labelled dataset named or located by ``spec`` (see :data:`DATA_HELP`)."""
    from medmeta.data import registry

    path = Path(spec)
    if path.is_dir():
        from medmeta.data.formats.image_folder import load_image_folder

        return load_image_folder(path, on_error=on_error)  # type: ignore[arg-type]
    if path.suffix.lower() == ".npz":
        from medmeta.data.formats.npz import load_npz

        if not path.is_file():
            raise DataError("file not found", spec)
        ds = load_npz(path)
        if not isinstance(ds, ArrayDataset):
            raise DataError("a classification dataset is needed; this file holds masks", spec)
        return ds
    if path.exists():
        raise DataError("expected an .npz file or an image folder (one sub-folder per class)", spec)
    known = [d.name for d in registry.list_datasets()]
    if spec not in known:
        raise DataError(
            f"no such file or folder, and not an embedded dataset (embedded: {', '.join(known)})",
            spec,
        )
    ds = registry.load(spec)
    if not isinstance(ds, ArrayDataset):
        raise DataError("a classification dataset is needed", spec)
    return ds


def parse_classes(spec: str | None, class_names: Sequence[str]) -> list[int] | None:
    """Class ids from ``'0-4'``, ``'5,6,7'`` or names (``None`` when ``spec`` is empty)."""
    if spec is None or not str(spec).strip():
        return None
    names = list(class_names)
    ids: list[int] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        if part in names:
            ids.append(names.index(part))
        elif "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            lo, hi = (int(s) for s in part.split("-", 1))
            if lo > hi:
                raise DataError(f"empty class range {part!r}", "--classes")
            ids.extend(range(lo, hi + 1))
        elif part.isdigit():
            ids.append(int(part))
        else:
            raise DataError(f"unknown class {part!r}; classes are {names}", "--classes")
    bad = [i for i in ids if not 0 <= i < len(names)]
    if bad:
        raise DataError(f"class ids {bad} out of range [0, {len(names)})", "--classes")
    if len(set(ids)) != len(ids):
        raise DataError(f"classes listed twice in {spec!r}", "--classes")
    return ids


def select_classes(ds: ArrayDataset, spec: str | None, option: str = "--classes") -> ArrayDataset:
    """The examples of the classes in ``spec`` (labels and class names unchanged)."""
    try:
        ids = parse_classes(spec, ds.class_names)
    except DataError as err:
        raise DataError(err.problem, option) from None
    if ids is None:
        return ds
    return ds.subset(np.flatnonzero(np.isin(ds.labels, ids)))


def present_classes(ds: ArrayDataset) -> list[int]:
    """Class ids with at least one example, in id order."""
    return np.flatnonzero(np.bincount(ds.labels, minlength=ds.num_classes) > 0).tolist()


def support_split(
    ds: ArrayDataset, shots: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Pick ``shots`` examples of every present class as a support set (all of them when
    ``shots`` is None), seeded.

    Returns:
        ``(support indices [N*K], support labels [N*K] in [0, N), rest indices, class ids [N])``
        with the support class-major and labels re-indexed to the present classes.
    """
    classes = present_classes(ds)
    if len(classes) < 2:
        raise DataError(f"a task needs at least 2 classes, the data has {len(classes)}", "support")
    rng = np.random.default_rng(seed)
    support: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for new, c in enumerate(classes):
        members = rng.permutation(np.flatnonzero(ds.labels == c))
        k = len(members) if shots is None else shots
        if len(members) < k:
            raise DataError(
                f"class {ds.class_names[c]!r} has {len(members)} examples, fewer than --shots {k}",
                "support",
            )
        support.append(members[:k])
        labels.append(np.full(k, new, dtype=np.int64))
    s = np.concatenate(support)
    rest = np.setdiff1d(np.arange(len(ds)), s)
    return s, np.concatenate(labels), rest, classes


def relabel(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Dataset class ids -> positions in ``classes`` (every label must be in ``classes``)."""
    lookup = np.full(max(max(classes), int(labels.max(initial=0))) + 1, -1, dtype=np.int64)
    lookup[np.asarray(classes)] = np.arange(len(classes))
    out = lookup[labels]
    if (out < 0).any():
        raise DataError("some examples belong to classes outside the task", "labels")
    return out


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (torch tensors are moved to the CPU)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
