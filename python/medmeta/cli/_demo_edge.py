"""The demo's check of its ONNX export with the torch-free edge runtime: the raw support and
query examples are written as a device would get them (an ``.npz`` of images or signals, a
CSV file of table rows), ``medmeta predict`` runs on them in a process where torch cannot be
imported, and its probabilities (a regressor: predictions and interval bounds) are compared
with eager PyTorch's."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from medmeta._files import atomic_write_bytes
from medmeta.cli._torchfree import run_without_torch
from medmeta.edge.cli.errors import CheckFailed
from medmeta.edge.table import TARGET_NAMES, TableRows

__all__ = [
    "PARITY_TOLERANCE",
    "edge_check",
    "predict_without_torch",
    "raw_examples",
    "regression_edge_check",
    "write_inputs",
    "write_rows",
]

#: Float32 ONNX probabilities must match eager PyTorch this closely (the issue's bound).
PARITY_TOLERANCE = 1e-5


def raw_examples(data: Any, index: np.ndarray) -> Any:
    """The raw inputs at ``index`` of a data set: table rows or an array ``[n, ...]``."""
    if isinstance(data.x, TableRows):
        return data.x.take(index)
    return np.asarray(data.x)[index]


def write_inputs(stem: Path, raw: Any, labels: np.ndarray, names: list[str]) -> Path:
    """Raw labelled examples as ``medmeta predict`` reads them from a device's files.

    Args:
        stem: the file's path without suffix.
        raw: table rows (:class:`~medmeta.edge.table.TableRows`) -> ``stem.csv`` with a
            ``target`` column of class names; uint8 images ``[n, H, W(, C)]`` -> ``stem.npz``
            (key ``images``); float signals ``[n, C, L]`` or vectors ``[n, F]`` ->
            ``stem.npz`` (key ``X``), each with ``labels`` ``[n]`` in ``[0, N)`` and
            ``class_names`` ``[N]``.
        labels: ``[n]`` int labels into ``names``.
        names: the N class names.

    Returns:
        The file written (atomically).
    """
    if isinstance(raw, TableRows):
        return write_rows(stem.with_suffix(".csv"), raw,
                          {TARGET_NAMES[0]: [names[k] for k in labels.tolist()]})  # fmt: skip
    x = np.asarray(raw)
    key = "images" if x.dtype == np.uint8 else "X"
    data = io.BytesIO()
    np.savez(data, **{key: x}, labels=np.asarray(labels, np.int64), class_names=np.asarray(names))
    return atomic_write_bytes(stem.with_suffix(".npz"), data.getvalue())


def write_rows(path: Path, rows: TableRows, extra: dict[str, list[str]]) -> Path:
    """Table rows as a CSV file (atomically), with the ``extra`` columns ``{name: [n]
    cells}`` appended (class names, a regression target); a name the rows already have is
    a ``ValueError``."""
    clash = [name for name in extra if name in rows.columns]
    if clash:
        raise ValueError(f"the rows already have a {clash[0]!r} column")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*rows.columns, *extra])
    for i, row in enumerate(rows.values.tolist()):
        writer.writerow([*row, *(cells[i] for cells in extra.values())])
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def predict_without_torch(model: Path, inputs: Path, extra: list[str], out: Path,
                          label: str) -> Any:  # fmt: skip
    """``medmeta predict --model MODEL --inputs INPUTS [EXTRA] --out OUT.npz`` in a process
    where torch cannot be imported; returns the loaded ``.npz``.

    Raises:
        CheckFailed: the command failed (its last error line is named).
    """
    proc = run_without_torch(["predict", "--model", str(model), "--inputs", str(inputs),
                              *extra, "--out", str(out)])  # fmt: skip
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        raise CheckFailed(f"`medmeta predict` without torch failed on the {label} model: {last}")
    return np.load(out, allow_pickle=False)


def edge_check(
    folder: Path, export: Any, raw_support: Any, support_y: np.ndarray, raw_queries: Any,
    query_y: np.ndarray, names: list[str], expected: np.ndarray, prototypes: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``medmeta predict`` without torch on the classifier (and, with the enrolment
    pair, after enrolling the raw support set on the device) and compare with PyTorch.

    Args:
        folder: where the input files and predictions go.
        export: the :class:`~medmeta.export.ExportResult` (``classifier``, ``embedder``).
        raw_support, raw_queries: raw examples (see :func:`write_inputs`).
        support_y, query_y: ``[S]``, ``[n]`` labels into ``names``.
        expected: ``[n, N]`` eager PyTorch probabilities of the queries.
        prototypes: ``[N, D]`` PyTorch prototypes (compared with the device's enrolment).

    Returns:
        ``{"classifier": {...}, "enrolment": {...}}``: ``max_abs_diff`` of the
        probabilities, label ``agreement`` with PyTorch, ``accuracy``, and for the
        enrolment ``prototype_max_abs_diff``.

    Raises:
        CheckFailed: ``medmeta predict`` failed.
    """
    support = write_inputs(folder / "support", raw_support, support_y, names)
    queries = write_inputs(folder / "queries", raw_queries, query_y, names)
    checks: dict[str, Any] = {}
    runs = [("classifier", export.classifier, [])]
    if export.embedder is not None:
        runs.append(("enrolment", export.embedder, ["--support", str(support)]))
    for label, model, extra in runs:
        got = predict_without_torch(model, queries, extra, folder / f"{label}_predictions.npz",
                                    label)  # fmt: skip
        probs = got["probabilities"]
        checks[label] = {
            "max_abs_diff": float(np.abs(probs - expected).max()),
            "agreement": float((probs.argmax(-1) == expected.argmax(-1)).mean()),
            "accuracy": float((probs.argmax(-1) == query_y).mean()),
            "torch_free": True,
        }
        if label == "enrolment" and prototypes is not None and "prototypes" in got:
            checks[label]["prototype_max_abs_diff"] = float(
                np.abs(got["prototypes"] - prototypes).max()
            )
    worst = max(c["max_abs_diff"] for c in checks.values())
    if worst > PARITY_TOLERANCE:
        raise CheckFailed(f"the edge runtime's probabilities differ from PyTorch by {worst:.2e} "
                          f"(> {PARITY_TOLERANCE:g}); see {folder}")  # fmt: skip
    return checks


def regression_edge_check(
    folder: Path, onnx: Path, rows: TableRows, target: str, truth: np.ndarray,
    expected: dict[str, np.ndarray],
) -> dict[str, Any]:  # fmt: skip
    """Run ``medmeta predict`` without torch on an exported regressor and raw table rows
    with the target column, and compare with PyTorch.

    Args:
        folder: where ``rows.csv`` and ``predictions.npz`` go.
        onnx: the regressor (:func:`medmeta.export.regressor_to_onnx`).
        rows: the raw rows (text, as in the table; the target column not among them).
        target: the target column's name, written after the rows' columns.
        truth: ``[n]`` float targets of the rows (written as text, read back by the device).
        expected: PyTorch's ``"prediction"``, ``"lower"``, ``"upper"`` ``[n]``.

    Returns:
        ``rows``, ``relative_diff`` (the largest |device - PyTorch| over the three outputs,
        divided by their largest |value|), ``max_abs_diff`` and, from the device's
        predictions and the truth it read, ``mse`` and ``coverage``.

    Raises:
        CheckFailed: ``medmeta predict`` failed, read another truth, or differs from PyTorch
            by more than :data:`PARITY_TOLERANCE` relative.
    """
    path = write_rows(folder / "rows.csv", rows, {target: [repr(float(v)) for v in truth]})
    got = predict_without_torch(onnx, path, [], folder / "predictions.npz", "regressor")
    if "true" not in got or not np.array_equal(got["true"], truth):
        raise CheckFailed(f"the edge runtime did not read the {target!r} column of {path} as "
                          "the rows' true values")  # fmt: skip
    keys = ("prediction", "lower", "upper")
    diff = max(float(np.abs(got[k].astype(np.float64) - expected[k]).max()) for k in keys)
    scale = max(float(np.abs(expected[k]).max()) for k in keys) or 1.0
    if not diff <= PARITY_TOLERANCE * scale:  # NaN fails too
        raise CheckFailed(f"the edge runtime's predictions differ from PyTorch by {diff:.2e} "
                          f"(> {PARITY_TOLERANCE:g} x {scale:.3g}, the largest |value|); see "
                          f"{folder}")  # fmt: skip
    inside = (got["lower"] <= truth) & (truth <= got["upper"])
    return {"rows": len(truth), "max_abs_diff": diff, "relative_diff": diff / scale,
            "mse": float(((got["prediction"] - truth) ** 2).mean()),
            "coverage": float(inside.mean()), "torch_free": True}  # fmt: skip
