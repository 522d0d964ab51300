"""Fuzz the Parquet table readers: :func:`medmeta.data.formats.table.read_table` (pandas +
pyarrow) and :func:`~medmeta.data.formats.table_rows.read_rows` /
``read_labelled_table`` (pyarrow).

Seeds: the first rows of the embedded thyroid table as Parquet (snappy, uncompressed,
dictionary-encoded, and with integer, boolean and missing values)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, main


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.table import read_table
    from medmeta.data.formats.table_rows import read_labelled_table, read_rows

    path = fresh(scratch, ("table.parquet", data)) / "table.parquet"
    return [
        (lambda: read_table(path, "target", max_bytes=MAX_BYTES), (DataError,)),
        (lambda: read_rows(path), (DataError,)),
        (lambda: read_labelled_table(path), (DataError,)),
    ]


def _seeds() -> dict[str, bytes]:
    import pandas as pd

    frame = pd.read_csv(DATASETS / "thyroid.csv", nrows=8)
    few = frame[["age", "sex", "TSH", "on_thyroxine", "target"]].copy()
    few["on_thyroxine"] = few["on_thyroxine"].astype(bool)
    seeds = {}
    for name, table, options in [
        ("thyroid-snappy.parquet", few, {"compression": "snappy"}),
        ("thyroid-plain.parquet", few, {"compression": None, "use_dictionary": False}),
        ("thyroid-wide.parquet", frame.iloc[:4, :12].assign(target=frame["target"][:4]),
         {"compression": None}),
    ]:  # fmt: skip
        buf = io.BytesIO()
        table.to_parquet(buf, engine="pyarrow", index=False, **options)
        seeds[name] = buf.getvalue()
    return seeds


HARNESS = Harness(
    "parquet",
    _calls,
    _seeds,
    ("medmeta.data.formats.table", "medmeta.data.formats.table_rows"),
)

if __name__ == "__main__":
    main(HARNESS)
