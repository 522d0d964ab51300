"""What a report shows (:class:`ReportData`), where it was written (:class:`ReportPaths`),
the checks run on the data before anything is written, and its JSON form."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.eval.evaluate import EvalResult

__all__ = ["FORMAT", "ReportData", "ReportPaths", "check_report_data", "to_jsonable"]

#: ``format`` field of ``report.json``.
FORMAT = "medmeta.report/1"


@dataclass
class ReportData:
    """Everything a report can show; every part but ``title`` and ``summary`` is optional
    (``None`` or empty parts are left out of the report).

    Attributes:
        title: e.g. ``"medmeta demo: blood cells, 3-way 5-shot"``.
        summary: ordered ``(key, value)`` lines: dataset, algorithm, backbone, episodes,
            steps, device, wall time, ...
        history: :attr:`~medmeta.train.FitResult.history` rows (learning curves).
        evaluations: ``(name, result)`` pairs, e.g. ``[("3-way 1-shot", r1),
            ("3-way 5-shot", r5)]``; the last one gets the confusion matrix, per-class and
            reliability plots.
        embeddings: ``[n, D]`` query embeddings of the adapted task.
        embedding_labels: ``[n]`` int labels in ``[0, N)``.
        prototypes: ``[N, D]`` class prototypes in the same space.
        class_names: the N class names (map legend).
        adaptation: the new few-shot task, e.g. ``{"classes": [...], "shots": 5,
            "accuracy": 0.93, "queries": 45}``.
        export: e.g. ``{"path": "model.onnx", "size_mb": 0.5, "opset": 18,
            "parity_max_abs_diff": 2e-6, "edge_agreement": 1.0}``.
        latency: rows ``{"runtime": str, "batch": int, "p50_ms": float, "p99_ms": float}``.
        notes: free-text lines (honest caveats).
        command: the command line that produced the report.
        versions: e.g. ``{"medmeta": "0.1.0", "torch": "2.13.0", ...}``.
        embedding_predictions: ``[n]`` predicted labels of the embedded queries (optional;
            misclassified points get a ring on the map).
        created: when the report was made (ISO 8601); ``write_report`` fills in the current
            time when ``None``.
    """

    title: str
    summary: list[tuple[str, str]]
    history: list[dict] | None = None
    evaluations: Sequence[tuple[str, EvalResult]] = ()
    embeddings: np.ndarray | None = None
    embedding_labels: np.ndarray | None = None
    prototypes: np.ndarray | None = None
    class_names: list[str] | None = None
    adaptation: dict | None = None
    export: dict | None = None
    latency: list[dict] | None = None
    notes: Sequence[str] = ()
    command: str | None = None
    versions: dict[str, str] | None = None
    embedding_predictions: np.ndarray | None = None
    created: str | None = None


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`~medmeta.report.write_report`.

    Attributes:
        html: ``out_dir/report.html``.
        markdown: ``out_dir/report.md``.
        plots: ``{name: out_dir/plots/<name>.png}`` of the figures drawn.
        json: ``out_dir/report.json``.
    """

    html: Path
    markdown: Path
    plots: dict[str, Path]
    json: Path


def _fail(name: str, expected: str, got: Any) -> ValueError:
    shown = got if isinstance(got, (str, int, float, type(None))) else type(got).__name__
    return ValueError(f"ReportData.{name} must be {expected}, got {shown!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _per_embedding(name: str, value: Any, n: int) -> np.ndarray | None:
    """``value`` as ``[n]`` labels, one per embedding (None stays None)."""
    if value is None:
        return None
    labels = _check_array(name, value, 1)
    if labels.shape[0] != n:
        raise ValueError(
            f"ReportData.{name} must have one label per embedding ([{n}]), got {labels.shape}"
        )
    return labels


def _check_array(name: str, a: Any, ndim: int) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor: accept it, as callers hold tensors
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim != ndim:
        shape = "[n, D]" if ndim == 2 else "[n]"
        raise ValueError(f"ReportData.{name} must be an array of shape {shape}, got {arr.shape}")
    return arr


def _check_finite(name: str, a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"ReportData.{name} must hold real numbers, got dtype {a.dtype}")
    bad = ~np.isfinite(a)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise ValueError(
            f"ReportData.{name} has {rows} rows with NaN or inf; expected finite values"
        )
    return a


def check_report_data(data: ReportData) -> ReportData:
    """Check the parts of ``data`` that are present and return a copy with arrays as numpy.

    Raises:
        TypeError: ``data`` is not a :class:`ReportData`.
        ValueError: a part has the wrong type or shape (the message names it).
    """
    if not isinstance(data, ReportData):
        raise TypeError(f"data must be a ReportData, got {type(data).__name__}")
    if not isinstance(data.title, str) or not data.title.strip():
        raise _fail("title", "a non-empty str", data.title)
    for i, pair in enumerate(data.summary or ()):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise _fail(f"summary[{i}]", "a (key, value) pair", pair)
    if data.history is not None:
        for i, row in enumerate(data.history):
            if not isinstance(row, Mapping) or "step" not in row:
                raise _fail(f"history[{i}]", "a dict with a 'step' key", row)
    for i, pair in enumerate(data.evaluations or ()):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise _fail(f"evaluations[{i}]", "a (name, EvalResult) pair", pair)
        if not isinstance(pair[1], EvalResult):
            raise _fail(f"evaluations[{i}][1]", "an EvalResult", pair[1])
    for name in ("adaptation", "export", "versions"):
        v = getattr(data, name)
        if v is not None and not isinstance(v, Mapping):
            raise _fail(name, "a dict", v)
    for i, row in enumerate(data.latency or ()):
        if not isinstance(row, Mapping) or "runtime" not in row:
            raise _fail(f"latency[{i}]", "a dict with 'runtime', 'batch', 'p50_ms'", row)
        for key in ("p50_ms", "p99_ms"):
            v = row.get(key)
            if v is not None and (not _is_number(v) or float(v) < 0):
                raise _fail(f"latency[{i}][{key!r}]", "a number >= 0 (milliseconds)", v)
    notes = [data.notes] if isinstance(data.notes, str) else list(data.notes or ())
    for i, note in enumerate(notes):
        if not isinstance(note, str):
            raise _fail(f"notes[{i}]", "a str", note)
    if data.command is not None and not isinstance(data.command, str):
        raise _fail("command", "a str", data.command)

    emb = labels = protos = preds = None
    if data.embeddings is not None:
        emb = _check_finite("embeddings", _check_array("embeddings", data.embeddings, 2))
        n = emb.shape[0]
        labels = _per_embedding("embedding_labels", data.embedding_labels, n)
        preds = _per_embedding("embedding_predictions", data.embedding_predictions, n)
    if data.prototypes is not None:
        protos = _check_finite("prototypes", _check_array("prototypes", data.prototypes, 2))
        if emb is not None and protos.shape[1] != emb.shape[1]:
            raise ValueError(
                f"ReportData.prototypes must have the embeddings' D = {emb.shape[1]} columns, "
                f"got shape {protos.shape}"
            )
    names = None if data.class_names is None else [str(c) for c in data.class_names]
    n_classes = len(protos) if protos is not None else (len(names) if names else None)
    if names is not None and protos is not None and len(names) != len(protos):
        raise ValueError(
            f"ReportData.class_names must name the {len(protos)} prototypes, got {len(names)} names"
        )
    for name, y in (("embedding_labels", labels), ("embedding_predictions", preds)):
        if y is None or y.size == 0:
            continue
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"ReportData.{name} must hold integers, got dtype {y.dtype}")
        if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
            raise ValueError(
                f"ReportData.{name} must lie in [0, {n_classes}), "
                f"got values in [{int(y.min())}, {int(y.max())}]"
            )
    versions = None
    if data.versions is not None:
        versions = {str(k): str(v) for k, v in data.versions.items()}
    return ReportData(
        title=data.title,
        summary=[(str(k), str(v)) for k, v in (data.summary or ())],
        history=None if data.history is None else [dict(r) for r in data.history],
        evaluations=[(str(k), r) for k, r in (data.evaluations or ())],
        embeddings=emb,
        embedding_labels=labels,
        prototypes=protos,
        class_names=names,
        adaptation=None if data.adaptation is None else dict(data.adaptation),
        export=None if data.export is None else dict(data.export),
        latency=None if data.latency is None else [dict(r) for r in data.latency],
        notes=notes,
        command=data.command,
        versions=versions,
        embedding_predictions=preds,
        created=data.created,
    )


def to_jsonable(obj: Any) -> Any:
    """``obj`` as strict-JSON data: NaN/inf -> ``None``, numpy scalars/arrays -> Python
    numbers/lists, tuples -> lists, paths -> str; anything else unknown -> ``str``."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach"):  # torch tensor
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
