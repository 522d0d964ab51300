"""Fuzz the torch-free reading of an ONNX file's bytes on a device:
:func:`medmeta.edge.weights.metadata_props` (protobuf walk), :func:`~medmeta.edge.schema.parse_metadata`,
:func:`~medmeta.edge.weights.weights_sha256` / ``check_weights`` and
:func:`~medmeta.edge.schema.decode_array` on the enrolment arrays.

Seeds: tiny classifier, embedder and regressor models (:mod:`._onnx_models`) with their
metadata, as medmeta's exporter writes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._harness import Call, Harness, main


def _read(data: bytes) -> None:
    from medmeta.edge.schema import decode_array, parse_metadata
    from medmeta.edge.weights import check_weights, metadata_props

    meta = parse_metadata(metadata_props(data, "model.onnx"), "model.onnx")
    check_weights(data, meta, "model.onnx")
    enrol = meta.get("enrolment")
    if isinstance(enrol, dict):
        for key in ("prototypes", "support_embeddings"):
            if enrol.get(key) is not None:
                decode_array(enrol[key], f"enrolment.{key}")


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.edge.schema import EdgeModelError
    from medmeta.edge.weights import weights_sha256

    return [
        (lambda: weights_sha256(data, "model.onnx"), (EdgeModelError,)),
        (lambda: _read(data), (EdgeModelError,)),
    ]


def _seeds() -> dict[str, bytes]:
    from ._onnx_models import documents, graphs, with_metadata

    built, docs = graphs(), documents()
    return {f"{kind}.onnx": with_metadata(graph, docs[kind]) for kind, graph in built.items()}


HARNESS = Harness("onnx_file", _calls, _seeds, ("medmeta.edge.schema", "medmeta.edge.weights"))

if __name__ == "__main__":
    main(HARNESS)
