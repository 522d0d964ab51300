"""Tiny medmeta ONNX files for the ONNX fuzz harnesses: graphs built with ``onnx.helper``
(no torch) and metadata as :mod:`medmeta.export` writes it, with the weights hash of
:mod:`medmeta.edge.weights`. The metadata is appended to the graph's bytes as one
``metadata_props`` entry (protobuf fields may come in any order), so a harness can put any
JSON text into an otherwise valid model without the ``onnx`` package."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["GRAPH_OUTPUTS", "graphs", "metadata", "with_metadata"]

#: The graph whose outputs a metadata document names, by its ``outputs`` list.
GRAPH_OUTPUTS = {
    "classifier": ["probabilities"],
    "embedder": ["embeddings"],
    "regressor": ["prediction", "lower", "upper", "member_std"],
}
_F = 4  # input features
_CLASSES = ["normal", "benign", "malignant"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_metadata(graph: bytes, text: bytes, key: bytes = b"medmeta") -> bytes:
    """``graph`` (a serialized ModelProto) with one more ``metadata_props`` entry."""
    return graph + _field(14, _field(1, key) + _field(2, text))


def graphs() -> dict[str, bytes]:
    """Serialized models without metadata, by kind (see :data:`GRAPH_OUTPUTS`): input ``x``
    float32 ``[batch, 4]``; weights as initializers (raw and typed fields) and a Constant."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", _F])

    def out(name: str, *dims: Any) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])

    w = numpy_helper.from_array(rng.normal(size=(_F, 3)).astype(np.float32), "w")
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])  # typed float_data
    scale = helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(
        np.array(0.5, np.float32)))  # fmt: skip
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["logits"])
    models = {
        "classifier": helper.make_graph(
            [gemm, scale, helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
             helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=1)],
            "classifier", [x], [out("probabilities", 3)], [w, b]),
        "embedder": helper.make_graph(
            [helper.make_node("Gemm", ["x", "w", "b"], ["embeddings"])],
            "embedder", [x], [out("embeddings", 3)], [w, b]),
    }  # fmt: skip
    v = numpy_helper.from_array(rng.normal(size=(_F, 1)).astype(np.float32), "v")
    spread = numpy_helper.from_array(np.array([0.25], np.float32), "spread")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    models["regressor"] = helper.make_graph(
        [helper.make_node("MatMul", ["x", "v"], ["column"]),
         helper.make_node("Squeeze", ["column", "axes"], ["prediction"]),
         helper.make_node("Sub", ["prediction", "spread"], ["lower"]),
         helper.make_node("Add", ["prediction", "spread"], ["upper"]),
         helper.make_node("Mul", ["prediction", "spread"], ["member_std"])],
        "regressor", [x], [out(n) for n in GRAPH_OUTPUTS["regressor"]], [v, spread, axes])  # fmt: skip
    opset = [helper.make_opsetid("", 17)]
    return {
        kind: helper.make_model(graph, opset_imports=opset, ir_version=8).SerializeToString()
        for kind, graph in models.items()
    }


def metadata(kind: str, graph: bytes) -> dict[str, Any]:
    """The metadata medmeta's exporter would write for ``graph`` of ``kind``."""
    import numpy as np

    from medmeta.edge.preprocess import Preprocessing
    from medmeta.edge.schema import encode_array
    from medmeta.edge.weights import weights_sha256

    pre = Preprocessing.for_vectors(_F, mean=[0.5] * _F, std=[2.0] * _F,
                                    features=["age", "tsh", "t3", "tt4"])  # fmt: skip
    meta: dict[str, Any] = {
        "format": "medmeta-onnx", "schema_version": 1, "role": kind, "medmeta_version": "0.1.0",
        "torch_version": "2.3.0", "exporter": "torchscript", "opset": 17, "precision": "float32",
        "algorithm": "protonet", "input_name": "x", "input_shape": [_F],
        "outputs": GRAPH_OUTPUTS[kind], "preprocessing": pre.to_dict(),
        "evaluation": {"accuracy": 0.8, "ci95": [0.7, 0.9]}, "weights_sha256": weights_sha256(graph),
    }  # fmt: skip
    if kind == "regressor":
        meta.update(task="regression", target={"name": "TSH"}, n_features=_F,
                    interval={"members": 5, "level": 0.9, "z": 1.645, "noise_std": 0.1})  # fmt: skip
        return meta
    meta.update(class_names=_CLASSES, temperature=1.5, metric=None, embedding_dim=None,
                enrolment=None)  # fmt: skip
    if kind == "embedder":
        protos = np.eye(3, dtype=np.float32)
        meta.update(metric="euclidean", embedding_dim=3, head_file="head.onnx",
                    head_sha256="0" * 64, head_temperature=1.0,
                    enrolment={"prototypes": encode_array(protos),
                               "support_embeddings": encode_array(np.repeat(protos, 2, axis=0)),
                               "support_labels": [0, 0, 1, 1, 2, 2], "ood": {"quantile": 0.95}})  # fmt: skip
    return meta


def documents() -> dict[str, bytes]:
    """The JSON texts of :func:`metadata` for every kind (and an encoder, which no graph here
    matches), as the ONNX files carry them."""
    built = graphs()
    docs = {kind: json.dumps(metadata(kind, graph)).encode() for kind, graph in built.items()}
    encoder = metadata("classifier", built["classifier"])
    encoder.update(role="encoder", task="segmentation", outputs=["features"], feature_dim=3)
    docs["encoder"] = json.dumps(encoder).encode()
    return docs
