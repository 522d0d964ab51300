"""A metadata block that fails the schema is refused with a clear error for every role, by
:func:`medmeta.edge.schema.parse_metadata` and by the loaders themselves (EdgeModel,
EdgeRegressor, EdgeSegmenter) on tiny real ONNX graphs; the valid blocks load."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from fuzz._onnx_models import graphs, metadata, with_metadata
from medmeta.edge import EdgeModel, EdgeRegressor, EdgeSegmenter
from medmeta.edge.schema import EdgeModelError, parse_metadata


@pytest.fixture(scope="module")
def built() -> dict[str, bytes]:
    return graphs()


@pytest.fixture(scope="module")
def valid(built) -> dict[str, dict]:
    """A valid metadata block per role (as medmeta's exporters write them)."""
    meta = {kind: metadata(kind, graph) for kind, graph in built.items()}
    base = meta["classifier"]
    meta["head"] = {**base, "role": "head", "input_name": "embeddings", "input_shape": [3],
                    "preprocessing": None, "outputs": ["probabilities", "distances"],
                    "embedder_weights_sha256": base["weights_sha256"]}  # fmt: skip
    meta["encoder"] = {**base, "role": "encoder", "task": "segmentation", "feature_dim": 3,
                       "class_names": ["background", "nucleus"], "temperature": 1.0,
                       "outputs": ["features"], "head_file": "m.head.onnx"}  # fmt: skip
    meta["segmentation_head"] = {**meta["encoder"], "role": "segmentation_head",
                                 "input_name": "features", "input_shape": [3, 4, 4],
                                 "preprocessing": None, "outputs": ["logits", "labels"]}  # fmt: skip
    return meta


ROLES = ("classifier", "embedder", "head", "encoder", "segmentation_head", "regressor")
#: (key, bad value, words of the error); applied to every role that has the key.
BAD = [
    ("outputs", "probabilities", "outputs must be a non-empty list of names"),
    ("outputs", [], "outputs must be a non-empty list of names"),
    ("input_shape", [0], "input_shape must be a non-empty list of positive ints"),
    ("input_shape", ["4"], "input_shape must be a non-empty list of positive ints"),
    ("input_shape", [True], "input_shape must be a non-empty list of positive ints"),
    ("input_name", 3, "input_name must be a non-empty string"),
    ("weights_sha256", "abc", "weights_sha256 must be 64 lowercase hex digits"),
    ("medmeta_version", 1, "medmeta_version must be a string"),
    ("preprocessing", "image", "preprocessing must be an object"),
    ("metric", 5, "metric must be a string or null"),
    ("embedding_dim", 0, "embedding_dim must be a positive int or null"),
    ("enrolment", [1], "enrolment must be an object or null"),
    ("head_file", 3, "head_file must be a string"),
    ("feature_dim", "3", "feature_dim must be a positive int"),
    ("class_names", [], "class_names must be a non-empty list of strings"),
    ("class_names", ["a", 1], "class_names must be a non-empty list of strings"),
    ("temperature", "1.5", "temperature must be a positive number"),
    ("temperature", 0, "temperature must be a positive number"),
    ("interval", {"members": 1, "level": 0.9, "z": 1.6, "noise_std": 0}, "interval must be"),
    ("target", "TSH", "target must be"),
]
REQUIRED = ("role", "medmeta_version", "input_name", "outputs", "input_shape",
            "weights_sha256", "preprocessing")  # fmt: skip


def _parse(meta: dict) -> dict:
    return parse_metadata({"medmeta": json.dumps(meta)}, "model.onnx")


@pytest.mark.parametrize("role", ROLES)
def test_valid_metadata_of_every_role_parses(valid, role):
    assert _parse(valid[role])["role"] == role


@pytest.mark.parametrize("role", ROLES)
def test_metadata_failing_the_schema_is_refused_naming_the_key(valid, role):
    tried = 0
    for key, value, words in BAD:
        if key not in valid[role]:
            continue
        meta = copy.deepcopy(valid[role])
        meta[key] = value
        with pytest.raises(EdgeModelError, match=re.escape(f"model.onnx: metadata {words}")):
            _parse(meta)
        tried += 1
    for key in REQUIRED:
        meta = {k: v for k, v in valid[role].items() if k != key}
        with pytest.raises(EdgeModelError, match=r"lacks required keys|role must be one of"):
            _parse(meta)
    assert tried >= 9


@pytest.mark.parametrize("role", ROLES)
def test_outputs_must_hold_what_the_role_reads(valid, role):
    words = "outputs must be" + ("" if role == "regressor" else " distinct names including")
    for outputs in (["scores"], [*valid[role]["outputs"], valid[role]["outputs"][0]]):
        with pytest.raises(EdgeModelError, match=re.escape(words)):
            _parse({**valid[role], "outputs": outputs})


@pytest.mark.parametrize("role", ["classifier", "embedder", "encoder", "regressor"])
def test_only_the_heads_may_have_no_preprocessing(valid, role):
    with pytest.raises(EdgeModelError, match="preprocessing must be an object, got None"):
        _parse({**valid[role], "preprocessing": None})


def _write(tmp_path, graph: bytes, meta: dict | bytes, name: str = "model.onnx"):
    text = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    path = tmp_path / name
    path.write_bytes(with_metadata(graph, text))
    return path


@pytest.mark.parametrize(
    ("loader", "kind", "role"),
    [(EdgeModel, "classifier", "classifier"), (EdgeModel, "embedder", "embedder"),
     (EdgeRegressor, "regressor", "regressor"), (EdgeSegmenter, "classifier", "encoder")],
)  # fmt: skip
def test_the_loaders_refuse_metadata_failing_the_schema(tmp_path, built, valid, loader, kind, role):
    for key, value, words in BAD[:9]:
        meta = {**valid[role], key: value}
        with pytest.raises(EdgeModelError, match=re.escape(f"metadata {words}")):
            loader(_write(tmp_path, built[kind], meta))
    with pytest.raises(EdgeModelError, match="not UTF-8"):
        loader(_write(tmp_path, built[kind], b'{"format": "\xff"}'))


def test_the_valid_tiny_models_load_and_predict(tmp_path, built, valid):
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    model = EdgeModel(_write(tmp_path, built["classifier"], valid["classifier"]), threads=1)
    probs = model.predict(x).probabilities
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    regressor = EdgeRegressor(_write(tmp_path, built["regressor"], valid["regressor"]), threads=1)
    assert regressor.predict(x).prediction.shape == (2,)
    assert regressor.level == pytest.approx(0.9)
