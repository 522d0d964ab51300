"""Few-shot regression data for the command line (``--task regression``).

Two layouts become a set of regression tasks (:class:`RegressionData`, then
:func:`make_tasks`):

* a **table** (``.csv`` / ``.tsv`` / ``.parquet`` or the embedded ``thyroid``): ``--target
  COLUMN`` holds the number to predict and ``--group-by COLUMN`` the task of each row (a
  clinic, a site): every value of it is one task. The target, the group column and the
  table's class column (``target``, ``label``, ... when present) are not inputs; the other
  columns are encoded by a :class:`~medmeta.edge.table.TableSpec` fitted on the training
  groups' rows (:func:`fit_preprocessing`);
* **vectors** (``.npz``, ``.h5ad``, an embedded expression set): ``--target FEATURE`` names
  one input column (a gene, or its index when the data has no feature names) that becomes
  the target and leaves the inputs; the classes (cell types) are the tasks.

A missing target is an error naming the column, the count and the first row, unless
``drop_missing`` (``--drop-missing-targets``) leaves those rows out. Loading and checks are
numpy only; :func:`make_tasks` imports torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.data import DataError
from medmeta.edge.cli.classes import parse_classes
from medmeta.edge.cli.errors import UsageError
from medmeta.edge.table import MISSING, TARGET_NAMES, TableRows

logger = logging.getLogger(__name__)

#: The class column of the embedded tables (``registry.load(name, rows=True)`` splits it off).
EMBEDDED_CLASS_COLUMN = "target"
TARGET_HELP = (
    "regression: the value to predict: a numeric column of a table, or a feature (gene name, "
    "or column index) of a vector set, which then leaves the inputs"
)
GROUP_HELP = (
    "regression on a table: the column whose values are the tasks (e.g. a clinic or site "
    "column); --classes / --val-classes pick its values. Vector sets: the classes are the tasks"
)


#: The flags of regression only: (flag, attribute of the parsed arguments).
REGRESSION_FLAGS = (("--target", "target"), ("--group-by", "group_by"),
                    ("--drop-missing-targets", "drop_missing_targets"), ("--members", "members"),
                    ("--level", "level"))  # fmt: skip


def reject_flags(args: Any, applies_to: str) -> None:
    """A :class:`UsageError` when a regression flag was given where it does not apply."""
    for flag, attr in REGRESSION_FLAGS:
        if getattr(args, attr, None):
            raise UsageError(f"{flag} applies to {applies_to}")


def level_arg(text: str) -> float:
    """An argparse ``type``: an interval level in (0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) (e.g. 0.9), got {value}")
    return value


def add_model_flags(parser: Any) -> None:
    """The regression flags of the commands that take a trained model (``eval``, ``adapt``):
    the data's task column and target (checked against the model's), missing targets, and
    the bootstrap interval (default: the model's)."""
    from medmeta.edge.cli.config import int_at_least

    parser.add_argument("--group-by", metavar="COLUMN", help="regression on a table: the "
                        "task column (default: the model's)")  # fmt: skip
    parser.add_argument("--target", help="regression: the model's target column (checked)")
    parser.add_argument("--drop-missing-targets", action="store_true",
                        help="regression: leave out rows whose target is missing")  # fmt: skip
    parser.add_argument("--members", type=int_at_least(2),
                        help="regression: bootstrap ensemble size (default: the model's)")  # fmt: skip
    parser.add_argument("--level", type=level_arg, help="regression: nominal coverage of the "
                        "interval (default: the model's)")  # fmt: skip


@dataclass(frozen=True)
class RegressionData:
    """Rows of a regression data source, each with a target and a task (group).

    Attributes:
        inputs: the input rows: :class:`TableRows` (target, group and class columns
            removed) or float32 vectors ``[n, F]`` (target feature removed).
        y: float64 targets ``[n]`` (finite).
        groups: int64 ``[n]``, each row's task as an index into ``group_names``.
        group_names: the task names (sorted values of the group column, or the classes).
        target: the target column / feature name.
        group_by: the table's group column (None for vectors: the classes).
        source: the data argument, for messages.
        feature_names: vectors: the names of the ``F`` input features (None if unknown).
        dropped: rows left out because their target was missing.
        row_ids: each row's 0-based data row in the source ``[n]``, for messages.
    """

    inputs: TableRows | np.ndarray
    y: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    target: str
    group_by: str | None
    source: str
    feature_names: list[str] | None = None
    dropped: int = 0
    row_ids: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """``"table"`` or ``"vector"``."""
        return "table" if isinstance(self.inputs, TableRows) else "vector"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows_of(self, group_ids: Sequence[int]) -> np.ndarray:
        """Indices of the rows of these groups, in row order."""
        return np.flatnonzero(np.isin(self.groups, np.asarray(list(group_ids), dtype=np.int64)))

    def counts(self) -> np.ndarray:
        """Rows per group ``[len(group_names)]``."""
        return np.bincount(self.groups, minlength=len(self.group_names))


# ------------------------------------------------------------------------------ loading


def is_table_source(spec: str) -> bool:
    """Whether ``--data`` names a table file or an embedded table."""
    from medmeta.data import registry
    from medmeta.data.formats.table_rows import TABLE_SUFFIXES

    if Path(spec).suffix.lower() in TABLE_SUFFIXES:
        return True
    known = {d.name for d in registry.list_datasets()}
    return spec in known and registry.dataset_info(spec).kind == "table"


def load_regression_data(
    spec: str,
    *,
    target: str | None,
    group_by: str | None,
    drop_missing: bool = False,
    single_task: bool = False,
) -> RegressionData:
    """The rows of ``spec`` with ``target`` as the value to predict.

    Args:
        spec: a ``--data`` / ``--support`` argument (see ``_data.DATA_HELP``).
        target: the target column (table) or feature (vectors).
        group_by: the task column of a table (must be None for vectors).
        drop_missing: leave out rows whose target is missing (with a warning) instead of
            refusing them.
        single_task: a table without the ``group_by`` column is one task (``medmeta adapt``
            on one clinic's file) instead of an error.

    Raises:
        UsageError: no ``target``; ``group_by`` missing for a table or given for vectors.
        DataError: the data cannot be read, lacks the column, or holds a non-numeric or
            (without ``drop_missing``) missing target.
    """
    if not target:
        raise UsageError("--target is required for regression: the numeric column (table) or "
                         "feature (vectors) to predict")  # fmt: skip
    if is_table_source(spec):
        rows, class_column = _table_rows(spec, target)
        return _from_table(rows, class_column, spec, target, group_by, drop_missing, single_task)
    if group_by is not None:
        raise UsageError(f"--group-by applies to tables; the tasks of {spec} are its classes "
                         "(pick them with --classes)")  # fmt: skip
    from medmeta.cli import _data

    return _from_vectors(_data.load_dataset(spec), spec, target, drop_missing)


def _table_rows(spec: str, target: str) -> tuple[TableRows, str | None]:
    """All rows of a table as text and the name of its class column (the first of
    ``TARGET_NAMES`` present other than ``target``; None if none), which is no input."""
    from medmeta.data import registry
    from medmeta.data.formats.table_rows import read_rows

    if not Path(spec).suffix:  # an embedded table: the registry drops its identifier columns
        ds = registry.load(spec, rows=True)
        labels = np.asarray(ds.class_names, dtype=str)[ds.labels]
        rows = TableRows((*ds.x.columns, EMBEDDED_CLASS_COLUMN),
                         np.column_stack([ds.x.values, labels]))  # fmt: skip
        return rows, EMBEDDED_CLASS_COLUMN
    if not Path(spec).is_file():
        raise DataError("file not found", spec)
    rows = read_rows(spec)
    column = next((c for c in TARGET_NAMES if c in rows.columns and c != target), None)
    if column is not None:
        logger.info("%s: column %r is taken as a class column, not an input", spec, column)
    return rows, column


def _from_table(
    rows: TableRows,
    class_column: str | None,
    source: str,
    target: str,
    group_by: str | None,
    drop_missing: bool,
    single_task: bool,
) -> RegressionData:
    columns = list(rows.columns)
    if target not in columns:
        raise DataError(f"--target: column {target!r} is not in the table; its columns are "
                        f"{columns}", source)  # fmt: skip
    if group_by is None and not single_task:
        raise UsageError("--group-by COLUMN is needed for a table: each of its values (a clinic, "
                         f"a site) is one task; the columns are {columns}")  # fmt: skip
    if group_by == target:
        raise UsageError(f"--group-by and --target name the same column {target!r}")
    if group_by is not None and group_by not in columns:
        if not single_task:
            raise DataError(f"--group-by: column {group_by!r} is not in the table; its columns "
                            f"are {columns}", source)  # fmt: skip
        logger.info("%s has no %r column: all its rows are one task", source, group_by)
        group_by = None
    y, keep = parse_targets(rows.column(target), target, source, drop_missing)
    if group_by is None:
        names, groups = [Path(source).stem or source], np.zeros(len(keep), dtype=np.int64)
    else:
        names, groups = _group_ids(rows.column(group_by)[keep], group_by, source, keep)
    drop = [c for c in (target, group_by, class_column) if c is not None]
    inputs = rows.drop(drop).take(keep)
    if not inputs.columns:
        raise DataError(f"no input columns are left once {drop} are removed", source)
    return RegressionData(inputs, y, groups, names, target, group_by, source,
                          dropped=len(rows) - len(keep), row_ids=keep)  # fmt: skip


def _group_ids(
    text: np.ndarray, column: str, source: str, rows: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Sorted group names and each row's index into them; a missing group is an error."""
    values = np.char.strip(np.asarray(text, dtype=str))
    missing = np.flatnonzero([v.lower() in MISSING for v in values])
    if missing.size:
        raise DataError(f"--group-by column {column!r} has {missing.size} missing values, first "
                        f"at data row {int(rows[missing[0]])} (0-based); every row needs a "
                        "task", source)  # fmt: skip
    names = sorted(set(values.tolist()))
    lookup = {n: i for i, n in enumerate(names)}
    return names, np.array([lookup[v] for v in values], dtype=np.int64)


def parse_targets(
    text: Any, column: str, source: str, drop_missing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Target cells (text or numbers ``[n]``) -> ``(y float64 [m], kept row indices [m])``.

    Raises:
        DataError: a cell that is not a number (column, row and value named), or missing
            targets without ``drop_missing`` (column, count and first row named).
    """
    cells = np.asarray(text)
    values = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if isinstance(cell, str | np.str_):
            if cell.strip().lower() in MISSING:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"--target column {column!r} must be numeric: data row {i} "
                                f"(0-based) holds {str(cell)!r}", source) from None  # fmt: skip
        else:
            value = float(cell)
            if math.isnan(value):
                continue
        if not math.isfinite(value):
            raise DataError(f"--target column {column!r}: data row {i} holds {value}, expected "
                            "a finite number", source)  # fmt: skip
        values[i] = value
    missing = np.flatnonzero(np.isnan(values))
    if missing.size and not drop_missing:
        raise DataError(f"--target column {column!r} has {missing.size} missing values of "
                        f"{len(values)}, first at data row {int(missing[0])} (0-based); give "
                        "--drop-missing-targets to leave those rows out", source)  # fmt: skip
    if missing.size:
        logger.warning("--drop-missing-targets: left out %d of %d rows whose %r is missing",
                       missing.size, len(values), column)  # fmt: skip
    keep = np.flatnonzero(~np.isnan(values))
    if keep.size == 0:
        raise DataError(f"--target column {column!r} holds no value", source)
    return values[keep], keep


def _from_vectors(ds: Any, source: str, target: str, drop_missing: bool) -> RegressionData:
    x = np.asarray(ds.x)
    if x.ndim != 2 or x.dtype.kind not in "uif":
        raise DataError(f"regression takes a table or feature vectors [N, F]; this data holds "
                        f"{x.dtype} arrays of shape {list(x.shape)}", source)  # fmt: skip
    names = ds.meta.get("gene_names")
    names = None if names is None or len(names) != x.shape[1] else [str(n) for n in names]
    j = _feature_index(target, names, x.shape[1], source)
    y, keep = parse_targets(x[:, j].astype(np.float64), str(target), source, drop_missing)
    inputs = np.delete(x, j, axis=1)[keep].astype(np.float32)
    features = None if names is None else names[:j] + names[j + 1 :]
    label = names[j] if names is not None else str(j)  # an index is read back as one
    return RegressionData(inputs, y, np.asarray(ds.labels, dtype=np.int64)[keep],
                          list(ds.class_names), label, None, source, features,
                          dropped=len(x) - len(keep), row_ids=keep)  # fmt: skip


def _feature_index(target: str, names: list[str] | None, width: int, source: str) -> int:
    """The column of ``target``: a feature name, else an index ``0..F-1``."""
    if names is not None and target in names:
        if names.count(target) > 1:
            raise DataError(f"--target: feature {target!r} appears {names.count(target)} times",
                            source)  # fmt: skip
        return names.index(target)
    if str(target).isdigit() and int(target) < width:
        return int(target)
    if names is None:
        raise DataError(f"--target: this data has no feature names; give a column index "
                        f"0..{width - 1}, got {target!r}", source)  # fmt: skip
    raise DataError(f"--target: no feature {target!r}; the {width} features include "
                    f"{names[:8]} (or give a column index 0..{width - 1})", source)  # fmt: skip


# ------------------------------------------------------------------------------ groups


def select_groups(data: RegressionData, spec: str | None, option: str) -> list[int]:
    """Group ids named by ``spec`` (names or ids as for ``--classes``); all groups that have
    rows when ``spec`` is empty."""
    try:
        ids = parse_classes(spec, data.group_names)
    except DataError as err:
        problem = err.problem
        for word, group in (("class", "group"), ("classes", "groups")):  # tasks are groups
            problem = problem.replace(f"{word} ", f"{group} ")
        raise DataError(problem, option) from None
    present = np.flatnonzero(data.counts() > 0).tolist()
    if ids is None:
        return present
    empty = [data.group_names[i] for i in ids if i not in present]
    if empty:
        raise DataError(f"no rows in group(s) {empty} (their targets are all missing?)", option)
    return ids


def usable_groups(data: RegressionData, ids: Sequence[int], need: int, option: str) -> list[int]:
    """The groups of ``ids`` with at least ``need`` rows (shots + queries); the others are
    skipped with a warning naming them, and none left is a :class:`DataError`."""
    counts = data.counts()
    small = [f"{data.group_names[i]!r} ({counts[i]} rows)" for i in ids if counts[i] < need]
    kept = [i for i in ids if counts[i] >= need]
    if not kept:
        raise DataError(f"every selected group has fewer than shots + queries = {need} rows: "
                        f"{', '.join(small)}", option)  # fmt: skip
    if small:
        logger.warning("%s: skipping %d group(s) with fewer than shots + queries = %d rows: %s",
                       option, len(small), need, ", ".join(small))  # fmt: skip
    return kept


# ------------------------------------------------------------------------ preprocessing


def binary_columns(rows: TableRows) -> list[str]:
    """Columns whose present values are all ``0`` / ``1`` (clinical flags). They are encoded
    one-hot (unscaled): standardised, a rare flag sits tens of standard deviations from 0
    and makes the inner SGD of the MAML family diverge."""
    out = []
    for name in rows.columns:
        present = {v.strip() for v in rows.column(name) if v.strip().lower() not in MISSING}
        if present and present <= {"0", "1"}:
            out.append(name)
    return out


def fit_preprocessing(data: RegressionData, rows: np.ndarray) -> Any:
    """The model's :class:`~medmeta.edge.Preprocessing`, fitted on ``rows`` (the training
    groups' rows) only: a table's :class:`~medmeta.edge.table.TableSpec` (0/1 flags
    one-hot, see :func:`binary_columns`), or the vectors' per-feature mean and standard
    deviation (a constant feature gets 1)."""
    from medmeta.edge.preprocess import Preprocessing
    from medmeta.edge.table import TableSpec

    if isinstance(data.inputs, TableRows):
        train = data.inputs.take(rows)
        try:
            spec = TableSpec.fit(train, categorical=binary_columns(train))
        except ValueError as err:
            raise DataError(str(err), data.source) from None
        return Preprocessing.for_table(spec)
    x = np.asarray(data.inputs, dtype=np.float64)[rows]
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)
    return Preprocessing.for_vectors(x.shape[1], mean.tolist(), std.tolist(),
                                     features=data.feature_names)  # fmt: skip


def encode(data: RegressionData, preprocessing: Any) -> np.ndarray:
    """The inputs through ``preprocessing``: float32 ``[n, F]``."""
    try:
        return preprocessing(data.inputs)
    except (ValueError, TypeError) as err:  # a column missing, text in a numeric column, NaN
        raise DataError(str(err), data.source) from None


def with_groups(data: RegressionData, keep: Sequence[int]) -> RegressionData:
    """``data`` restricted to the rows of the groups ``keep``."""
    rows = data.rows_of(keep)
    inputs = data.inputs.take(rows) if isinstance(data.inputs, TableRows) else data.inputs[rows]
    ids = None if data.row_ids is None else data.row_ids[rows]
    return replace(data, inputs=inputs, y=data.y[rows], groups=data.groups[rows], row_ids=ids)


def make_tasks(data: RegressionData, x: np.ndarray, group_ids: Sequence[int], name: str) -> Any:
    """:class:`~medmeta.data.regression_tasks.RegressionTasks`, one task per group: its
    rows of the encoded inputs ``x [n, F]`` and their targets."""
    import torch

    from medmeta.data.regression_tasks import RegressionTask, RegressionTasks

    tasks = []
    for g in group_ids:
        rows = np.flatnonzero(data.groups == g)
        tasks.append(RegressionTask(data.group_names[g], torch.from_numpy(x[rows]),
                                    torch.from_numpy(data.y[rows].astype(np.float32)),
                                    group=data.group_names[g], target=data.target))  # fmt: skip
    features = data.feature_names if data.kind == "vector" else None
    return RegressionTasks(tasks, feature_names=features, name=name)


# ----------------------------------------------------------------------- a model's data


def model_data(
    card: dict[str, Any],
    spec: str,
    *,
    target: str | None,
    group_by: str | None,
    drop_missing: bool,
    single_task: bool = False,
) -> RegressionData:
    """``spec`` read for a regression model whose card is ``card``: its target (``target``
    must agree when given) and its group column (``group_by`` overrides it)."""
    trained = str(card["target"]["name"])
    if target is not None and target != trained:
        raise UsageError(f"--target {target}: this model predicts {trained!r}; leave --target "
                         "out or train a model for that target")  # fmt: skip
    kind = card["preprocessing"]["kind"]
    if group_by is None and kind == "table":
        group_by = card.get("training", {}).get("group_by")
    data = load_regression_data(spec, target=trained, group_by=group_by,
                                drop_missing=drop_missing, single_task=single_task)  # fmt: skip
    if (data.kind == "table") != (kind == "table"):
        what = "table rows" if kind == "table" else "feature vectors"
        raise DataError(f"the model takes {what}; this data holds {data.kind}s", spec)
    return data


def encode_for_model(data: RegressionData, preprocessing: Any) -> np.ndarray:
    """The inputs as the model takes them ``[n, F]``: vectors with feature names are first
    put in the model's feature order (by name), then ``preprocessing`` runs; table
    categories never seen in training are encoded as unknown with a warning naming them."""
    inputs = data.inputs
    if isinstance(inputs, TableRows) and preprocessing.table is not None:
        ids = np.arange(len(data)) if data.row_ids is None else data.row_ids
        _warn_unknown(preprocessing.table.unknown(inputs), ids, data.source)
    if data.kind == "vector" and preprocessing.features and data.feature_names:
        try:
            order = preprocessing.feature_order(data.feature_names)
        except ValueError as err:
            raise DataError(str(err), data.source) from None
        inputs = np.asarray(inputs)[:, order]
    return encode(replace(data, inputs=inputs), preprocessing)


def _warn_unknown(unknown: list[list[str]], row_ids: np.ndarray, source: str) -> None:
    """Warn about rows whose categories the model never saw (``TableSpec.unknown``), naming
    the first by its data row in the source."""
    rows = [i for i, u in enumerate(unknown) if u]
    if rows:
        values = sorted({v for i in rows for v in unknown[i]})
        logger.warning("%s: %d row(s) hold categories never seen in training, encoded as unknown "
                       "(first at data row %d (0-based): %s; all: %s)", source, len(rows),
                       int(row_ids[rows[0]]), ", ".join(unknown[rows[0]]),
                       ", ".join(values[:10]))  # fmt: skip
