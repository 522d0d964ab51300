"""Data arguments of the command line: a dataset given as an embedded name, an ``.npz``
(MedMNIST or flat layout), an image folder or WFDB records; a class selection; a support
set of K examples per class. Torch-free (numpy only), so ``medmeta predict`` can use it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.cli import _medical
from medmeta.data import ArrayDataset, DataError
from medmeta.edge.cli.classes import CLASSES_HELP as CLASSES_HELP  # re-exported
from medmeta.edge.cli.classes import parse_classes

DATA_HELP = (
    "an embedded dataset name (see `medmeta datasets`), an .npz file (MedMNIST layout "
    "train_images/train_labels/... or images/labels/class_names), a .csv/.tsv/.parquet table "
    "(one row per example, the class in a column named target, label, class, diagnosis or "
    "y), an AnnData .h5ad file (the class in obs cell_type, label, condition, ...), or a "
    "folder with one sub-folder per class of images, DICOM files or NIfTI volumes (every "
    "slice an example), or WFDB ECG records (a folder of .hea/.dat files with .atr beat "
    "annotations, or one .hea file: a window of 0.25 s before to 0.45 s after each beat, "
    "classed N, S, V, F, Q by the AAMI groups; needs pip install medmeta[signals])"
)


#: ``obs`` columns taken as the class of an ``.h5ad`` file, in order of preference.
H5AD_LABEL_KEYS = ("cell_type", "celltype", "cell_type_label", "label", "target", "class",
                   "condition")  # fmt: skip


def load_dataset(spec: str, *, on_error: str = "raise") -> ArrayDataset:
    """The labelled dataset named or located by ``spec`` (see :data:`DATA_HELP`); a table
    (``.csv`` / ``.tsv`` file or the embedded ``thyroid``) comes as a
    :class:`~medmeta.data.formats.table_rows.LabelledTable` of text rows."""
    from medmeta.data import registry
    from medmeta.data.formats.table_rows import TABLE_SUFFIXES, read_labelled_table

    path = Path(spec)
    if path.suffix.lower() == ".hea" or (path.is_dir() and any(path.glob("*.hea"))):
        from medmeta.data.formats.wfdb_records import load_wfdb_beats

        return load_wfdb_beats(path, on_error=on_error)  # type: ignore[arg-type]
    if path.suffix.lower() == ".h5ad":
        return _load_h5ad(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        if not path.is_file():
            raise DataError("file not found", spec)
        return read_labelled_table(path)  # type: ignore[return-value]
    if path.is_dir() and _medical.is_medical(path):
        return _medical.load_medical_classes(path)
    if path.is_dir():
        from medmeta.data.formats.image_folder import load_image_folder

        return load_image_folder(path, on_error=on_error)  # type: ignore[arg-type]
    if path.suffix.lower() == ".npz":
        from medmeta.data.formats.npz import load_npz

        if not path.is_file():
            raise DataError("file not found", spec)
        ds = load_npz(path)
        if not isinstance(ds, ArrayDataset):
            raise DataError("this file holds segmentation masks, not class labels: use "
                            "--task segmentation (--algorithm alpnet or panet)", spec)  # fmt: skip
        return ds
    if path.exists():
        raise DataError(
            "expected an .npz file, a folder with one sub-folder per class (of images, "
            "DICOM files or NIfTI volumes) or a WFDB record (.hea header)",
            spec,
        )
    known = [d.name for d in registry.list_datasets()]
    if spec not in known:
        raise DataError(
            f"no such file or folder, and not an embedded dataset (embedded: {', '.join(known)})",
            spec,
        )
    kind = registry.dataset_info(spec).kind
    if kind == "table":
        return registry.load(spec, rows=True)  # type: ignore[no-any-return]
    if kind == "molecules":
        raise DataError(
            "an assay table of molecules (each assay a binary few-shot task), not a "
            "classification dataset: use the Python API (docs/drug_screening.md: "
            "medmeta.data.assay_tasks) or `python -m benchmarks protocols --family molecules`",
            spec,
        )
    ds = registry.load(spec)
    if not isinstance(ds, ArrayDataset):
        hint = (": use --task segmentation (--algorithm alpnet or panet)"
                if registry.dataset_info(spec).kind == "segmentation" else "")  # fmt: skip
        raise DataError(f"a classification dataset is needed{hint}", spec)
    return ds


def h5ad_class_column(path: Path) -> tuple[str | None, list[str]]:
    """The first ``obs`` column of :data:`H5AD_LABEL_KEYS` in an AnnData file (None when it
    has none) and all its ``obs`` columns (a backed read: no matrix is loaded)."""
    from medmeta.data.formats.expression import h5ad_obs_columns

    columns = h5ad_obs_columns(path)
    return next((k for k in H5AD_LABEL_KEYS if k in columns), None), columns


def _load_h5ad(path: Path) -> ArrayDataset:
    """Cells x genes of an AnnData file, the class from the first ``obs`` column of
    :data:`H5AD_LABEL_KEYS` present."""
    from medmeta.data.formats.expression import load_h5ad

    key, columns = h5ad_class_column(path)
    if key is None:
        raise DataError(
            f"no class column in obs: expected one of {', '.join(H5AD_LABEL_KEYS)}, obs "
            f"columns are {columns}",
            str(path),
        )
    return load_h5ad(path, key)


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


#: Share of each training class held out for calibration when no validation classes are given.
CALIBRATION_FRACTION = 0.2


def calibration_split(
    ds: ArrayDataset, need: int, seed: int, fraction: float = CALIBRATION_FRACTION
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``(train, held_out)``: ``fraction`` of each class's examples (at least ``need``, one
    episode's worth) held out, chosen with ``seed``, from the classes that keep ``need``
    examples for training. ``held_out`` is None when fewer than 2 classes can spare them."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in present_classes(ds):
        idx = rng.permutation(np.flatnonzero(ds.labels == c))
        k = max(need, round(fraction * len(idx)))
        if len(idx) - k >= need:
            held.append(idx[:k])
    if len(held) < 2:
        return ds, None
    out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(ds)), out)
    return ds.subset(keep), ds.subset(out)


def describe_source(spec: str | ArrayDataset, ds: ArrayDataset) -> str:
    """The name of a ``--data`` source for messages: the path or dataset name."""
    return (
        spec if isinstance(spec, str) else str(ds.meta.get("path") or ds.meta.get("name") or "data")
    )
