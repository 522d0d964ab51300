"""A labelled clinical table kept as text rows, for the command line: the encoding (categories,
scaling, missing-value indicators) is fitted later, on the training rows only, as a
:class:`~medmeta.edge.table.TableSpec` that the model carries to the device.

(:class:`~medmeta.data.formats.table.ClinicalTable` is the pandas form for library users,
with an encoder fitted per episode's support set.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medmeta.edge.table import (
    TARGET_NAMES,
    TEXT_BYTES_PER_FILE_BYTE,
    TableRows,
    read_csv_rows,
    split_target,
    text_values,
)

from ..dataset import _index_array, _Labelled
from ..errors import DataError, missing_extra

__all__ = ["TABLE_SUFFIXES", "TARGET_NAMES", "LabelledTable", "read_labelled_table", "read_rows"]

#: File suffixes read as tables (Parquet needs pyarrow: ``pip install "medmeta[data]"``).
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


class LabelledTable(_Labelled):
    """Feature rows (:class:`TableRows`, the target column removed) with int64 labels.

    ``x`` is the rows, so code written for :class:`~medmeta.data.ArrayDataset` can ask for
    it; it becomes numbers only through a fitted ``Preprocessing(kind="table")``.
    """

    def __init__(
        self,
        rows: TableRows,
        labels: np.ndarray,
        class_names: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.x = rows
        self.y = np.asarray(labels, dtype=np.int64)
        self._init_common(len(rows), class_names, len(class_names), None, meta, None, ())

    @property
    def labels(self) -> np.ndarray:
        return self.y

    def __len__(self) -> int:
        return len(self.x)

    def indices_by_class(self) -> dict[int, np.ndarray]:
        return {k: np.flatnonzero(self.y == k) for k in range(self.num_classes)}

    def subset(self, indices: Any) -> LabelledTable:
        idx = _index_array(indices, len(self))
        return LabelledTable(self.x.take(idx), self.y[idx], self.class_names, self.meta)

    def __repr__(self) -> str:
        return (
            f"LabelledTable(name={self.meta.get('name')!r}, n={len(self)}, "
            f"columns={len(self.x.columns)}, classes={self.num_classes})"
        )


#: The most bytes a Parquet table's cells may take as fixed-width text (as for a CSV file of
#: the default 200 MiB limit of :func:`~medmeta.edge.table.read_csv_rows`).
MAX_TEXT_BYTES = TEXT_BYTES_PER_FILE_BYTE * (200 << 20)


def _parquet_rows(path: str) -> TableRows:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("pyarrow", err) from err
    try:
        table = pq.read_table(path)
        columns = [str(c) for c in table.column_names]
        data = table.to_pydict()
        cells = [["" if v is None else _text(v) for v in data[c]] for c in table.column_names]
    except Exception as err:  # pyarrow's ArrowInvalid, OSError, UnicodeDecodeError, ...
        raise DataError(
            f"cannot read the Parquet file ({type(err).__name__}: {err})", path
        ) from err
    rows = [list(r) for r in zip(*cells, strict=True)] if cells else []
    try:
        values = text_values(rows, len(columns), path, MAX_TEXT_BYTES)
    except ValueError as err:
        raise DataError(str(err), path) from None
    return TableRows(tuple(columns), values.reshape(table.num_rows, len(columns)))


def _text(value: Any) -> str:
    """A cell as the text a CSV file would hold (integral floats without ``.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_rows(path: str | os.PathLike[str]) -> TableRows:
    """The rows of a ``.csv`` / ``.tsv`` (numpy + csv, as on a device) or ``.parquet`` table,
    as text (:class:`~medmeta.edge.table.TableRows`)."""
    source = os.fspath(path)
    if source.lower().endswith((".parquet", ".pq")):
        return _parquet_rows(source)
    try:
        return read_csv_rows(source)
    except ValueError as err:
        raise DataError(str(err), source) from None


def read_labelled_table(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    drop: Sequence[str] = (),
    name: str | None = None,
) -> LabelledTable:
    """A ``.csv`` / ``.tsv`` / ``.parquet`` table with one row per example and a class column.

    Args:
        path: the file.
        target: the class column (default: the first of :data:`TARGET_NAMES` present).
        drop: columns that are not features (identifiers, leaky columns).
        name: the data set's name in ``meta``.

    Raises:
        DataError: unreadable file, no target column, a missing target value (row named),
            fewer than two classes.
    """
    source = os.fspath(path)
    try:
        rows, labels, names = split_target(read_rows(source), target, required=True)
    except ValueError as err:
        raise DataError(str(err), source) from None
    assert labels is not None and names is not None
    meta = {"name": name or os.path.splitext(os.path.basename(source))[0], "format": "table",
            "path": source}  # fmt: skip
    return LabelledTable(rows.drop(drop), labels, names, meta)
