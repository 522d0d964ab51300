"""Int8 static quantization of an exported ONNX model, and how far it moves the predictions.

:func:`quantize_onnx` writes a QDQ model (``QuantizeLinear``/``DequantizeLinear`` pairs around
the quantized operators; Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018) with ONNX Runtime's static quantizer:

* weights: int8, symmetric, one scale per output channel (per-channel quantization keeps the
  small filters of a few-shot backbone from being crushed by the largest one; Krishnamoorthi,
  "Quantizing deep convolutional networks for efficient inference", 2018, sec. 3.1), on a
  7-bit range by default (``reduce_range``): on x86 CPUs without VNNI (AVX2 and older, common
  in bedside and edge boxes) ONNX Runtime's uint8 x int8 kernels add pairs of products in
  16 bits (``VPMADDUBSW``), which saturate with full-range weights. Measured on an AVX2 CPU
  with a Conv4 on blood cells, 8-bit weights gave a top-1 agreement with the float model of
  0.947 and a largest probability change of 0.55; 7-bit weights keep the sums in range;
* activations: uint8, asymmetric, one scale per tensor, calibrated by the min/max over the
  given (preprocessed) support inputs -- a deployed few-shot model sees nothing but its
  support set before the first query, so that is the calibration set it has;
* the operators quantized by default are ``Conv``, ``Gemm``, ``Relu`` and ``MaxPool``, so a
  Conv4 backbone runs in uint8 from its input to its embedding (ReLU folds into the
  convolution's output range, max-pooling commutes with the monotone quantization). What
  follows the embedding -- a metric learner's prototype head, the softmax -- stays float:
  distances between nearby embeddings are differences of large, close numbers that 8 bits
  cannot carry (measured on blood cells: quantizing a ``MatMul`` head ``|x|² + |c|² - 2 x·c``
  too dropped top-1 agreement from 0.99 to 0.77 and accuracy by 15 points), and the head is
  a negligible share of the time.

ONNX Runtime fuses each ``DequantizeLinear -> Conv -> QuantizeLinear`` group into an integer
``QLinearConv`` when it loads the model, so the file stays a portable float-in/float-out ONNX
graph while the CPU runs int8 kernels (VNNI where the CPU has it).

:func:`parity_report` compares the float and int8 files on the same inputs (max and mean
absolute probability difference, top-1 agreement, accuracies when labels are given);
:func:`episode_parity` does so over seeded few-shot test episodes (protocol in its docstring).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmeta._files import atomic_write_bytes

if TYPE_CHECKING:  # torch is only needed by episode_parity
    import torch

    from medmeta.algorithms.base import Adapted, MetaLearner

__all__ = [
    "DEFAULT_OP_TYPES",
    "QUANTIZATION_KEY",
    "EpisodeParity",
    "episode_parity",
    "parity_report",
    "probabilities",
    "quantize_onnx",
]

logger = logging.getLogger(__name__)

QUANTIZATION_KEY = "medmeta.quantization"  # metadata_props key of the int8 description
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "Gemm", "Relu", "MaxPool")
CALIBRATION_BATCH = 64  # rows per calibration run (bounds the calibrator's memory)
PROBABILITY_OUTPUTS = ("probabilities", "probs", "proba", "prob")  # else: logits -> softmax

_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


# ------------------------------------------------------------------------------ checks


def _check_model_path(name: str, path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"'{name}' must be a path to an ONNX file, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"'{name}': no ONNX file at {p}")
    return p


def _load_model(name: str, path: Path) -> Any:
    """The ONNX model at ``path`` (external data inlined), with a clear error if corrupt."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError...
        raise ValueError(f"'{name}': {path} is not a valid ONNX model ({err})") from err
    return model


def _model_input(name: str, model: Any) -> tuple[str, list[int | None]]:
    """(input name, shape with None for symbolic dims) of a model with one float input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(
            f"'{name}': expected a model with one input (the preprocessed batch), got "
            f"{len(inputs)}: {[i.name for i in inputs]}"
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != _ONNX_FLOAT:
        raise ValueError(
            f"'{name}': the model input {inputs[0].name!r} must be float32, got ONNX element "
            f"type {tensor.elem_type}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return inputs[0].name, dims


def _check_inputs(name: str, x: Any, expected: Sequence[int | None] | None) -> np.ndarray:
    """``x`` is a finite float32 ndarray of the model's input shape (batch axis first)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"'{name}' must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(
            f"'{name}' must be float32 (preprocessed model inputs), got dtype {x.dtype}"
        )
    if expected is not None:
        ok = x.ndim == len(expected) and all(
            e is None or i == 0 or e == s
            for i, (e, s) in enumerate(zip(expected, x.shape, strict=True))
        )
        if not ok:
            want = ", ".join("n" if e is None else str(e) for e in expected)
            raise ValueError(
                f"'{name}' must have the model input shape [{want}] (first axis: examples), got "
                f"{list(x.shape)}"
            )
    if x.shape[0] == 0:
        raise ValueError(f"'{name}' must hold at least one example, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"'{name}' must be finite, found {bad} NaN/inf value(s)")
    return np.ascontiguousarray(x)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- quantization


class _Batches:
    """A calibration data reader over ``x`` in batches (ORT's CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int) -> None:
        self._rows: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: x[i : i + batch]} for i in range(0, len(x), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def quantize_onnx(
    float_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration_x: np.ndarray,
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
) -> Path:
    """Write an int8 (QDQ) copy of the float ONNX model at ``float_path`` to ``int8_path``.

    Static quantization: activation ranges are calibrated (min/max) by running the float
    model on ``calibration_x``; see the module docstring for the scheme. The graph is first
    shape-inferred with ONNX Runtime's ``quant_pre_process`` (its graph optimizer is skipped:
    the torch exporter already folds batch norm and constants, and ONNX Runtime optimizes
    at load time anyway). The output is one self-contained file (no external data), written
    atomically, with the float model's ``metadata_props`` copied. How it was quantized and
    calibrated (JSON) goes in a ``"medmeta.quantization"`` entry and, for medmeta exports,
    also in their ``"medmeta"`` metadata as ``"quantization"``, beside ``"precision": "int8"``,
    the int8 graph's ``weights_sha256`` and the float one's as ``float_weights_sha256`` (so
    :class:`medmeta.edge.EdgeModel` still pairs an int8 embedder with its float head).

    Args:
        float_path: the float32 ONNX model (one float input ``[n, ...]``).
        int8_path: where to write the quantized model.
        calibration_x: preprocessed calibration inputs, float32 ``[n, *input_shape]``
            (typically the support set the model was adapted to).
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: weights on 7 bits (``[-64, 63]``), which keeps ONNX Runtime's int8
            kernels exact on CPUs without VNNI (see the module docstring); ``False`` uses
            the full 8-bit range, for devices known to have VNNI (or ARM).
        op_types: ONNX operator types to quantize (default :data:`DEFAULT_OP_TYPES`).

    Returns:
        ``Path(int8_path)``.

    Raises:
        FileNotFoundError: no file at ``float_path``.
        ValueError: not a valid ONNX model, not one float input, or ``calibration_x``
            empty, of the wrong shape or not finite.
        TypeError: ``calibration_x`` not a float32 numpy array.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    src = _check_model_path("float_path", float_path)
    model = _load_model("float_path", src)
    input_name, dims = _model_input("float_path", model)
    calib = _check_inputs("calibration_x", calibration_x, dims)
    if not isinstance(int8_path, (str, os.PathLike)):
        raise TypeError(f"'int8_path' must be a path, got {type(int8_path).__name__}")
    for name, flag in (("per_channel", per_channel), ("reduce_range", reduce_range)):
        if not isinstance(flag, bool):
            raise TypeError(f"'{name}' must be a bool, got {type(flag).__name__}")
    ops = [op_types] if isinstance(op_types, str) else list(op_types)
    if not ops or not all(isinstance(o, str) and o for o in ops):
        raise ValueError(f"'op_types' must be ONNX operator names, got {op_types!r}")
    # a static batch axis (e.g. exported at batch 1) takes calibration rows that many at a time
    batch = dims[0] if dims and dims[0] else CALIBRATION_BATCH
    if dims and dims[0] and len(calib) % dims[0]:
        raise ValueError(
            f"'calibration_x': the model has a fixed batch of {dims[0]}; give a multiple of it, "
            f"got {len(calib)} examples"
        )
    float_bytes = src.read_bytes()
    with tempfile.TemporaryDirectory(prefix="medmeta-quantize-") as tmp:
        inlined, prepared, quantized = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save_model(model, str(inlined))  # external data (if any) is now inline
        quant_pre_process(str(inlined), str(prepared), skip_optimization=True)
        quantize_static(
            str(prepared),
            str(quantized),
            _Batches(input_name, calib, batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=False,
        )
        qmodel = onnx.load(str(quantized))
    n_quantized = sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node)
    if n_quantized == 0:
        raise ValueError(
            f"'float_path': the model has no {'/'.join(ops)} node to quantize "
            f"(its operators: {sorted({n.op_type for n in model.graph.node})})"
        )
    description = {
        "format": "qdq",
        "weights": ("int8 symmetric (7-bit range), " if reduce_range else "int8 symmetric, ")
        + ("per output channel" if per_channel else "per tensor"),
        "activations": "uint8 asymmetric, per tensor",
        "op_types": ops,
        "calibration": {
            "method": "minmax",
            "examples": len(calib),
            "input_shape": list(calib.shape[1:]),
            "sha256_16": _digest(calib.tobytes()),
            "data": "preprocessed support inputs given to quantize_onnx",
        },
        "float_model_sha256_16": _digest(float_bytes),
        "onnxruntime": onnxruntime.__version__,
        "dtype": "int8",
    }
    _copy_metadata(model, qmodel, description)
    qmodel.doc_string = (model.doc_string + "\n" if model.doc_string else "") + (
        "int8 QDQ quantization by medmeta.export.quantize_onnx"
    )
    onnx.checker.check_model(qmodel)
    out = atomic_write_bytes(int8_path, qmodel.SerializeToString())
    logger.info(
        "quantized %s -> %s (%d QuantizeLinear nodes, %d -> %d bytes, calibrated on %d inputs)",
        src, out, n_quantized, len(float_bytes), out.stat().st_size, len(calib),
    )  # fmt: skip
    return out


def _copy_metadata(source: Any, target: Any, description: dict[str, Any]) -> None:
    """The float model's ``metadata_props`` on the int8 one, marked int8 (see quantize_onnx)."""
    from medmeta.edge.schema import METADATA_KEY
    from medmeta.export.metadata import weights_sha256

    del target.metadata_props[:]
    for prop in source.metadata_props:
        value = prop.value
        if prop.key == QUANTIZATION_KEY:
            continue
        if prop.key == METADATA_KEY:
            try:
                meta = json.loads(value)
            except json.JSONDecodeError:
                meta = None  # not ours to repair: copied unchanged
            if isinstance(meta, dict):
                meta["precision"] = "int8"
                meta["quantization"] = description
                meta["float_weights_sha256"] = meta.get("weights_sha256")
                meta["weights_sha256"] = weights_sha256(target)
                value = json.dumps(meta, allow_nan=False, sort_keys=True)
        target.metadata_props.add(key=prop.key, value=value)
    target.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(description))


# ------------------------------------------------------------------------------ parity


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _is_embedder(model: Any) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) is a medmeta enrolment embedder
    (probabilities come from its head)."""
    from medmeta.edge.schema import METADATA_KEY

    props = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(props.get(METADATA_KEY, "{}")).get("role") == "embedder"
    except (json.JSONDecodeError, AttributeError):
        return False


def _file_probabilities(path: Path, embedder: bool, x: np.ndarray, threads: int) -> np.ndarray:
    """Probabilities ``[n, N]`` of the model file at ``path``: a medmeta ``embedder``
    through :class:`medmeta.edge.EdgeModel` (embeddings -> its head with the exported
    prototypes), anything else through :func:`probabilities`."""
    if embedder:
        from medmeta.edge import EdgeModel

        model = EdgeModel(path, threads=threads)
        return model.predict_proba(x, preprocessed=True).astype(np.float64)
    from medmeta.edge.runtime import cpu_session

    return probabilities(cpu_session(path, str(path), threads), x)


def probabilities(session: Any, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Class probabilities ``[n, N]`` (float64) of an ONNX classifier session on ``x``.

    The output named ``probabilities`` (or ``probs``/``proba``/``prob``) is taken as is
    (medmeta classifiers); otherwise the first output is taken as logits and soft-maxed.
    """
    outputs = [o.name for o in session.get_outputs()]
    prob = next((o for o in outputs if o.lower() in PROBABILITY_OUTPUTS), None)
    name = prob or outputs[0]
    feed = session.get_inputs()[0].name
    parts = [session.run([name], {feed: x[i : i + chunk]})[0] for i in range(0, len(x), chunk)]
    out = np.concatenate(parts).astype(np.float64)
    if out.ndim != 2:
        raise ValueError(f"expected a classifier output [n, N], got shape {list(out.shape)}")
    return out if prob else _softmax(out)


def parity_report(
    float_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    threads: int = 2,
) -> dict[str, Any]:
    """How far the int8 model's predictions are from the float model's on ``inputs``.

    Args:
        float_path, int8_path: the two ONNX models (same input): classifiers with a
            ``probabilities`` or a logits output (:func:`probabilities`), or medmeta
            enrolment embedders (run with their head and exported prototypes).
        inputs: preprocessed inputs, float32 ``[n, *input_shape]``.
        labels: true classes ``[n]`` (integers in ``[0, N)``), for the accuracies.
        threads: ONNX Runtime intra-op threads.

    Returns:
        A dict of plain floats/ints: ``examples``, ``max_abs_prob_diff`` (over all examples
        and classes), ``mean_abs_prob_diff``, ``top1_agreement`` (fraction of examples with
        the same arg-max), ``disagreements`` (count), and with ``labels``
        ``float_accuracy``, ``int8_accuracy``, ``accuracy_change`` (int8 - float,
        a fraction: -0.01 is one point lost) and ``accuracy_change_ci95`` (half-width of its
        95% CI, paired over the examples); also both file sizes in bytes.

    Raises:
        FileNotFoundError, ValueError, TypeError: missing/corrupt files, bad inputs or labels.
    """
    fpath = _check_model_path("float_path", float_path)
    qpath = _check_model_path("int8_path", int8_path)
    fmodel, qmodel = _load_model("float_path", fpath), _load_model("int8_path", qpath)
    _, fdims = _model_input("float_path", fmodel)
    _, qdims = _model_input("int8_path", qmodel)
    if len(fdims) != len(qdims) or any(
        a is not None and b is not None and a != b for a, b in zip(fdims, qdims, strict=True)
    ):
        raise ValueError(f"the float and int8 models take different inputs: {fdims} vs {qdims}")
    x = _check_inputs("inputs", inputs, fdims)
    p_float = _file_probabilities(fpath, _is_embedder(fmodel), x, threads)
    p_int8 = _file_probabilities(qpath, _is_embedder(qmodel), x, threads)
    if p_float.shape != p_int8.shape:
        raise ValueError(
            f"the float and int8 models give different outputs: {list(p_float.shape)} vs "
            f"{list(p_int8.shape)}"
        )
    diff = np.abs(p_float - p_int8)
    top_float, top_int8 = p_float.argmax(-1), p_int8.argmax(-1)
    report: dict[str, Any] = {
        "examples": len(x),
        "classes": int(p_float.shape[1]),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "top1_agreement": float((top_float == top_int8).mean()),
        "disagreements": int((top_float != top_int8).sum()),
        "float_bytes": fpath.stat().st_size,
        "int8_bytes": qpath.stat().st_size,
    }
    if labels is not None:
        y = _check_labels(labels, len(x), p_float.shape[1])
        report["float_accuracy"] = float((top_float == y).mean())
        report["int8_accuracy"] = float((top_int8 == y).mean())
        report["accuracy_change"] = report["int8_accuracy"] - report["float_accuracy"]
        # paired per example: the change's 95% CI half-width (normal approximation)
        d = (top_int8 == y).astype(np.float64) - (top_float == y).astype(np.float64)
        report["accuracy_change_ci95"] = (
            float(1.96 * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        )
    return report


def _check_labels(labels: Any, n: int, classes: int) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"'labels' must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"'labels' must hold integer classes, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"'labels' must have shape [{n}] like 'inputs', got {list(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"'labels' must be in [0, {classes}), got values in [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


# ------------------------------------------------------------------- parity on episodes

#: ``(adapted, support_x, support_y, path) -> None``: writes the float ONNX classifier.
Exporter = Callable[["Adapted", "torch.Tensor", "torch.Tensor", Path], None]


def _to_onnx_classifier(
    adapted: Adapted, support_x: torch.Tensor, support_y: torch.Tensor, path: Path
) -> None:
    from medmeta.export.onnx import to_onnx

    to_onnx(adapted, path, support_x=support_x, support_y=support_y, form="classifier")


@dataclass
class EpisodeParity:
    """The float vs int8 comparison over few-shot test episodes (fractions, not %).

    ``accuracy_change`` is the mean over episodes of (int8 - float) accuracy with its
    95% CI half-width ``accuracy_change_ci95``; ``max_abs_prob_diff`` is the largest over
    every query of every episode; ``per_episode`` holds each episode's
    :func:`parity_report`.
    """

    episodes: int
    ways: int
    shots: int
    queries_per_episode: float
    float_accuracy: float
    float_accuracy_ci95: float
    int8_accuracy: float
    int8_accuracy_ci95: float
    accuracy_change: float
    accuracy_change_ci95: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    top1_agreement: float
    per_episode: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_parity(
    learner: MetaLearner,
    test_set: Any,
    *,
    ways: int,
    shots: int,
    episodes: int = 5,
    queries: int | None = None,
    seed: int = 0,
    export: Exporter | None = None,
    per_channel: bool = True,
    threads: int = 2,
) -> EpisodeParity:
    """Float vs int8 accuracy of a learner's exported classifiers on seeded test episodes.

    Protocol (adapting, exporting and quantizing costs a few seconds per episode, so there
    are a handful of large episodes rather than 600 small ones): for each of ``episodes``
    episodes drawn with ``numpy.random.default_rng(seed)``, pick ``ways`` classes of
    ``test_set`` and ``shots`` support examples of each; adapt the learner to them
    (:meth:`MetaLearner.adapt`), export the classifier (``export``, default
    :func:`medmeta.export.to_onnx` with ``form="classifier"``), quantize it with the support inputs as calibration data
    (:func:`quantize_onnx`) and run :func:`parity_report` on the queries: every other
    example of those classes (or ``queries`` per class). Accuracies are means over episodes
    with 95% CIs (``1.96 std / sqrt(E)``, as :func:`~medmeta.eval.evaluate`); the change is
    paired per episode (same queries for both models), so its CI is much tighter than the
    accuracies'.

    Args:
        learner: a meta-trained :class:`~medmeta.algorithms.base.MetaLearner`.
        test_set: an :class:`~medmeta.data.ArrayDataset` of held-out classes; its inputs
            must already be model inputs (``features_of`` them is fed to the network).
        ways, shots: N and K of the episodes.
        episodes: number of episodes (>= 1).
        queries: queries per class (default: all remaining examples).
        seed: seeds the episodes.
        export: ``(adapted, support_x, support_y, path) -> None`` writing the float ONNX
            classifier (probabilities or logits output).
        per_channel, threads: passed to :func:`quantize_onnx` / :func:`parity_report`.
    """
    import torch

    from medmeta.data.episodes import features_of
    from medmeta.eval.metrics import mean_ci95

    for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("episodes", episodes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"'{name}' must be an int >= {low}, got {value!r}")
    if queries is not None and (
        isinstance(queries, bool) or not isinstance(queries, int) or queries < 1
    ):
        raise ValueError(f"'queries' must be None or an int >= 1, got {queries!r}")
    export = export or _to_onnx_classifier
    x_all = features_of(test_set)
    y_all = np.asarray(test_set.labels, dtype=np.int64)
    classes = np.unique(y_all)
    if len(classes) < ways:
        raise ValueError(f"'test_set' has {len(classes)} classes, {ways}-way episodes need {ways}")
    rng = np.random.default_rng(seed)
    reports = []
    with tempfile.TemporaryDirectory(prefix="medmeta-parity-") as tmp:
        fpath, qpath = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        for e in range(episodes):
            chosen = rng.choice(classes, size=ways, replace=False)
            support, query, query_y = [], [], []
            for n, c in enumerate(chosen):
                members = rng.permutation(np.flatnonzero(y_all == c))
                need = shots + (queries or 1)
                if len(members) < need:
                    raise ValueError(
                        f"class {test_set.class_names[c]!r} has {len(members)} examples, "
                        f"need shots + queries = {need}"
                    )
                support.append(members[:shots])
                q = members[shots:] if queries is None else members[shots : shots + queries]
                query.append(q)
                query_y.append(np.full(len(q), n))
            sx = x_all[np.concatenate(support)]
            sy = torch.arange(ways).repeat_interleave(shots)
            adapted = learner.adapt(sx, sy)
            export(adapted, sx, sy, fpath)
            quantize_onnx(fpath, qpath, sx.numpy(), per_channel=per_channel)
            report = parity_report(
                fpath,
                qpath,
                x_all[np.concatenate(query)].numpy(),
                np.concatenate(query_y),
                threads=threads,
            )
            report["classes"] = [str(test_set.class_names[c]) for c in chosen]
            reports.append(report)
            logger.info(
                "episode %d: float %.4f int8 %.4f agreement %.4f max |dp| %.4f",
                e, report["float_accuracy"], report["int8_accuracy"],
                report["top1_agreement"], report["max_abs_prob_diff"],
            )  # fmt: skip
    fa, fci = mean_ci95([r["float_accuracy"] for r in reports])
    qa, qci = mean_ci95([r["int8_accuracy"] for r in reports])
    dc, dci = mean_ci95([r["accuracy_change"] for r in reports])
    n = sum(r["examples"] for r in reports)
    return EpisodeParity(
        episodes=episodes,
        ways=ways,
        shots=shots,
        queries_per_episode=n / episodes,
        float_accuracy=fa,
        float_accuracy_ci95=fci,
        int8_accuracy=qa,
        int8_accuracy_ci95=qci,
        accuracy_change=dc,
        accuracy_change_ci95=dci,
        max_abs_prob_diff=max(r["max_abs_prob_diff"] for r in reports),
        mean_abs_prob_diff=sum(r["mean_abs_prob_diff"] * r["examples"] for r in reports) / n,
        top1_agreement=sum(r["top1_agreement"] * r["examples"] for r in reports) / n,
        per_episode=reports,
    )
