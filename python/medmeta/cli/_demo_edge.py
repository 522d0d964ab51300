"""The demo's check of its ONNX export with the torch-free edge runtime: the raw support and
query examples are written as a device would get them (an ``.npz`` of images or signals, a
CSV file of table rows), ``medmeta predict`` runs on them in a process where torch cannot be
imported, and its probabilities are compared with eager PyTorch's."""

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

__all__ = ["PARITY_TOLERANCE", "edge_check", "raw_examples", "write_inputs"]

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
        target = TARGET_NAMES[0]
        if target in raw.columns:
            raise ValueError(f"the rows already have a {target!r} column")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*raw.columns, target])
        for row, label in zip(raw.values.tolist(), labels.tolist(), strict=True):
            writer.writerow([*row, names[label]])
        return atomic_write_bytes(stem.with_suffix(".csv"), buffer.getvalue().encode("utf-8"))
    x = np.asarray(raw)
    key = "images" if x.dtype == np.uint8 else "X"
    data = io.BytesIO()
    np.savez(data, **{key: x}, labels=np.asarray(labels, np.int64), class_names=np.asarray(names))
    return atomic_write_bytes(stem.with_suffix(".npz"), data.getvalue())


def _predict(model: Path, queries: Path, extra: list[str], out: Path, label: str) -> Any:
    proc = run_without_torch(["predict", "--model", str(model), "--inputs", str(queries),
                              *extra, "--out", str(out)])  # fmt: skip
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        raise CheckFailed(f"`medmeta predict` without torch failed on the {label} model: {last}")
    return np.load(out)


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
        got = _predict(model, queries, extra, folder / f"{label}_predictions.npz", label)
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
