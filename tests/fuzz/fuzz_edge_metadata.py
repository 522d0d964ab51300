"""Fuzz the metadata a device trusts: the input is the JSON text of a model's ``medmeta``
metadata entry, put into a tiny valid ONNX graph (:mod:`._onnx_models`; the graph whose
outputs the text names, when it parses), then loaded with the runtime that its role calls
for (:class:`~medmeta.edge.EdgeModel`, :class:`~medmeta.edge.EdgeRegressor`,
:class:`~medmeta.edge.EdgeSegmenter`) and, once loaded, asked for a prediction.

A load may only fail with :class:`~medmeta.edge.EdgeModelError` (or
:class:`FileNotFoundError` for a head file named but absent); a loaded model must predict.
Seeds: the metadata of a classifier, an embedder, a regressor and a segmentation encoder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._harness import Call, Harness, fresh, main

_GRAPHS: dict[str, bytes] = {}


def _parsed(text: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _load_and_predict(path: Path, role: Any) -> None:
    import numpy as np

    from medmeta.edge import EdgeModel, EdgeRegressor, EdgeSegmenter
    from medmeta.edge.schema import REGRESSION_ROLES, SEGMENTATION_ROLES

    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    if role in SEGMENTATION_ROLES:
        EdgeSegmenter(path, threads=1)
    elif role in REGRESSION_ROLES:
        model = EdgeRegressor(path, threads=1)
        model.predict(x)
        _ = (model.target, model.level, model.members, model.noise_std)
    else:
        model = EdgeModel(path, threads=1)
        model.predict(x)
        _ = (model.temperature, model.class_names, model.input_shape)


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.edge.schema import EdgeModelError

    from ._onnx_models import GRAPH_OUTPUTS, with_metadata

    if not _GRAPHS:
        from ._onnx_models import graphs

        _GRAPHS.update(graphs())
    meta = _parsed(data)
    kind = next((k for k, outs in GRAPH_OUTPUTS.items() if meta.get("outputs") == outs),
                "classifier")  # fmt: skip
    path = fresh(scratch, ("model.onnx", with_metadata(_GRAPHS[kind], data))) / "model.onnx"
    return [
        (lambda: _load_and_predict(path, meta.get("role")), (EdgeModelError, FileNotFoundError))
    ]


def _seeds() -> dict[str, bytes]:
    from ._onnx_models import documents

    return {f"{kind}.json": text for kind, text in documents().items()}


HARNESS = Harness(
    "edge_metadata",
    _calls,
    _seeds,
    ("medmeta.edge.schema", "medmeta.edge.runtime", "medmeta.edge.regressor",
     "medmeta.edge.segmenter", "medmeta.edge.preprocess", "medmeta.edge.enrol"),
)  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
