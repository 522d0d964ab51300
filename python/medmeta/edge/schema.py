"""The medmeta ONNX metadata format (numpy only; written by :mod:`medmeta.export`).

An exported file carries one ``metadata_props`` entry, key :data:`METADATA_KEY`, whose value
is a JSON document::

    format            "medmeta-onnx"
    schema_version    1 (readers refuse newer versions)
    role              "classifier" | "embedder" | "head" (classification), "encoder" |
                      "segmentation_head" (few-shot segmentation), "regressor" (few-shot
                      regression; see below)
    medmeta_version, torch_version, exporter ("dynamo" | "torchscript"), opset, precision
    algorithm         the learner's name, or null
    class_names       [N] names, in output order
    input_name, outputs   graph input name, output names in order
    input_shape       model input without the batch axis (head: [D])
    preprocessing     Preprocessing.to_dict() (null for the head)
    temperature       calibration temperature T: probabilities = softmax(logits / T)
    evaluation        {"accuracy", "ci95", ...} or null
    weights_sha256    SHA-256 of the graph's weight tensors (medmeta.export.metadata)
    metric            distance of the "distances" output, or null when there is none
    embedding_dim     D of the "embeddings" output (or the embedder's output), or null
    enrolment         {"prototypes", "support_embeddings", "support_labels", "ood"} or null
    head_file, head_sha256          (embedder) the sibling head file and its bytes' SHA-256
    embedder_weights_sha256         (head) the weights hash of its embedder
    head_temperature  (embedder, head) the learner's own logit temperature

Segmentation files (:func:`medmeta.export.export_segmenter`, :mod:`medmeta.edge.segmenter`)
carry ``task: "segmentation"`` and:

    class_names       [N+1] names, the background at 0 (label k of a label map)
    encoder           outputs ["features"]; feature_dim D; grid [h, w] (the feature grid of
                      input_shape); head_file, head_sha256
                      segmentation {"method", "scale", "background" (ADNet's score or null),
                      "pooling" (PoolingRule: global_classes, local_classes, window,
                      threshold, max_local)}
                      enrolment {"prototypes" [P, D], "prototype_classes" [P],
                      "support_features" [S, D, h, w] or null, "support_masks" [S, N+1, h, w]
                      (soft masks) or null}
    segmentation_head input_name "features", input_shape [D, h, w]; inputs (features,
                      prototypes, prototype_onehot); outputs ["logits", "labels"];
                      encoder_weights_sha256; segmentation {"scale", "background"}

Regression files (:func:`medmeta.export.regressor_to_onnx`, :class:`medmeta.edge.EdgeRegressor`)
carry ``role: "regressor"``, ``task: "regression"`` and no ``class_names`` or ``temperature``:

    outputs           ["prediction", "lower", "upper", "member_std"], each ``[n]`` float32
    target            {"name": the predicted column, ...} (the model card's target)
    interval          {"members" M, "level" L, "z", "noise_std"}: ``prediction ± z sd`` with
                      ``sd² = `` the members' unbiased variance ``+ noise_std²``
    n_features        F, the model input's width
    training, held_out  scalar summaries of the training run / the adapted task, or null

Arrays inside (prototypes, support embeddings) are ``{"dtype", "shape", "base64"}`` with
little-endian raw bytes, so float32 values round-trip exactly.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CLASSIFICATION_ROLES",
    "FORMAT",
    "METADATA_KEY",
    "REGRESSION_OUTPUTS",
    "REGRESSION_ROLES",
    "ROLES",
    "SCHEMA_VERSION",
    "SEGMENTATION_ROLES",
    "EdgeError",
    "EdgeModelError",
    "decode_array",
    "encode_array",
    "parse_metadata",
    "session_metadata",
]

METADATA_KEY = "medmeta"
FORMAT = "medmeta-onnx"
SCHEMA_VERSION = 1
#: Roles of classification files (:class:`~medmeta.edge.EdgeModel`), segmentation files
#: (:class:`~medmeta.edge.EdgeSegmenter`) and regression files
#: (:class:`~medmeta.edge.EdgeRegressor`).
CLASSIFICATION_ROLES = ("classifier", "embedder", "head")
SEGMENTATION_ROLES = ("encoder", "segmentation_head")
REGRESSION_ROLES = ("regressor",)
ROLES = CLASSIFICATION_ROLES + SEGMENTATION_ROLES + REGRESSION_ROLES
#: The outputs of a regressor, in graph order.
REGRESSION_OUTPUTS = ("prediction", "lower", "upper", "member_std")
_REQUIRED = ("role", "medmeta_version", "input_name", "outputs", "input_shape", "weights_sha256",
             "preprocessing")  # fmt: skip
#: Roles whose input is another graph's output: they carry no preprocessing (null).
_HEAD_ROLES = ("head", "segmentation_head")
#: The outputs each role's runtime reads (a classifier may have more).
_ROLE_OUTPUTS = {
    "classifier": ("probabilities",),
    "embedder": ("embeddings",),
    "head": ("probabilities", "distances"),
    "encoder": ("features",),
    "segmentation_head": ("logits", "labels"),
}
#: Keys required beyond :data:`_REQUIRED` by the roles that classify (or segment) ...
_REQUIRED_CLASSES = ("class_names", "temperature")
#: ... and by a regressor.
_REQUIRED_REGRESSION = ("task", "target", "interval")
_DTYPES = ("float32", "float64", "int64")


class EdgeError(ValueError):
    """Base class of the edge runtime's file errors (bad inputs raise ValueError/TypeError)."""


class EdgeModelError(EdgeError):
    """A model or enrolment file is corrupt, truncated, foreign (not a medmeta export) or
    inconsistent with its metadata or its model."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "shape", "base64"}`` of a float32/float64/int64 array (exact)."""
    a = np.asarray(array)
    if a.dtype.name not in _DTYPES:
        raise TypeError(f"encode_array: dtype must be one of {_DTYPES}, got {a.dtype}")
    raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": a.dtype.name, "shape": list(a.shape), "base64": base64.b64encode(raw).decode()}


def decode_array(data: Any, name: str = "array") -> np.ndarray:
    """Inverse of :func:`encode_array`; a writable native-endian copy. Errors name ``name``."""
    try:
        dtype = np.dtype(data["dtype"])
        shape = tuple(int(s) for s in data["shape"])
        raw = base64.b64decode(data["base64"], validate=True)
    except (KeyError, TypeError, ValueError) as err:
        raise EdgeModelError(f"metadata '{name}': not an encoded array ({err})") from err
    if dtype.name not in _DTYPES:
        raise EdgeModelError(f"metadata '{name}': dtype must be one of {_DTYPES}, got {dtype}")
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise EdgeModelError(
            f"metadata '{name}': {len(raw)} bytes do not hold shape {list(shape)} of {dtype}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def parse_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """Validate the metadata of the file ``source`` (its ``metadata_props`` as a dict).

    Raises:
        EdgeModelError: no medmeta entry (a foreign ONNX model), invalid JSON, another
            format, a newer schema version, an unknown role or missing keys.
    """
    if METADATA_KEY not in props:
        raise EdgeModelError(
            f"{source}: not a medmeta model: no {METADATA_KEY!r} metadata entry (a foreign "
            "ONNX file? export models with medmeta.export.to_onnx)"
        )
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise EdgeModelError(
            f"{source}: the {METADATA_KEY!r} metadata is not JSON ({err})"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise EdgeModelError(f"{source}: metadata format must be {FORMAT!r}, got {got!r}")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise EdgeModelError(f"{source}: invalid metadata schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise EdgeModelError(
            f"{source}: metadata schema_version {version} is newer than this runtime's "
            f"{SCHEMA_VERSION}; upgrade medmeta"
        )
    if meta.get("role") not in ROLES:
        raise EdgeModelError(
            f"{source}: metadata role must be one of {ROLES}, got {meta.get('role')!r}"
        )
    regressor = meta["role"] in REGRESSION_ROLES
    required = _REQUIRED + (_REQUIRED_REGRESSION if regressor else _REQUIRED_CLASSES)
    missing = [k for k in required if k not in meta]
    if missing:
        raise EdgeModelError(f"{source}: metadata lacks required keys {missing}")
    _check_common(meta, source)
    if regressor:
        _check_regressor(meta, source)
        return meta
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EdgeModelError(f"{source}: metadata class_names must be a non-empty list of strings")
    if not _number(meta["temperature"]) or meta["temperature"] <= 0:
        raise EdgeModelError(f"{source}: metadata temperature must be a positive number, got "
                             f"{_short(meta['temperature'])}")  # fmt: skip
    return meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _check_common(meta: dict[str, Any], source: str) -> None:
    """The types of the keys every role's loader reads: names are non-empty strings, the
    input shape positive ints, the weights hash 64 hex digits, the preprocessing an object
    (null only for the heads), and the optional keys ``metric``, ``embedding_dim``,
    ``feature_dim``, ``enrolment``, ``head_file`` of the right type when present."""
    hexdigits = set("0123456789abcdef")
    shape = meta["input_shape"]
    sha = meta["weights_sha256"]
    pre = meta["preprocessing"]
    checks = [
        ("medmeta_version", isinstance(meta["medmeta_version"], str), "a string"),
        ("input_name", isinstance(meta["input_name"], str) and bool(meta["input_name"]),
         "a non-empty string"),
        ("outputs", _strings(meta["outputs"]), "a non-empty list of names"),
        ("input_shape", isinstance(shape, list) and bool(shape) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape),
         "a non-empty list of positive ints"),
        ("weights_sha256", isinstance(sha, str) and len(sha) == 64 and set(sha) <= hexdigits,
         "64 lowercase hex digits"),
        ("preprocessing", isinstance(pre, dict) or (pre is None and meta["role"] in _HEAD_ROLES),
         "an object" + (" or null" if meta["role"] in _HEAD_ROLES else "")),
    ]  # fmt: skip
    optional = {
        "metric": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "embedding_dim": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                  and v >= 1), "a positive int or null"),
        "feature_dim": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                        "a positive int"),
        "enrolment": (lambda v: v is None or isinstance(v, dict), "an object or null"),
        "head_file": (lambda v: isinstance(v, str), "a string"),
    }  # fmt: skip
    checks += [(k, test(meta[k]), what) for k, (test, what) in optional.items() if k in meta]
    needed = _ROLE_OUTPUTS.get(meta["role"], ())
    if _strings(meta["outputs"]):
        outputs = meta["outputs"]
        checks.append(("outputs", len(set(outputs)) == len(outputs) and set(needed) <= set(outputs),
                       f"distinct names including {list(needed)} for a {meta['role']}"))  # fmt: skip
    for key, ok, what in checks:
        if not ok:
            raise EdgeModelError(
                f"{source}: metadata {key} must be {what}, got {_short(meta[key])}"
            )


def session_metadata(session: Any, source: str) -> dict[str, Any]:
    """:func:`parse_metadata` of an onnxruntime session's ``custom_metadata_map`` (which
    onnxruntime decodes as UTF-8 when asked for it: other bytes are an
    :class:`EdgeModelError` naming ``source`` too)."""
    try:
        props = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError as err:
        raise EdgeModelError(f"{source}: the model's metadata is not UTF-8 text ({err})") from err
    return parse_metadata(props, source)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_regressor(meta: dict[str, Any], source: str) -> None:
    """The regression keys: task, outputs, target name and a well-formed interval."""
    if meta["task"] != "regression":
        raise EdgeModelError(f"{source}: a regressor's task must be 'regression', got "
                             f"{meta['task']!r}")  # fmt: skip
    if list(meta["outputs"]) != list(REGRESSION_OUTPUTS):
        raise EdgeModelError(f"{source}: a regressor's outputs must be "
                             f"{list(REGRESSION_OUTPUTS)}, got {meta['outputs']!r}")  # fmt: skip
    target = meta["target"]
    if not isinstance(target, dict) or not isinstance(target.get("name"), str):
        raise EdgeModelError(
            f"{source}: metadata target must be {{'name': <column>, ...}}, got {target!r}"
        )
    iv = meta["interval"]
    ok = (
        isinstance(iv, dict)
        and isinstance(iv.get("members"), int) and not isinstance(iv.get("members"), bool)
        and iv["members"] >= 2
        and _number(iv.get("level")) and 0 < iv["level"] < 1
        and _number(iv.get("z")) and iv["z"] > 0
        and _number(iv.get("noise_std")) and iv["noise_std"] >= 0
    )  # fmt: skip
    if not ok:
        raise EdgeModelError(
            f"{source}: metadata interval must be {{'members' >= 2, 'level' in (0, 1), 'z' > 0, "
            f"'noise_std' >= 0}}, got {iv!r}"
        )
