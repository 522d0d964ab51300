"""Fuzz the CSV table readers: pandas' :func:`medmeta.data.formats.table.read_table`, the
command line's :func:`~medmeta.data.formats.table_rows.read_labelled_table` and the device's
:func:`medmeta.edge.table.read_csv_rows` with a :class:`~medmeta.edge.table.TableSpec` fitted
and applied to the rows read.

Seeds: the first rows of the embedded thyroid table (all its columns, and a few), with
quotes, missing values, a BOM and a tab-separated variant."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, main


def _target(data: bytes) -> str:
    """The class column the readers are asked for: a conventional name from the header when
    there is one, else the header's last cell."""
    from medmeta.edge.table import TARGET_NAMES

    first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    try:
        header = next(csv.reader([first]), []) or ["target"]
    except csv.Error:
        header = ["target"]
    return next((c for c in header if c in TARGET_NAMES), header[-1])


def _device(path: Path) -> None:
    from medmeta.edge.table import TableSpec, read_csv_rows

    rows = read_csv_rows(path, max_bytes=MAX_BYTES)
    if len(rows):
        spec = TableSpec.fit(rows, max_categories=8)
        spec.encode(rows)
        spec.unknown(rows)
        TableSpec.from_dict(spec.to_dict())


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.table import read_table
    from medmeta.data.formats.table_rows import read_labelled_table

    path = fresh(scratch, ("table.csv", data)) / "table.csv"
    target = _target(data)
    return [
        (lambda: read_table(path, target, max_bytes=MAX_BYTES).to_dataset(), (DataError,)),
        (lambda: read_labelled_table(path), (DataError,)),
        (lambda: _device(path), (ValueError,)),  # read_csv_rows and TableSpec document it
    ]


def _seeds() -> dict[str, bytes]:
    text = (DATASETS / "thyroid.csv").read_text(encoding="utf-8").splitlines()
    head = "\n".join(text[:9]) + "\n"
    rows = list(csv.reader(text[:9]))
    few = [[r[1], r[2], r[17], r[-1]] for r in rows]

    def write(table: list[list[str]], **kwargs: object) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n", **kwargs).writerows(table)
        return buf.getvalue().encode()

    return {
        "thyroid-head.csv": head.encode(),
        "thyroid-few.csv": write(few),
        "thyroid-quoted.csv": write(few, quoting=csv.QUOTE_ALL),
        "thyroid-bom.csv": b"\xef\xbb\xbf" + write(few),
        "thyroid-missing.csv": write([few[0]] + [[c or "NA" for c in r] for r in few[1:]]),
        "thyroid-label.csv": write([["age", "sex", "label"]] + [[*r[:2], r[3]] for r in few[1:]]),
    }


HARNESS = Harness(
    "csv_tables",
    _calls,
    _seeds,
    ("medmeta.data.formats.table", "medmeta.data.formats.table_rows", "medmeta.edge.table"),
)

if __name__ == "__main__":
    main(HARNESS)
