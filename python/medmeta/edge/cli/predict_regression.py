"""``predict`` with a regressor (an ONNX file of role ``"regressor"``, run by the torch-free
:class:`~medmeta.edge.EdgeRegressor`): per input the prediction and its central interval,
in the target's units.

Inputs: table rows (``.csv`` / ``.tsv``; ``medmeta predict`` also Parquet), read as plain
rows so every column is kept, or vectors (``.npz``, ``.h5ad``, an embedded set) through the
command's :class:`~medmeta.edge.cli.predict.Readers`, put in the model's feature order by
name when they have names. The target column (its name is in the model's metadata), when
present, is removed from the inputs and is the truth: a missing value there just means no
truth for that row. With truth, the summary has the MSE, R² and the interval's coverage.

``--out`` writes ``.csv`` / ``.json`` (columns ``input, prediction, lower, upper``, then
``true`` when there is truth and ``unknown`` for table categories the model never saw) or
``.npz`` (arrays ``prediction, lower, upper, member_std``, ``true``, ``ids``, ``level``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.edge.cli.errors import UsageError
from medmeta.edge.cli.predict import (
    Inputs,
    Readers,
    _read_note,
    _unknown_categories,
    finish_output,
    in_model_order,
    table_ids,
    write_rows,
)
from medmeta.edge.errors import DataError
from medmeta.edge.regressor import EdgeRegressor
from medmeta.edge.results import RegressionPrediction
from medmeta.edge.table import TableRows, _numbers, read_csv_rows

__all__ = ["read_regression_inputs", "regression_summary", "run", "split_truth"]


def read_regression_inputs(items: Sequence[str], readers: Readers) -> Inputs:
    """``--inputs`` of a regressor: one table file as plain rows (no class column split off),
    anything else through ``readers.inputs`` (class labels, if any, are not a regression
    truth and are dropped)."""
    path = Path(items[0])
    if len(items) == 1 and path.suffix.lower() in readers.table_suffixes:
        read = readers.table_rows or read_csv_rows
        try:
            rows = read(path)
        except DataError:  # names the file already
            raise
        except ValueError as err:
            raise DataError(str(err), str(path)) from None
        return Inputs(rows, table_ids(rows), note=f"{path}: {len(rows)} table rows")
    inputs = readers.inputs(items)
    raw = inputs.raw
    if isinstance(raw, np.ndarray) and raw.dtype == object and raw.ndim == 0:
        raw = raw.item()  # a table data set wrapped by np.asarray
    if isinstance(raw, list):
        raw = np.stack([np.asarray(r) for r in raw]) if raw else np.zeros((0, 0), np.float32)
    return dataclasses.replace(inputs, raw=raw, labels=None, class_names=None)


def split_truth(inputs: Inputs, target: str) -> tuple[Inputs, np.ndarray | None]:
    """``(inputs without the target, truth [n] float64 with NaN where missing)`` when the
    target is a table column or a named vector column; ``(inputs, None)`` otherwise.

    Raises:
        DataError: a target value that is not a number (column and row named).
    """
    raw = inputs.raw
    if isinstance(raw, TableRows):
        if target not in raw.columns:
            return inputs, None
        try:
            truth = _numbers(raw.column(target), target)
        except ValueError as err:
            raise DataError(f"the target {err}", "--inputs") from None
        return dataclasses.replace(inputs, raw=raw.drop([target])), truth
    names = inputs.feature_names
    if names is None or target not in names:
        return inputs, None
    j = names.index(target)
    x = np.asarray(raw)
    keep = [i for i in range(x.shape[1]) if i != j]
    truth = x[:, j].astype(np.float64)
    truth[~np.isfinite(truth)] = np.nan
    return dataclasses.replace(inputs, raw=x[:, keep],
                               feature_names=[names[i] for i in keep]), truth  # fmt: skip


def regression_summary(pred: RegressionPrediction, truth: np.ndarray | None) -> dict[str, Any]:
    """Level, count and mean interval width; with truth (rows with a value only): MSE, R²
    (None with fewer than 2 values or constant values) and the interval's coverage."""
    width = pred.upper.astype(np.float64) - pred.lower
    out: dict[str, Any] = {"target": pred.target, "level": pred.level, "inputs": len(pred),
                           "mean_width": float(width.mean()) if len(pred) else None}  # fmt: skip
    if truth is None:
        return out
    has = ~np.isnan(truth)
    out["with_truth"] = int(has.sum())
    if not has.any():
        return out
    y, p = truth[has], pred.prediction[has].astype(np.float64)
    sse = float(((y - p) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    # R² undefined for constant truth, as medmeta.eval.regression.r2 (MIN_SCALE = 1e-6)
    defined = len(y) > 1 and math.sqrt(sst / len(y)) > 1e-6 * (1 + abs(float(y.mean())))
    inside = (pred.lower[has] <= y) & (y <= pred.upper[has])
    out.update(mse=sse / len(y), r2=1 - sse / sst if defined else None,
               coverage=float(inside.mean()))  # fmt: skip
    return out


def _rows(pred: RegressionPrediction, ids: list[str], truth: np.ndarray | None,
          unknown: list[list[str]] | None) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for i, name in enumerate(ids):
        row: dict[str, Any] = {"input": name, "prediction": float(pred.prediction[i]),
                               "lower": float(pred.lower[i]), "upper": float(pred.upper[i])}  # fmt: skip
        if truth is not None:
            row["true"] = None if math.isnan(truth[i]) else float(truth[i])
        if unknown is not None:
            row["unknown"] = ";".join(unknown[i])
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict[str, Any]], pred: RegressionPrediction,
           truth: np.ndarray | None) -> None:  # fmt: skip
    def arrays() -> dict[str, Any]:
        out: dict[str, Any] = {
            "ids": np.asarray([r["input"] for r in rows], dtype=str),
            "prediction": pred.prediction, "lower": pred.lower, "upper": pred.upper,
            "member_std": pred.member_std, "level": np.asarray(pred.level),
            "target": np.asarray(pred.target),
        }  # fmt: skip
        if truth is not None:
            out["true"] = truth
        return out

    write_rows(path, rows, ["input", "prediction", "lower", "upper"], arrays)


def _print_text(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """One line per input (prediction, interval, truth, unknown categories), then totals."""
    for r in rows:
        print(
            f"{r['input']}\t{r['prediction']:.4g}\t[{r['lower']:.4g}, {r['upper']:.4g}]"
            + (f"\ttrue {r['true']:.4g}" if r.get("true") is not None else "")
            + (f"\t(unknown: {r['unknown']})" if r.get("unknown") else "")
        )
    if "read" in summary:
        print(f"read: {summary['read']}", file=sys.stderr)
    tail = (f"{summary['inputs']} inputs; {summary['target']} with "
            f"{100 * summary['level']:g}% intervals")  # fmt: skip
    if summary.get("mse") is not None:
        r2 = "undefined" if summary["r2"] is None else f"{summary['r2']:.3f}"
        tail += (f"; on the {summary['with_truth']} with a true value: MSE {summary['mse']:.4g}, "
                 f"R² {r2}, coverage {100 * summary['coverage']:.1f}%")  # fmt: skip
    if summary.get("rows_with_unknown_categories"):
        tail += f"; {summary['rows_with_unknown_categories']} with unknown categories"
    print(tail)


def run(args: Any, readers: Readers) -> int:
    """``predict`` for the regressor ``args.model`` (arguments parsed by
    :func:`medmeta.edge.cli.predict.main`)."""
    if args.support or args.classes:
        raise UsageError(
            f"{'--support' if args.support else '--classes'} does not apply to a regressor: its "
            "support set was built in when it was adapted (`medmeta adapt`, then `medmeta "
            "export`); give only --inputs"
        )
    model = EdgeRegressor(args.model, threads=args.threads)
    inputs = read_regression_inputs(args.inputs, readers)
    inputs, truth = split_truth(inputs, model.target)
    inputs = in_model_order(model, inputs, "--inputs")
    try:
        pred = model.predict(inputs.raw)
    except (ValueError, TypeError) as err:  # a missing column, NaN, a wrong shape or dtype
        raise DataError(str(err), "--inputs") from err
    unknown = _unknown_categories(model, inputs.raw)
    rows = _rows(pred, inputs.ids, truth, unknown)
    summary = {"model": args.model, "role": "regressor", **regression_summary(pred, truth)}
    if inputs.note:
        summary["read"] = _read_note(inputs.note, model)
    return finish_output(args, rows, summary, unknown, lambda path: _write(path, rows, pred, truth),
                  _print_text)  # fmt: skip
