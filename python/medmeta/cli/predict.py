"""``medmeta predict``: the edge runtime's ``predict`` (:mod:`medmeta.edge.cli.predict`,
torch-free) with the data layer's readers, so ``--inputs`` and ``--support`` also take
``.npz`` files and embedded dataset names. Segmentation models (a folder from ``medmeta
adapt`` or an exported ``<stem>.encoder.onnx``) go to :mod:`medmeta.cli._seg_predict`, which
writes masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmeta.cli import _data, _medical
from medmeta.data import DataError
from medmeta.edge.cli import predict as edge_predict
from medmeta.edge.cli.predict import Inputs, Readers
from medmeta.edge.images import IMAGE_EXTENSIONS
from medmeta.edge.table import TableRows


def _read_medical(paths: list[Path]) -> Inputs:
    """DICOM files, DICOM series folders and NIfTI volumes: every slice one input."""
    raw: list[np.ndarray] = []
    ids: list[str] = []
    read: list[str] = []
    for path in paths:
        slices, what = _medical.read_medical(path)
        raw += list(slices)
        ids += [f"{path}[{i}]" for i in range(len(slices))] if len(slices) > 1 else [str(path)]
        read.append(what)
    return Inputs(raw, ids, note="; ".join(read))


def _read_parquet_inputs(path: Path) -> Inputs:
    """The rows of a Parquet table (labelled when it has a class column)."""
    from medmeta.data.formats.table_rows import read_rows
    from medmeta.edge.table import split_target

    try:
        rows, labels, names = split_target(read_rows(path))
    except ValueError as err:
        raise DataError(str(err), str(path)) from None
    return Inputs(rows, [str(i) for i in range(len(rows))], labels, names,
                  note=f"{path}: {len(rows)} table rows")  # fmt: skip


def _is_wfdb(path: Path) -> bool:
    """A WFDB record header or a folder of them (``*.hea``): ECG beats, not images."""
    return path.suffix.lower() == ".hea" or (path.is_dir() and any(path.glob("*.hea")))


def _read_inputs(items: Sequence[str]) -> Inputs:
    """Image files and folders as on a device; DICOM and NIfTI files; one ``.npz``, dataset
    name, WFDB record (``.hea``) or folder of records, or class folder of medical files
    through :mod:`medmeta.data` (labelled: the accuracy is printed; a beat of a record is
    named ``record:sample``)."""
    paths = [Path(i) for i in items]
    if any(_medical.is_medical(p) for p in paths):
        if len(paths) == 1 and paths[0].is_dir() and any(p.is_dir() for p in paths[0].iterdir()):
            ds = _data.load_dataset(str(paths[0]))  # class sub-folders: labelled slices
            ids = [str(i) for i in range(len(ds))]
            return Inputs(
                np.asarray(ds.x),
                ids,
                ds.labels,
                list(ds.class_names),
                f"{paths[0]}: slices by class",
            )
        return _read_medical(paths)
    source = paths[0]
    if len(items) == 1 and source.suffix.lower() in edge_predict.TABLE_SUFFIXES:
        return edge_predict.read_table_inputs(source)
    if len(items) == 1 and source.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet_inputs(source)
    if len(items) == 1 and source.suffix.lower() == ".h5ad":
        return _read_h5ad_inputs(source)
    records = len(items) == 1 and _is_wfdb(source)
    if not records and (len(items) > 1 or source.suffix.lower() in IMAGE_EXTENSIONS
                        or source.is_dir()):  # fmt: skip
        return edge_predict.read_image_inputs(items)
    ds = _data.load_dataset(str(source))
    if "file" in ds.extra:
        ids = [str(f) for f in ds.extra["file"]]
    elif records:  # one window per annotated beat
        ids = [f"{g}:{s}" for g, s in zip(ds.groups, ds.extra["sample"], strict=True)]
    else:
        ids = [str(i) for i in range(len(ds))]
    raw = ds.x if isinstance(ds.x, TableRows) else np.asarray(ds.x)  # a table stays rows
    return Inputs(raw, ids, ds.labels, list(ds.class_names),
                  feature_names=_gene_names(ds))  # fmt: skip


def _gene_names(ds: object) -> list[str] | None:
    names = (getattr(ds, "meta", None) or {}).get("gene_names")
    return None if names is None else [str(n) for n in names]


def _read_h5ad_inputs(path: Path) -> Inputs:
    """The cells of an AnnData file, named by gene (matched to the model's genes by name);
    labelled when ``obs`` has a class column (:data:`medmeta.cli._data.H5AD_LABEL_KEYS`)."""
    from medmeta.data.formats.expression import load_h5ad, read_h5ad_cells

    key, _ = _data.h5ad_class_column(path)
    if key is None:
        x, genes, cells = read_h5ad_cells(path)
        return Inputs(x, cells, note=f"{path}: {len(cells)} cells x {len(genes)} genes",
                      feature_names=genes)  # fmt: skip
    ds = load_h5ad(path, key)
    cells = [str(c) for c in ds.meta["cell_ids"]]
    return Inputs(np.asarray(ds.x), cells, ds.labels, list(ds.class_names),
                  f"{path}: {len(cells)} cells x {ds.x.shape[1]} genes, classes from obs[{key!r}]",
                  feature_names=_gene_names(ds))  # fmt: skip


def _read_table_rows(path: Path) -> TableRows:
    """A table file's rows as they are (a regressor's inputs: every column kept)."""
    from medmeta.data.formats.table_rows import read_rows

    return read_rows(path)


def _read_support(spec: str, classes: str | None) -> Inputs:
    """Labelled examples of the chosen classes from anything ``--data`` takes."""
    support = _data.select_classes(_data.load_dataset(spec), classes, "--classes")
    kept = _data.present_classes(support)
    return Inputs(
        support.x if isinstance(support.x, TableRows) else np.asarray(support.x),
        [str(i) for i in range(len(support))],
        _data.relabel(support.labels, kept),
        [support.class_names[c] for c in kept],
        feature_names=_gene_names(support),
    )


READERS = Readers(
    inputs=_read_inputs,
    support=_read_support,
    inputs_help="image files, a folder, DICOM files or series folders, NIfTI volumes, an .npz "
    "or a dataset name",
    support_help=_data.DATA_HELP,
    epilog_more=", DICOM files, DICOM series folders and NIfTI volumes (every slice an input; "
    "the model's own window and resizing apply), an .npz (MedMNIST or flat layout) or an "
    "embedded dataset name",
    table_rows=_read_table_rows,
    table_suffixes=(".csv", ".tsv", ".parquet", ".pq"),
)


def main(argv: Sequence[str], prog: str = "medmeta predict") -> int:
    from medmeta.cli import _seg_predict

    if _seg_predict.is_segmentation_model(argv):  # a segmentation folder or encoder.onnx
        return _seg_predict.main(argv, prog=prog)
    return edge_predict.main(argv, prog=prog, readers=READERS)
