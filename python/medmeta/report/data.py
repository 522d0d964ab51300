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
from medmeta.report.regression import REGRESSION_KEYS, check_regression

__all__ = [
    "EXAMPLE_KINDS",
    "FORMAT",
    "REGRESSION_KEYS",
    "ReportData",
    "ReportPaths",
    "check_report_data",
    "to_jsonable",
]

#: ``format`` field of ``report.json``.
FORMAT = "medmeta.report/1"
#: ``ReportData.example_kind`` values and the dimensions of their ``examples``.
EXAMPLE_KINDS = {"image": (3, 4), "signal": (3,), "vector": (2,)}


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
        examples: the adapted task's support examples for the family's figure, by
            ``example_kind``: ``"image"`` ``[n, H, W]`` / ``[n, H, W, C]`` / ``[n, C, H, W]``
            (a grid of images per class), ``"signal"`` ``[n, C, L]`` (example traces per
            class, e.g. as the model reads them), ``"vector"`` ``[n, F]`` (the values of the
            most class-separating features).
        example_labels: ``[n]`` int labels of the examples in ``[0, N)`` (``class_names``).
        example_kind: ``"image"``, ``"signal"`` or ``"vector"`` (required with examples).
        example_features: vectors only: the F feature names (e.g. encoded table columns,
            genes).
        regression: a few-shot regression's predictions with intervals (see
            :data:`REGRESSION_KEYS`): ``{"true": [n], "pred": [n], "lower": [n],
            "upper": [n], "level": 0.9}`` and optionally ``"target"`` (its name),
            ``"points"`` (what the n points are, in words) and ``"evaluations"``: ``[(name,
            summary), ...]`` with summaries of
            :func:`medmeta.eval.regression.summarize_regression` (``mse``, ``mse_ci95``,
            ``r2``, ``r2_ci95``, ``coverage``, ``width``, ``episodes``). The check adds
            ``"stats"``: :func:`medmeta.eval.plots.regression_point_stats` of the points.
        unit: what one example is called, as a regular plural (``"images"``,
            ``"recordings"``, ``"rows"``, ``"cells"``), used in the text.
        class_noun: what the classes are, in the text (``"classes"``, ``"cell types"``,
            ``"animals"``).
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
    examples: np.ndarray | None = None
    example_labels: np.ndarray | None = None
    example_kind: str | None = None
    example_features: list[str] | None = None
    regression: dict | None = None
    unit: str = "images"
    class_noun: str = "classes"


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


def _per_embedding(name: str, value: Any, n: int, what: str = "embedding") -> np.ndarray | None:
    """``value`` as ``[n]`` labels, one per embedding (or example; None stays None)."""
    if value is None:
        return None
    labels = _check_array(name, value, 1)
    if labels.shape[0] != n:
        raise ValueError(
            f"ReportData.{name} must have one label per {what} ([{n}]), got {labels.shape}"
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


def _check_parts(data: ReportData) -> list[str]:
    """Check the text and table parts of ``data``; returns its notes as a list."""
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
    for name in ("unit", "class_noun"):
        v = getattr(data, name)
        if not isinstance(v, str) or not v.strip():
            raise _fail(name, "a non-empty str", v)
    return notes


def _check_labels(name: str, y: np.ndarray | None, n_classes: int | None) -> None:
    """Integer labels in ``[0, n_classes)`` (any non-negative ints when None)."""
    if y is None or y.size == 0:
        return
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"ReportData.{name} must hold integers, got dtype {y.dtype}")
    if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        raise ValueError(
            f"ReportData.{name} must lie in [0, {n_classes}), "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


def _check_embeddings(data: ReportData) -> dict[str, Any]:
    """The embedding map's parts (embeddings, labels, prototypes, predictions, class names)."""
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
    _check_labels("embedding_labels", labels, n_classes)
    _check_labels("embedding_predictions", preds, n_classes)
    return {"embeddings": emb, "embedding_labels": labels, "prototypes": protos,
            "embedding_predictions": preds, "class_names": names}  # fmt: skip


def _check_examples(data: ReportData, names: list[str] | None) -> dict[str, Any]:
    """The support examples of the family's figure (see :class:`ReportData`)."""
    parts = ("examples", "example_labels", "example_kind", "example_features")
    if data.examples is None:
        given = [p for p in parts[1:] if getattr(data, p) is not None]
        if given:
            raise ValueError(f"ReportData.{given[0]} is given without ReportData.examples")
        return dict.fromkeys(parts)
    kind = data.example_kind
    if kind not in EXAMPLE_KINDS:
        raise _fail("example_kind", f"one of {', '.join(EXAMPLE_KINDS)}", kind)
    x = data.examples.detach().cpu().numpy() if hasattr(data.examples, "detach") else data.examples
    x = np.asarray(x)
    if x.ndim not in EXAMPLE_KINDS[kind] or len(x) == 0:
        raise ValueError(f"ReportData.examples of kind {kind!r} must have "
                         f"{' or '.join(map(str, EXAMPLE_KINDS[kind]))} dimensions with at "
                         f"least one example, got shape {x.shape}")  # fmt: skip
    _check_finite("examples", x.reshape(len(x), -1))
    if data.example_labels is None:
        raise ValueError("ReportData.example_labels are needed with ReportData.examples")
    labels = _per_embedding("example_labels", data.example_labels, len(x), "example")
    _check_labels("example_labels", labels, len(names) if names else None)
    features = data.example_features
    if features is not None:
        if kind != "vector":
            raise ValueError(f"ReportData.example_features apply to vectors, not {kind!r}")
        features = [str(f) for f in features]
        if len(features) != x.shape[1]:
            raise ValueError(f"ReportData.example_features must name the {x.shape[1]} "
                             f"features of the examples, got {len(features)} names")  # fmt: skip
    return {"examples": x, "example_labels": labels, "example_kind": kind,
            "example_features": features}  # fmt: skip


def check_report_data(data: ReportData) -> ReportData:
    """Check the parts of ``data`` that are present and return a copy with arrays as numpy.

    Raises:
        TypeError: ``data`` is not a :class:`ReportData`.
        ValueError: a part has the wrong type or shape (the message names it).
    """
    if not isinstance(data, ReportData):
        raise TypeError(f"data must be a ReportData, got {type(data).__name__}")
    notes = _check_parts(data)
    embedded = _check_embeddings(data)
    examples = _check_examples(data, embedded["class_names"])
    regression = None if data.regression is None else check_regression(data.regression)
    versions = None
    if data.versions is not None:
        versions = {str(k): str(v) for k, v in data.versions.items()}
    return ReportData(
        title=data.title,
        summary=[(str(k), str(v)) for k, v in (data.summary or ())],
        history=None if data.history is None else [dict(r) for r in data.history],
        evaluations=[(str(k), r) for k, r in (data.evaluations or ())],
        adaptation=None if data.adaptation is None else dict(data.adaptation),
        export=None if data.export is None else dict(data.export),
        latency=None if data.latency is None else [dict(r) for r in data.latency],
        notes=notes,
        command=data.command,
        versions=versions,
        created=data.created,
        regression=regression,
        unit=data.unit,
        class_noun=data.class_noun,
        **embedded,
        **examples,
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
