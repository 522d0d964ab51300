"""Metadata of exported models: building it, writing it into ONNX ``metadata_props``,
reading it back, and the SHA-256 of the weights.

The format itself (keys, array encoding, validation) lives in :mod:`medmeta.edge.schema`,
so the torch-free runtime reads exactly what is written here.

Weights hash: SHA-256 over every weight tensor of the graph -- its initializers and the
tensors of its ``Constant`` nodes -- sorted by name, each contributing its name, ONNX data
type, shape and little-endian bytes. It identifies the numbers a file computes with, and
:func:`verify_weights` recomputes it from a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from medmeta.edge.schema import FORMAT, METADATA_KEY, SCHEMA_VERSION, EdgeModelError, parse_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "evaluation_summary",
    "read_metadata",
    "set_metadata",
    "verify_weights",
    "weights_sha256",
]

#: Scalar entries of an evaluation kept in the metadata (the summary, not per-episode data).
EVALUATION_KEYS = (
    "accuracy",
    "ci95",
    "accuracy_std",
    "balanced_accuracy",
    "macro_f1",
    "auroc",
    "ece",
    "nll",
    "brier",
    "ways",
    "shots",
    "queries",
    "episodes",
    "seed",
    "temperature",
    "class_names",
)


def _weight_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    t = onnx.TensorProto()
                    t.CopyFrom(attr.t)
                    t.name = node.output[0]
                    tensors.append(t)
    return sorted(tensors, key=lambda t: t.name)


def weights_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 (hex) of the graph's weight tensors (see the module docstring)."""
    h = hashlib.sha256()
    for t in _weight_tensors(model):
        array = numpy_helper.to_array(t)
        h.update(t.name.encode())
        h.update(f"|{t.data_type}|{list(array.shape)}|".encode())
        h.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def evaluation_summary(evaluation: Any) -> dict[str, Any] | None:
    """The scalar summary (accuracy with its 95% CI, ...) of an ``EvalResult`` or a dict.

    An ``EvalResult`` contributes :data:`EVALUATION_KEYS` and its one-line summary; a dict
    contributes its JSON-able scalar (and class-name) entries. A summary without
    ``accuracy`` and ``ci95`` is kept but logged as a warning: a deployed model should
    carry its accuracy with a confidence interval.

    Raises:
        TypeError: not an EvalResult or a dict.
    """
    if evaluation is None:
        return None
    if hasattr(evaluation, "to_dict") and hasattr(evaluation, "ci95"):
        data = evaluation.to_dict()
        summary = {k: data[k] for k in EVALUATION_KEYS if k in data}
        summary["summary"] = evaluation.summary()
    elif isinstance(evaluation, Mapping):
        summary = {
            str(k): v
            for k, v in evaluation.items()
            if v is None
            or isinstance(v, str | bool | int | float)
            or (k == "class_names" and isinstance(v, list | tuple))
        }
    else:
        raise TypeError(
            f"evaluation: expected an EvalResult or a dict, got {type(evaluation).__name__}"
        )
    for key, value in summary.items():
        if isinstance(value, float) and not math.isfinite(value):
            summary[key] = None
        elif isinstance(value, tuple):
            summary[key] = [str(v) for v in value]
    missing = [k for k in ("accuracy", "ci95") if summary.get(k) is None]
    if missing:
        logger.warning("evaluation summary without %s: the export will not state its accuracy "
                       "with a confidence interval", " and ".join(missing))  # fmt: skip
    return summary


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Store ``metadata`` (completed with format and schema version) as the model's
    medmeta ``metadata_props`` entry, replacing an earlier one; return what was stored."""
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **metadata}
    text = json.dumps(meta, allow_nan=False, sort_keys=True)
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=text)
    return meta


def _load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # protobuf DecodeError and friends
        raise EdgeModelError(
            f"{path}: not a readable ONNX file ({type(err).__name__}: {err})"
        ) from err


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated medmeta metadata of an exported file (with the ``onnx`` package)."""
    model = _load(path)
    return parse_metadata({p.key: p.value for p in model.metadata_props}, os.fspath(path))


def verify_weights(path: str | os.PathLike[str]) -> bool:
    """Whether the file's weights still hash to the ``weights_sha256`` in its metadata."""
    model = _load(path)
    meta = parse_metadata({p.key: p.value for p in model.metadata_props}, os.fspath(path))
    return weights_sha256(model) == meta["weights_sha256"]


def class_names_for(ways: int, class_names: Sequence[str] | None) -> list[str]:
    """``ways`` unique class names (default ``"class_0"``...); a clear error otherwise."""
    if class_names is None:
        return [f"class_{i}" for i in range(ways)]
    names = [str(n) for n in class_names]
    if len(names) != ways:
        raise ValueError(f"class_names: expected {ways} names (the model's ways), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: names must be unique, got {names}")
    return names
