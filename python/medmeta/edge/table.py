"""Clinical table rows -> feature vectors, in numpy and the ``csv`` module only (no pandas),
so a device encodes a row exactly as training did.

:class:`TableRows` holds rows as text (as read from a CSV file; ``""``, ``NA``, ``NaN``,
``?`` and the like are missing). :class:`TableSpec` is the encoding, fitted on the rows a
model was trained on and stored in its metadata (``Preprocessing(kind="table")``):

* numeric columns (every present value parses as a number in the fitted rows): standardised
  with the fitted mean and standard deviation; a missing value becomes 0 (the mean) and sets
  the ``<column>__missing`` indicator;
* categorical columns: one-hot over the fitted categories, plus ``<column>=__other__`` for a
  category never seen in fitting (reported by :meth:`TableSpec.unknown`, never silently) and
  ``<column>__missing``.

A column the spec needs but the rows lack raises :class:`ValueError` naming it; a numeric
column with text raises naming the column, row and value. The feature order is the one of
:class:`medmeta.data.formats.table.TableEncoder` with ``missing="mask"``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MISSING",
    "TARGET_NAMES",
    "TEXT_BYTES_PER_FILE_BYTE",
    "TableRows",
    "TableSpec",
    "read_csv_rows",
    "split_target",
    "text_values",
]

#: Cell texts read as missing (case-insensitive, after stripping blanks).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-"})
OTHER = "__other__"
#: Class columns recognised without being named, in order of preference.
TARGET_NAMES = ("target", "label", "class", "diagnosis", "y")


def _is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING


@dataclass(frozen=True)
class TableRows:
    """Rows of a table as text: ``values`` ``[n, len(columns)]`` (numpy ``str``)."""

    columns: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=str)
        if values.ndim != 2 or values.shape[1] != len(self.columns):
            raise ValueError(
                f"TableRows: values must be [n, {len(self.columns)}] (one per column), got "
                f"shape {list(values.shape)}"
            )
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), len(self.columns)

    def take(self, indices: Any) -> TableRows:
        """The rows at ``indices`` (an index array or a boolean mask)."""
        return TableRows(self.columns, self.values[np.asarray(indices)])

    def column(self, name: str, where: str = "rows") -> np.ndarray:
        """The text of column ``name`` ``[n]``; a missing column raises naming it."""
        if name not in self.columns:
            raise ValueError(
                f"{where}: column {name!r} is missing (the model needs it); columns are "
                f"{list(self.columns)}"
            )
        return self.values[:, self.columns.index(name)]

    def drop(self, names: Sequence[str]) -> TableRows:
        """These rows without the columns ``names`` (absent names are ignored)."""
        keep = [i for i, c in enumerate(self.columns) if c not in set(names)]
        return TableRows(tuple(self.columns[i] for i in keep), self.values[:, keep])


#: The rows of a table are held as fixed-width numpy text (4 bytes per character of the
#: longest cell, for every cell): refused above this many times ``max_bytes``.
TEXT_BYTES_PER_FILE_BYTE = 16


def text_values(rows: Sequence[Sequence[str]], width: int, where: str,
                limit: int | None) -> np.ndarray:  # fmt: skip
    """``rows`` as a numpy ``str`` array ``[n, width]``, refused (``ValueError`` naming
    ``where``) when that fixed-width array would take more than ``limit`` bytes: one long
    cell widens every cell, so a small file can claim gigabytes."""
    longest = max((len(c) for row in rows for c in row), default=0)
    nbytes = len(rows) * width * max(longest, 1) * 4
    if limit is not None and nbytes > limit:
        raise ValueError(
            f"{where}: {len(rows)} rows x {width} columns with cells of up to {longest:,} "
            f"characters would take {nbytes:,} bytes as text, above the limit of {limit:,}"
        )
    return np.asarray(rows, dtype=str).reshape(len(rows), width)


def read_csv_rows(path: str | Path, *, max_bytes: int | None = 200 << 20) -> TableRows:
    """A ``.csv`` / ``.tsv`` file (header row first) as :class:`TableRows`.

    Raises:
        ValueError: no such file, too large (``max_bytes``, or its rows as text above
            :data:`TEXT_BYTES_PER_FILE_BYTE` times it), not UTF-8, no header, a malformed
            line or a row with the wrong number of cells (named by its line number).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such table file")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise ValueError(f"{p}: the table is larger than {max_bytes} bytes")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not UTF-8 text ({err})") from None
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            raise ValueError(f"{p}: the table is empty (no header row)")
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{p}: line {reader.line_num} has {len(row)} cells, the "
                                 f"header has {len(header)}")  # fmt: skip
            rows.append(row)
    except csv.Error as err:
        raise ValueError(f"{p}: line {reader.line_num} is malformed ({err})") from None
    limit = None if max_bytes is None else TEXT_BYTES_PER_FILE_BYTE * max_bytes
    values = text_values(rows, len(header), str(p), limit)
    return TableRows(tuple(h.strip() for h in header), values)


def _numbers(text: np.ndarray, column: str) -> np.ndarray:
    """Column text -> float64 ``[n]`` with NaN where missing; text that is not a number raises."""
    out = np.full(len(text), np.nan)
    for i, cell in enumerate(text):
        if _is_missing(cell):
            continue
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(
                f"column {column!r}: row {i} holds {str(cell)!r}, expected a number"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"column {column!r}: row {i} holds {str(cell)!r}, a non-finite number")
        out[i] = value
    return out


def _parses(text: np.ndarray) -> bool:
    try:
        _numbers(text, "")
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TableSpec:
    """A fitted table encoding (see the module docstring); JSON-able with :meth:`to_dict`."""

    numeric: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]

    @classmethod
    def fit(
        cls, rows: TableRows, *, categorical: Sequence[str] = (), max_categories: int = 50
    ) -> TableSpec:
        """Fit on ``rows`` (the training rows): every column is a feature; a column is numeric
        when all its present values parse as numbers, unless named in ``categorical``."""
        if len(rows) == 0:
            raise ValueError("cannot fit a table encoding on zero rows")
        numeric, mean, std, cats, vocab = [], [], [], [], []
        for name in rows.columns:
            text = rows.column(name)
            if name not in set(categorical) and _parses(text):
                v = _numbers(text, name)
                ok = v[~np.isnan(v)]
                numeric.append(name)
                mean.append(float(ok.mean()) if ok.size else 0.0)
                s = float(ok.std()) if ok.size > 1 else 0.0
                std.append(s if s > 1e-12 else 1.0)
            else:
                present = [c.strip() for c in text if not _is_missing(c)]
                counts: dict[str, int] = {}
                for c in present:
                    counts[c] = counts.get(c, 0) + 1
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                cats.append(name)
                vocab.append(tuple(sorted(k for k, _ in ranked[:max_categories])))
        return cls(tuple(numeric), tuple(mean), tuple(std), tuple(cats), tuple(vocab))

    @property
    def feature_names(self) -> list[str]:
        """The encoded columns, in order."""
        names: list[str] = []
        for col in self.numeric:
            names += [col, f"{col}__missing"]
        for col, cats in zip(self.categorical, self.categories, strict=True):
            names += [f"{col}={c}" for c in cats] + [f"{col}={OTHER}", f"{col}__missing"]
        return names

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns the encoding reads."""
        return self.numeric + self.categorical

    def encode(self, rows: TableRows) -> np.ndarray:
        """float32 ``[n, len(feature_names)]``; a needed column missing from ``rows`` raises."""
        n = len(rows)
        blocks: list[np.ndarray] = []
        for col, m, s in zip(self.numeric, self.mean, self.std, strict=True):
            v = _numbers(rows.column(col), col)
            miss = np.isnan(v)
            blocks += [np.where(miss, 0.0, (v - m) / s)[:, None], miss[:, None]]
        for col, cats in zip(self.categorical, self.categories, strict=True):
            text = np.char.strip(rows.column(col))
            miss = np.array([_is_missing(c) for c in text], dtype=bool)
            lookup = {c: i for i, c in enumerate(cats)}
            slot = np.array([lookup.get(c, len(cats)) for c in text], dtype=np.int64)
            onehot = np.zeros((n, len(cats) + 1))
            onehot[np.flatnonzero(~miss), slot[~miss]] = 1.0
            blocks += [onehot, miss[:, None]]
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate([b.astype(np.float64) for b in blocks], axis=1).astype(np.float32)

    def unknown(self, rows: TableRows) -> list[list[str]]:
        """Per row, ``"column=value"`` for each category never seen in fitting (encoded as
        ``__other__``, i.e. "unknown")."""
        out: list[list[str]] = [[] for _ in range(len(rows))]
        for col, cats in zip(self.categorical, self.categories, strict=True):
            known = set(cats)
            for i, cell in enumerate(np.char.strip(rows.column(col))):
                if not _is_missing(cell) and cell not in known:
                    out[i].append(f"{col}={cell}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "mean": list(self.mean),
            "std": list(self.std),
            "categorical": list(self.categorical),
            "categories": [list(c) for c in self.categories],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSpec:
        keys = {"numeric", "mean", "std", "categorical", "categories"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"TableSpec.from_dict: expected keys {sorted(keys)}, got {got}")
        spec = cls(
            tuple(str(c) for c in data["numeric"]),
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["std"]),
            tuple(str(c) for c in data["categorical"]),
            tuple(tuple(str(v) for v in c) for c in data["categories"]),
        )
        if not len(spec.numeric) == len(spec.mean) == len(spec.std):
            raise ValueError("TableSpec.from_dict: numeric, mean and std differ in length")
        if len(spec.categorical) != len(spec.categories) or min(spec.std, default=1) <= 0:
            raise ValueError("TableSpec.from_dict: categories do not match, or a std <= 0")
        return spec


def split_target(
    rows: TableRows, target: str | None = None, *, required: bool = False
) -> tuple[TableRows, np.ndarray | None, list[str] | None]:
    """``(feature rows, labels [n] int64, class names)`` from the class column ``target``
    (default: the first of :data:`TARGET_NAMES` present); ``(rows, None, None)`` when there
    is none and it is not ``required``.

    Raises:
        ValueError: the named or required column is absent, a class value is missing (the
            row is named), or the column holds a single class while ``required``.
    """
    column = target or next((c for c in TARGET_NAMES if c in rows.columns), None)
    if column is None or column not in rows.columns:
        if required or target is not None:
            what = f"class column {target!r} not found" if target else "no class column"
            raise ValueError(
                f"{what}: the classes must be in a column named one of "
                f"{', '.join(TARGET_NAMES)} (columns are {list(rows.columns)})"
            )
        return rows, None, None
    text = np.char.strip(rows.column(column))
    missing = np.flatnonzero([_is_missing(t) for t in text])
    if missing.size:
        raise ValueError(
            f"class column {column!r} has {missing.size} missing values, first at data row "
            f"{int(missing[0])} (0-based); drop or label those rows"
        )
    names = sorted(set(text.tolist()))
    if required and not names:
        raise ValueError(f"class column {column!r} has no rows; a few-shot task needs examples")
    if required and len(names) < 2:
        raise ValueError(
            f"class column {column!r} has one class ({names[0]!r}); a few-shot task needs at "
            "least 2"
        )
    lookup = {c: i for i, c in enumerate(names)}
    labels = np.array([lookup[c] for c in text], dtype=np.int64)
    return rows.drop([column]), labels, names
