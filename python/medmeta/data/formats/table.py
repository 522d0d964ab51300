"""Clinical tables (CSV, TSV, Parquet): a target column, and feature encoding fitted on the
support set only.

:func:`read_table` returns a :class:`ClinicalTable` that keeps the raw feature columns (numbers,
categories and missing values as they are). Features become numbers only through a
:class:`TableEncoder` fitted on the rows of one episode's support set, so no statistic of the
query set (means, standard deviations, category vocabularies) leaks into the encoding:

* numeric columns: standardised with the support mean/std; a missing value becomes 0 (the
  support mean) and sets a ``<column>__missing`` indicator (one per numeric column, so the width
  does not depend on the support set);
* categorical columns: one-hot over the categories seen in the support set (or a fixed list
  given as ``categories=``), plus ``<column>=__other__`` for categories unseen in the support
  and ``<column>__missing``.

A NaN in the target column, an unknown target column or an unreadable file raises
:class:`~medmeta.data.errors.DataError` naming the file, column and row.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..dataset import ArrayDataset, _check_labels, _index_array, _Labelled
from ..errors import DEFAULT_MAX_BYTES, DataError, check_size, missing_extra

__all__ = ["MAX_COLUMNS", "ClinicalTable", "TableEncoder", "read_table"]

logger = logging.getLogger(__name__)

_OTHER = "__other__"


def _pd() -> Any:
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("pandas", err) from err
    return pandas


class TableEncoder:
    """Numeric/categorical feature encoding fitted on one set of rows (the support set).

    Args:
        numeric: numeric feature columns.
        categorical: categorical feature columns.
        standardize: scale numeric columns by the fitted mean and standard deviation.
        missing: ``"mask"`` (default): impute and add ``__missing`` indicator columns;
            ``"raise"``: a missing feature value raises :class:`DataError`.
        categories: fixed category lists per column (e.g. from a data dictionary); columns
            not listed use the categories seen in the rows passed to :meth:`fit`.
        max_categories: keep at most this many most frequent fitted categories per column.
    """

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        *,
        standardize: bool = True,
        missing: Literal["mask", "raise"] = "mask",
        categories: Mapping[str, Sequence[Any]] | None = None,
        max_categories: int = 50,
    ) -> None:
        if missing not in ("mask", "raise"):
            raise DataError(f"missing must be 'mask' or 'raise', got {missing!r}", "missing")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.standardize = standardize
        self.missing = missing
        self.fixed_categories = {
            k: [str(v) for v in vals] for k, vals in (categories or {}).items()
        }
        self.max_categories = int(max_categories)
        self.mean_: dict[str, float] = {}
        self.std_: dict[str, float] = {}
        self.categories_: dict[str, list[str]] = {}
        self.fitted = False

    def _check_missing(self, frame: Any, where: str) -> None:
        if self.missing != "raise":
            return
        for col in self.numeric + self.categorical:
            isna = frame[col].isna().to_numpy()
            if isna.any():
                row = frame.index[int(np.flatnonzero(isna)[0])]
                raise DataError(
                    f"column {col!r} has {int(isna.sum())} missing values (first at row {row}); "
                    "use missing='mask' to impute them with indicator columns",
                    where,
                )

    def _numeric(self, frame: Any, col: str) -> np.ndarray:
        pd = _pd()
        try:
            values = pd.to_numeric(frame[col], errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        except (ValueError, TypeError) as err:
            raise DataError(
                f"numeric column {col!r} holds non-numeric values ({err})", col
            ) from err
        if np.isinf(values).any():
            row = frame.index[int(np.flatnonzero(np.isinf(values))[0])]
            raise DataError(f"numeric column {col!r} holds an infinite value at row {row}", col)
        return values

    def fit(self, frame: Any) -> TableEncoder:
        """Fit means, standard deviations and category lists on ``frame`` (the support rows)."""
        if len(frame) == 0:
            raise DataError("cannot fit the encoder on zero rows", "support")
        self._check_missing(frame, "support")
        for col in self.numeric:
            v = self._numeric(frame, col)
            ok = v[~np.isnan(v)]
            mean = float(ok.mean()) if ok.size else 0.0
            std = float(ok.std()) if ok.size > 1 else 0.0
            self.mean_[col] = mean
            self.std_[col] = std if std > 1e-12 else 1.0
        for col in self.categorical:
            if col in self.fixed_categories:
                self.categories_[col] = list(self.fixed_categories[col])
                continue
            vals = frame[col].dropna().astype(str)
            counts = vals.value_counts(sort=False)
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            self.categories_[col] = sorted(k for k, _ in ranked[: self.max_categories])
        self.fitted = True
        return self

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, in order."""
        names: list[str] = []
        for col in self.numeric:
            names.append(col)
            if self.missing == "mask":
                names.append(f"{col}__missing")
        for col in self.categorical:
            names.extend(f"{col}={c}" for c in self.categories_.get(col, []))
            names.append(f"{col}={_OTHER}")
            if self.missing == "mask":
                names.append(f"{col}__missing")
        return names

    def transform(self, frame: Any) -> np.ndarray:
        """Encode ``frame`` with the fitted statistics: float32 ``[rows, len(feature_names)]``."""
        if not self.fitted:
            raise DataError("the encoder is not fitted; call fit(support) first", "encoder")
        self._check_missing(frame, "rows")
        n = len(frame)
        blocks: list[np.ndarray] = []
        for col in self.numeric:
            v = self._numeric(frame, col)
            miss = np.isnan(v)
            z = (v - self.mean_[col]) / self.std_[col] if self.standardize else v - 0.0
            z = np.where(miss, 0.0 if self.standardize else self.mean_[col], z)
            blocks.append(z[:, None])
            if self.missing == "mask":
                blocks.append(miss[:, None].astype(np.float64))
        for col in self.categorical:
            cats = self.categories_[col]
            raw = frame[col]
            miss = raw.isna().to_numpy()
            vals = raw.astype(str).to_numpy()
            lookup = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((n, len(cats) + 1))
            for i, (v, m) in enumerate(zip(vals, miss, strict=True)):
                if not m:
                    onehot[i, lookup.get(v, len(cats))] = 1.0
            blocks.append(onehot)
            if self.missing == "mask":
                blocks.append(miss[:, None].astype(np.float64))
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def fit_transform(self, frame: Any) -> np.ndarray:
        return self.fit(frame).transform(frame)


class ClinicalTable(_Labelled):
    """Raw feature columns with integer labels (the same container protocol as
    :class:`~medmeta.data.dataset.ArrayDataset`: ``len``, ``classes``, ``indices_by_class``,
    ``subset``, ``groups``).

    Attributes:
        frame: pandas DataFrame of the feature columns (raw values, NaN where missing).
        numeric_columns, categorical_columns: the column types used by :meth:`encoder`.
        y: int64 labels ``[N]``.
    """

    def __init__(
        self,
        frame: Any,
        y: Any,
        class_names: Sequence[str],
        groups: Any = None,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        n = len(frame)
        self.frame = frame.reset_index(drop=True)
        self.y = _check_labels(y, n, len(class_names), "y")
        self.numeric_columns = list(numeric)
        self.categorical_columns = list(categorical)
        self._init_common(n, class_names, len(class_names), groups, meta, None, ())

    @property
    def labels(self) -> np.ndarray:
        return self.y

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.frame.iloc[index], int(self.y[index])

    def indices_by_class(self) -> dict[int, np.ndarray]:
        return {k: np.flatnonzero(self.y == k) for k in range(self.num_classes)}

    def subset(self, indices: Any) -> ClinicalTable:
        idx = _index_array(indices, len(self))
        return ClinicalTable(
            self.frame.iloc[idx],
            self.y[idx],
            self.class_names,
            None if self.groups is None else self.groups[idx],
            numeric=self.numeric_columns,
            categorical=self.categorical_columns,
            meta=self.meta,
        )

    def encoder(self, **kwargs: Any) -> TableEncoder:
        """An unfitted :class:`TableEncoder` for this table's columns."""
        return TableEncoder(self.numeric_columns, self.categorical_columns, **kwargs)

    def episode(
        self, support: Any, query: Any, **encoder_kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Encode one episode with an encoder fitted on the support rows only.

        Returns ``(x_support [S, D], y_support [S], x_query [Q, D], y_query [Q])``, float32
        features and int64 labels.
        """
        s = _index_array(support, len(self))
        q = _index_array(query, len(self))
        enc = self.encoder(**encoder_kwargs).fit(self.frame.iloc[s])
        return (
            enc.transform(self.frame.iloc[s]),
            self.y[s],
            enc.transform(self.frame.iloc[q]),
            self.y[q],
        )

    def to_dataset(self, fit_on: Any = None, **encoder_kwargs: Any) -> ArrayDataset:
        """Encode every row with an encoder fitted on the rows ``fit_on`` (default: all rows;
        pass the training rows to avoid leaking test statistics)."""
        idx = np.arange(len(self)) if fit_on is None else _index_array(fit_on, len(self))
        enc = self.encoder(**encoder_kwargs).fit(self.frame.iloc[idx])
        return ArrayDataset(
            enc.transform(self.frame),
            self.y,
            self.class_names,
            self.groups,
            meta={**self.meta, "feature_names": enc.feature_names},
        )

    def __repr__(self) -> str:
        return (
            f"ClinicalTable(name={self.meta.get('name')!r}, n={len(self)}, "
            f"numeric={len(self.numeric_columns)}, categorical="
            f"{len(self.categorical_columns)}, classes={self.num_classes})"
        )


#: Default cap on the columns of a table (``max_columns=``): a header with more is refused
#: before pandas parses it (a few bytes per column make a 1-million-column file of 10 MB that
#: pandas takes minutes and gigabytes to parse).
MAX_COLUMNS = 100_000
_HEADER_BYTES = 64 << 20


def _count_columns(path: str, sep: str, max_columns: int | None) -> None:
    """Refuse a header line with more than ``max_columns`` separators-plus-one (an upper
    bound of its columns: quoted separators count too), read without pandas."""
    if max_columns is None:
        return
    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            line = f.readline(_HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read the table's header ({err})", path) from err
    count = line.count(sep.encode()) + 1
    if count > max_columns:
        raise DataError(
            f"the header has about {count:,} columns, above the limit of {max_columns:,} "
            "(max_columns=)",
            path,
        )


def _read_frame(path: str, max_bytes: int | None, max_columns: int | None) -> Any:
    pd = _pd()
    if not os.path.isfile(path):
        raise DataError("file not found", path)
    check_size(os.path.getsize(path), max_bytes, path, "the table file")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            try:
                import pyarrow.parquet as pq
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise missing_extra("pyarrow", err) from err
            count = pq.read_metadata(path).num_columns
            if max_columns is not None and count > max_columns:
                raise DataError(f"the table has {count:,} columns, above the limit of "
                                f"{max_columns:,} (max_columns=)", path)  # fmt: skip
            return pd.read_parquet(path)
        if lower.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")):
            sep = "\t" if ".tsv" in lower else ","
            _count_columns(path, sep, max_columns)
            return pd.read_csv(path, sep=sep)
    except (ImportError, DataError):
        raise
    except Exception as err:
        raise DataError(
            f"cannot read the table ({type(err).__name__}: {err}); the file is "
            "corrupt, truncated or not in the expected format",
            path,
        ) from err
    raise DataError("unknown table format; expected .csv, .tsv or .parquet", path)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def read_table(
    path: str | os.PathLike[str],
    target: str,
    *,
    columns: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] | None = None,
    group_column: str | None = None,
    class_names: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_columns: int | None = MAX_COLUMNS,
    name: str | None = None,
) -> ClinicalTable:
    """Read a clinical table with one row per example.

    Args:
        path: ``.csv``, ``.tsv`` (optionally ``.gz``) or ``.parquet`` file.
        target: the label column. Its distinct values (sorted) become the classes unless
            ``class_names`` fixes them; a missing target value raises :class:`DataError`.
        columns: the feature columns (default: every column but the target, the group column
            and ``drop``).
        drop: columns to leave out (identifiers, leaky columns).
        categorical: the categorical feature columns (default: text, boolean and category
            columns); the other feature columns must be numeric.
        group_column: a column of patient/source ids, used as ``groups``.
        class_names: the classes in label order; target values outside it raise.
        max_bytes: refuse files larger than this.
        max_columns: refuse tables with more columns than this (checked on the header line,
            before parsing).
        name: dataset name for ``meta["name"]``.
    """
    pd = _pd()
    p = os.fspath(path)
    frame = _read_frame(p, max_bytes, max_columns)
    available = [str(c) for c in frame.columns]
    for col, what in [(target, "target"), (group_column, "group_column")]:
        if col is not None and col not in frame.columns:
            raise DataError(f"{what} column {col!r} not found; columns are {available}", p)
    for col in list(drop) + list(columns or []) + list(categorical or []):
        if col not in frame.columns:
            raise DataError(f"column {col!r} not found; columns are {available}", p)
    if len(frame) == 0:
        raise DataError("the table has no rows", p)
    tcol = frame[target]
    isna = tcol.isna().to_numpy()
    if isna.any():
        rows = np.flatnonzero(isna)
        raise DataError(
            f"target column {target!r} has {rows.size} missing (NaN/empty) values, first at "
            f"row {int(rows[0])} (0-based data row); drop or label those rows",
            p,
        )
    values = tcol.map(_fmt_value).to_numpy()
    if class_names is None:
        names = sorted(set(values))
    else:
        names = [str(c) for c in class_names]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DataError(f"target values {unknown[:10]} are not in class_names", p)
    lookup = {c: i for i, c in enumerate(names)}
    y = np.array([lookup[v] for v in values], dtype=np.int64)
    exclude = {target, *drop} | ({group_column} if group_column else set())
    feats = list(columns) if columns is not None else [c for c in frame.columns if c not in exclude]
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))  # one lookup per column
    numeric = {c for c, t in dtypes.items()
               if pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)}  # fmt: skip
    if categorical is None:
        cat = [c for c in feats if c not in numeric]
    else:
        cat = [c for c in feats if c in set(categorical)]
    num = [c for c in feats if c not in set(cat)]
    for c in num:
        if not pd.api.types.is_numeric_dtype(dtypes[c]):
            raise DataError(f"column {c!r} is declared numeric but holds text values", p)
    groups = None
    if group_column is not None:
        g = frame[group_column]
        if g.isna().any():
            raise DataError(f"group column {group_column!r} has missing values", p)
        groups = g.map(_fmt_value).to_numpy().astype(str)
    na_counts = dict(zip(frame.columns, frame.isna().sum().to_numpy().tolist(), strict=True))
    missing = {c: int(na_counts[c]) for c in feats if na_counts[c]}
    meta = {
        "name": name or os.path.splitext(os.path.basename(p))[0],
        "format": "table",
        "target": target,
        "missing_counts": missing,
    }
    return ClinicalTable(frame[feats], y, names, groups, numeric=num, categorical=cat, meta=meta)
