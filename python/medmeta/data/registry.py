"""Embedded real datasets: list, describe and load them by name.

The data files live in the ``medmeta.datasets`` package (found with :mod:`importlib.resources`,
so they work from an installed wheel) and are described by its ``manifest.json``: task,
classes, examples per class, source, license and citation. Datasets whose license or size
keeps them out of the wheel (CHAOS, non-commercial; DSB 2018) are listed with
``embedded=False`` and load from a folder given as ``root=`` or ``$MEDMETA_DATA_DIR``.

    >>> from medmeta.data import load, list_datasets
    >>> ds = load("pbc_blood")            # ArrayDataset, x uint8 [4800, 28, 28, 3]
    >>> [d.name for d in list_datasets()]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .dataset import ArrayDataset, SegmentationDataset
from .errors import DataError

__all__ = [
    "CROSS_DOMAIN_DATASETS",
    "DEFAULT_DATASET",
    "DatasetInfo",
    "dataset_info",
    "dataset_path",
    "format_table",
    "list_datasets",
    "load",
    "main",
    "verify",
]

#: The dataset ``medmeta demo`` uses by default (blood cells, CC BY 4.0).
DEFAULT_DATASET = "pbc_blood"
#: Image sets from other modalities, for the cross-domain case.
CROSS_DOMAIN_DATASETS = ("brain_tumor_mri", "knee_xray_kl")

_PACKAGE = "medmeta.datasets"
_ENV_ROOT = "MEDMETA_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    """Description of one registered dataset (from ``manifest.json``)."""

    name: str
    file: str
    kind: str  # image | segmentation | table | expression | timeseries | molecules
    task: str
    modality: str
    shape: str
    classes: tuple[str, ...]
    examples_per_class: dict[str, int]
    n_examples: int
    source: str
    license: str
    citation: str
    embedded: bool
    license_file: str | None
    sha256: str
    size_bytes: int
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def license_text(self) -> str | None:
        """The full provenance/license text shipped beside the data (embedded sets only)."""
        if self.license_file is None:
            return None
        return resources.files(_PACKAGE).joinpath(self.license_file).read_text("utf-8")


_FIELDS = set(DatasetInfo.__dataclass_fields__) - {"extra"}


@cache
def _manifest() -> dict[str, DatasetInfo]:
    text = resources.files(_PACKAGE).joinpath("manifest.json").read_text("utf-8")
    out: dict[str, DatasetInfo] = {}
    for entry in json.loads(text)["datasets"]:
        known = {k: v for k, v in entry.items() if k in _FIELDS}
        known["classes"] = tuple(known["classes"])
        extra = {k: v for k, v in entry.items() if k not in _FIELDS}
        out[entry["name"]] = DatasetInfo(**known, extra=extra)
    return out


def list_datasets(*, include_external: bool = False) -> list[DatasetInfo]:
    """The registered datasets: the embedded ones, plus (``include_external=True``) those that
    must be supplied from a folder."""
    return [d for d in _manifest().values() if d.embedded or include_external]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; unknown names raise :class:`DataError`."""
    reg = _manifest()
    if name not in reg:
        raise DataError(f"unknown dataset {name!r}; available: {sorted(reg)}", "name")
    return reg[name]


@contextlib.contextmanager
def dataset_path(name: str, root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Context manager giving a filesystem path to the dataset file.

    Embedded files come from the installed package; external ones from ``root`` or
    ``$MEDMETA_DATA_DIR``.
    """
    info = dataset_info(name)
    if not info.embedded or root is not None:
        base = root if root is not None else os.environ.get(_ENV_ROOT)
        if base is None:
            raise DataError(
                f"{name!r} is not shipped with medmeta (license: {info.license}); put "
                f"{info.file} in a folder and pass root=FOLDER or set ${_ENV_ROOT}",
                name,
            )
        path = Path(base) / info.file
        if not path.is_file():
            raise DataError(f"{info.file} not found in {os.fspath(base)}", name)
        yield path
        return
    with resources.as_file(resources.files(_PACKAGE).joinpath(info.file)) as path:
        yield Path(path)


def _with_info(ds: Any, info: DatasetInfo) -> Any:
    ds.meta.update(
        name=info.name,
        task=info.task,
        source=info.source,
        license=info.license,
        citation=info.citation,
    )
    return ds


def load(name: str, *, root: str | os.PathLike[str] | None = None, **options: Any) -> Any:
    """Load a registered dataset by name.

    Args:
        name: see :func:`list_datasets` (``medmeta datasets`` on the command line).
        root: folder holding the file, for datasets not embedded in the package (or to load
            another copy).
        options: dataset-specific choices:

            * ``pbmc68k_celltypes``: ``matrix="lognorm"`` (default; leak-free) or ``"scaled"``.
            * ``nci60``: ``labels="cancer"`` (14 labels, default) or ``"tissue"`` (10).
            * ``thyroid``: any :func:`~medmeta.data.formats.table.read_table` keyword, or
              ``rows=True`` for text rows (:func:`~medmeta.data.formats.table_rows.read_labelled_table`).

    Returns:
        * image sets: :class:`ArrayDataset`, ``x`` uint8 ``[N, H, W]`` or ``[N, H, W, 3]``;
        * expression sets: :class:`ArrayDataset`, ``x`` float32 ``[N, genes]``,
          ``meta["gene_names"]`` when known;
        * time series: :class:`ArrayDataset`, ``x`` float32 ``[N, 1, L]``;
        * ``thyroid``: :class:`~medmeta.data.formats.table.ClinicalTable`;
        * segmentation sets: :class:`SegmentationDataset` with ``groups`` = patient/source ids;
        * molecule sets (``toxcast``, ``tox21``):
          :class:`~medmeta.data.assay_tasks.AssayTable` (SMILES, labels ``[n_mol, n_assay]``
          1/0/NaN, task names and groups; "classes" are the assays, counts their actives).
    """
    from .formats.npz import load_npz, read_npz

    info = dataset_info(name)
    with dataset_path(name, root) as path:
        if info.kind == "molecules":
            from .assay_tasks import load_assay_table

            if options:
                raise DataError(f"{name!r} takes no options, got {sorted(options)}", name)
            return _with_info(load_assay_table(path, name=name), info)
        if info.kind == "table":
            return _with_info(_load_table(path, name, options), info)
        if options and name not in ("pbmc68k_celltypes", "nci60"):
            raise DataError(f"{name!r} takes no options, got {sorted(options)}", name)
        if name == "pbmc68k_celltypes":
            matrix = options.pop("matrix", "lognorm")
            if options or matrix not in ("lognorm", "scaled"):
                raise DataError("pbmc68k_celltypes takes matrix='lognorm' or 'scaled'", name)
            ds = load_npz(path, x_key="X_lognorm" if matrix == "lognorm" else "X", name=name)
            ds.meta["gene_names"] = read_npz(path, ["gene_names"])["gene_names"]
            ds.meta["matrix"] = matrix
            return _with_info(ds, info)
        if name == "nci60":
            labels = options.pop("labels", "cancer")
            if options or labels not in ("cancer", "tissue"):
                raise DataError("nci60 takes labels='cancer' or 'tissue'", name)
            arrays = read_npz(path)
            key = "" if labels == "cancer" else "_tissue"
            ds = ArrayDataset(
                arrays["X"],
                arrays["labels" + key],
                [str(c) for c in arrays["class_names" + key]],
                meta={"labels": labels, "format": "npz"},
            )
            return _with_info(ds, info)
        if info.kind == "timeseries":
            arrays = read_npz(path)
            meta = {k: arrays[k] for k in ("signal", "sample_labels", "window") if k in arrays}
            extra = {k: arrays[k] for k in ("split", "r_peaks") if k in arrays}
            ds = ArrayDataset(
                arrays["X"][:, None, :],
                arrays["labels"],
                [str(c) for c in arrays["class_names"]],
                meta={"format": "timeseries", **meta},
                extra=extra,
            )
            return _with_info(ds, info)
        ds = load_npz(path, name=name)
        if info.kind == "expression" and "gene_names" in ds.meta.get("arrays", []):
            ds.meta["gene_names"] = read_npz(path, ["gene_names"])["gene_names"]
        if isinstance(ds, SegmentationDataset) != (info.kind == "segmentation"):
            raise DataError(
                f"file layout does not match the registered kind {info.kind!r}", os.fspath(path)
            )
        return _with_info(ds, info)


def _load_table(path: Path, name: str, options: dict[str, Any]) -> Any:
    """``thyroid``: a pandas :class:`~medmeta.data.formats.table.ClinicalTable`, or with
    ``rows=True`` a :class:`~medmeta.data.formats.table_rows.LabelledTable` of text rows."""
    kw = {"target": "target", "drop": ("record_id", "diagnosis_code", "diagnosis_primary"),
          **options}  # fmt: skip
    if kw.pop("rows", False):
        from .formats.table_rows import read_labelled_table

        return read_labelled_table(path, name=name, **kw)
    from .formats.table import read_table

    return read_table(path, name=name, **kw)


def _short(counts: dict[str, int]) -> str:
    vals = list(counts.values())
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def format_table(infos: Sequence[DatasetInfo] | None = None) -> str:
    """A Markdown table of datasets: name, task, classes, examples per class, size, source,
    license."""
    infos = list(infos) if infos is not None else list_datasets(include_external=True)
    rows = [
        "| name | task | classes | examples per class | size | embedded | license |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in infos:
        rows.append(
            f"| {d.name} | {d.task} | {d.num_classes} | {_short(d.examples_per_class)} | "
            f"{d.size_bytes / 1e6:.1f} MB | {'yes' if d.embedded else 'no'} | {d.license} |"
        )
    return "\n".join(rows)


def _describe(info: DatasetInfo) -> str:
    lines = [
        f"{info.name}: {info.task}",
        f"  kind: {info.kind}; modality: {info.modality}; shape: {info.shape}",
        f"  examples: {info.n_examples}; classes ({info.num_classes}):",
    ]
    lines += [f"    {c}: {info.examples_per_class.get(c, 0)}" for c in info.classes]
    lines += [
        f"  source: {info.source}",
        f"  license: {info.license}",
        f"  citation: {info.citation}",
        f"  embedded: {'yes' if info.embedded else 'no (pass root= or set ' + _ENV_ROOT + ')'}",
    ]
    if info.notes:
        lines.append(f"  notes: {info.notes}")
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, prog: str = "medmeta datasets"
) -> int:
    """``medmeta datasets [NAME] [--all] [--license]``: list datasets or describe one.

    Writes to ``out`` (default: standard output) and returns the exit status.
    """
    out = sys.stdout if out is None else out

    def emit(text: str) -> None:
        out.write(text + "\n")

    parser = argparse.ArgumentParser(
        prog=prog, description="List or describe medmeta's real datasets."
    )
    parser.add_argument("name", nargs="?", help="describe this dataset")
    parser.add_argument(
        "--all", action="store_true", help="also list datasets that are not embedded in the package"
    )
    parser.add_argument(
        "--license", action="store_true", help="print the full license/provenance text of NAME"
    )
    args = parser.parse_args(argv)
    if args.name is None:
        emit(format_table(list_datasets(include_external=args.all)))
        return 0
    try:
        info = dataset_info(args.name)
    except DataError as err:
        emit(str(err))
        return 2
    emit(_describe(info))
    if args.license:
        text = info.license_text()
        emit("\n" + (text if text else "(license text not shipped; see the source)"))
    return 0


def _counts(ds: Any) -> dict[str, int]:
    return ds.class_counts()


def verify(name: str, root: str | os.PathLike[str] | None = None) -> None:
    """Check a dataset file against the manifest (sha256, class names, per-class counts);
    raise :class:`DataError` on any difference."""
    import hashlib

    info = dataset_info(name)
    with dataset_path(name, root) as path:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != info.sha256:
        raise DataError(f"sha256 {digest} differs from the manifest's {info.sha256}", name)
    ds = load(name, root=root)
    got = _counts(ds)
    if tuple(ds.class_names) != info.classes or got != info.examples_per_class:
        raise DataError(
            f"class counts {got} differ from the manifest's {info.examples_per_class}", name
        )
    if isinstance(ds, ArrayDataset) and len(ds) != info.n_examples:
        raise DataError(f"{len(ds)} examples, manifest says {info.n_examples}", name)
