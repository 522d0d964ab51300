"""Export adapted models to ONNX: :func:`to_onnx`.

Two forms (``form=``):

* ``"classifier"`` -> ``path``: input -> calibrated ``probabilities [n, N]``; learners with
  an embedding space also output ``distances [n, N]`` to the class centres and
  ``embeddings [n, D]`` (OOD flags and explanations on the device). Every learner whose
  ``adapt`` result is traceable exports this form (MAML family with the adapted weights and
  support batch-norm statistics; metric learners with their prototypes baked in; matching,
  relation and SNAIL with their support set baked in, probabilities only).
* ``"enrolment"`` -> ``<stem>.embed.onnx`` (input -> ``embeddings``) and
  ``<stem>.head.onnx`` (``(embeddings, prototypes) -> (probabilities, distances)``, classes
  dynamic), for learners with a prototype head (protonet, supervised baseline, siamese in
  prototype mode). The embedder's metadata carries the exported enrolment (prototypes,
  support embeddings, OOD threshold) and names its head by file name and SHA-256.

``"both"`` writes all three. Each file is self-contained (weights inline, no external-data
files), opset >= 17, batch axis dynamic, checked by ``onnx.checker`` and by a run on
onnxruntime against eager PyTorch, and carries the metadata of :mod:`medmeta.edge.schema`.

Exporter: the dynamo exporter (``torch.export``) first; if it fails or cannot keep the batch
axis dynamic, the TorchScript exporter, with the reason logged as a warning.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

import medmeta
from medmeta import ops
from medmeta._files import atomic_write_bytes
from medmeta.algorithms.base import Adapted, MetaLearner
from medmeta.edge.enrol import DEFAULT_OOD_QUANTILE, build_enrolment
from medmeta.edge.preprocess import Preprocessing
from medmeta.edge.schema import encode_array
from medmeta.export import graphs
from medmeta.export.metadata import (
    class_names_for,
    evaluation_summary,
    set_metadata,
    weights_sha256,
)

if TYPE_CHECKING:
    from medmeta.export.segmentation import SegmenterExport

__all__ = ["FORMS", "MIN_OPSET", "ExportError", "ExportResult", "export_graph", "to_onnx"]

logger = logging.getLogger(__name__)

FORMS = ("classifier", "enrolment", "both")
MIN_OPSET = 17
#: Largest |ONNX - eager| probability difference accepted by the export-time check.
CHECK_TOLERANCE = 1e-4
_PROTOBUF_LIMIT = 2**31 - 1


class ExportError(RuntimeError):
    """An export failed with both exporters, or its result does not match eager PyTorch."""


@dataclass
class ExportResult:
    """Files written by :func:`to_onnx`.

    Attributes:
        classifier: the classifier file (``path``) or None.
        embedder, head: the enrolment pair (``<stem>.embed.onnx``, ``<stem>.head.onnx``).
        metadata: the metadata of the primary file (classifier, else embedder).
        exporter: ``"dynamo"``, or ``"torchscript"`` if any file needed the fallback.
        int8, parity: the int8 model and its parity report (``int8=True``).
        checks: ``{file role: max |onnxruntime - eager|}`` of the export-time check.
        metadata_by_role: the metadata of every written file by role.
    """

    classifier: Path | None
    embedder: Path | None
    head: Path | None
    metadata: dict[str, Any]
    exporter: str
    int8: Path | None = None
    parity: dict[str, Any] | None = None
    checks: dict[str, float] = field(default_factory=dict)
    metadata_by_role: dict[str, dict[str, Any]] = field(default_factory=dict)


# ------------------------------------------------------------------------------ exporters


def _log_warnings(caught: list[warnings.WarningMessage], exporter: str) -> None:
    for w in caught:
        level = (
            logging.DEBUG
            if issubclass(w.category, DeprecationWarning | FutureWarning)
            else logging.INFO
        )
        logger.log(level, "%s exporter: %s: %s", exporter, w.category.__name__, w.message)


def _dynamic_ok(model: onnx.ModelProto, dynamic: dict[str, dict[int, str]]) -> None:
    """Raise if an axis meant to be dynamic came out as a fixed size."""
    for value in (*model.graph.input, *model.graph.output):
        for axis in dynamic.get(value.name, {}):
            dim = value.type.tensor_type.shape.dim[axis]
            if not dim.dim_param:
                raise ValueError(f"axis {axis} of {value.name!r} was fixed to {dim.dim_value}")


def _export_dynamo(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    dims: dict[str, Any] = {}
    shapes = tuple(
        {
            axis: dims.setdefault(label, torch.export.Dim(label, min=1))
            for axis, label in dynamic.get(name, {}).items()
        }
        for name in input_names
    )
    # the exporter warns once per torchvision op when torchvision is absent; medmeta's
    # graphs use none of them, so those lines are noise for the user
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
    finally:
        registration.setLevel(level)
    return program.model_proto


def _export_torchscript(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        args,
        buffer,
        dynamo=False,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic,
        opset_version=opset,
        do_constant_folding=True,
    )
    return onnx.load_model_from_string(buffer.getvalue())


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
    what: str = "model",
) -> tuple[onnx.ModelProto, str]:
    """``module(*args)`` as an ONNX model and the exporter used (``"dynamo"`` or
    ``"torchscript"``).

    Args:
        dynamic: ``{input or output name: {axis: symbolic name}}``; inputs' axes must stay
            symbolic in the dynamo result, else it counts as failed.

    Raises:
        ExportError: both exporters failed (both reasons in the message).
    """
    module = module.eval()
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            model = _export_dynamo(module, args, input_names, output_names, dynamic, opset)
            _dynamic_ok(model, dynamic)
        _log_warnings(caught, "dynamo")
        return model, "dynamo"
    except Exception as err:
        reason = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        )
        logger.warning(
            "the dynamo ONNX exporter failed for the %s (%s); falling back to the TorchScript "
            "exporter",
            what,
            reason[:500],
        )
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            model = _export_torchscript(module, args, input_names, output_names, dynamic, opset)
            _dynamic_ok(model, dynamic)
        _log_warnings(caught, "torchscript")
    except Exception as err:
        raise ExportError(
            f"ONNX export of the {what} failed with both exporters; dynamo: {reason}; "
            f"torchscript: {type(err).__name__}: {err}"
        ) from err
    return model, "torchscript"


# ------------------------------------------------------------------------ writing & checks


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _finalise(model: onnx.ModelProto, metadata: dict[str, Any], path: Path) -> dict[str, Any]:
    """Complete and attach the metadata, check the model and write it atomically."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{path}: the exporter left external weight data; cannot inline it")
    model.producer_name, model.producer_version = "medmeta", medmeta.__version__
    stored = set_metadata(
        model, {**metadata, "opset": _opset(model), "weights_sha256": weights_sha256(model)}
    )
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(
            f"{path}: {model.ByteSize():,} bytes exceed protobuf's 2 GiB single-file limit"
        )
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())
    return stored


def _run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from medmeta.edge.runtime import cpu_session

    # a small check: one thread, no thread pool to spin up
    return cpu_session(model.SerializeToString(), "export check", 1).run(None, feeds)


def _check(what: str, got: np.ndarray, want: torch.Tensor, tolerance: float) -> float:
    diff = float(np.abs(got - want.detach().numpy()).max()) if got.size else 0.0
    if not diff <= tolerance:
        raise ExportError(
            f"the exported {what} differs from eager PyTorch by {diff:.3g} (> {tolerance:g}, "
            "check_tolerance=) on the example inputs"
        )
    return diff


# ------------------------------------------------------------------------------- to_onnx


def _tensor(name: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if dtype.is_floating_point and not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected preprocessed float inputs, got dtype {t.dtype}")
    if not dtype.is_floating_point and (t.dtype.is_floating_point or t.dtype == torch.bool):
        raise TypeError(f"{name}: expected integer labels, got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=dtype).contiguous()


def _calibration(temperature: float | None, evaluation: Any, source: str | None) -> dict[str, Any]:
    """Metadata ``calibrated`` and ``calibration`` (what fitted the temperature, in words)."""
    given = temperature is not None or _temperature(None, evaluation) != 1.0
    if not given:
        return {"calibrated": False, "calibration": "uncalibrated (temperature 1)"}
    return {"calibrated": True, "calibration": source or "temperature given at export"}


def _temperature(temperature: float | None, evaluation: Any) -> float:
    if temperature is None and evaluation is not None:
        temperature = getattr(evaluation, "temperature", None)
        if temperature is None and isinstance(evaluation, dict):
            temperature = evaluation.get("temperature")
    value = 1.0 if temperature is None else temperature
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"temperature: expected a positive finite float, got {temperature!r}")
    return float(value)


def _sibling(path: Path, suffix: str) -> Path:
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.{suffix}.onnx")


def _enrolment_metadata(
    prototypes: torch.Tensor,
    support_z: torch.Tensor | None,
    support_y: torch.Tensor | None,
    class_names: list[str],
    metric: str,
    quantile: float,
) -> dict[str, Any]:
    """Exported enrolment: prototypes, support embeddings/labels, OOD threshold."""
    protos = prototypes.detach().float().numpy()
    emb = (
        support_z.detach().float().numpy()
        if support_z is not None
        else np.zeros((0, protos.shape[1]), np.float32)
    )
    lab = support_y.numpy().astype(np.int64) if support_y is not None else np.zeros(0, np.int64)
    state = build_enrolment(
        class_names, emb, lab, metric, quantile=quantile, fixed_prototypes=protos
    )
    return {
        "prototypes": encode_array(protos),
        "support_embeddings": encode_array(emb) if len(emb) else None,
        "support_labels": lab.tolist() if len(lab) else None,
        "ood": {"threshold": state.ood_threshold, "quantile": quantile, "rule": state.ood_rule},
    }


def to_onnx(
    model: MetaLearner | Adapted,
    path: str | os.PathLike[str],
    *,
    support_x: Any = None,
    support_y: Any = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    temperature: float | None = None,
    temperature_source: str | None = None,
    evaluation: Any = None,
    form: str = "classifier",
    int8: bool = False,
    calibration_x: Any = None,
    opset: int = 18,
    ood_quantile: float = DEFAULT_OOD_QUANTILE,
    check_tolerance: float = CHECK_TOLERANCE,
) -> ExportResult | SegmenterExport:
    """Export an adapted model (see the module docstring for the forms and files).

    Args:
        model: a :class:`MetaLearner` (adapted here to ``support_x``/``support_y``, which are
            then required) or an :class:`Adapted` classifier.
        path: the classifier file; the enrolment pair goes beside it.
        support_x: preprocessed float support inputs ``[S, *input_shape]`` (the adaptation
            set; also the export check's inputs, the centroids/OOD threshold and the
            default int8 calibration data).
        support_y: ``[S]`` labels in ``[0, ways)``.
        preprocessing: how raw inputs become model inputs (default: images/vectors scaled
            by dtype, no normalisation, for ``support_x``'s shape).
        class_names: ``ways`` names (default ``class_0``...).
        temperature: calibration temperature (default: ``evaluation.temperature``, else 1).
        temperature_source: how the temperature was fitted, in words (metadata
            ``calibration``; ``calibrated`` is False when there is no temperature).
        evaluation: an ``EvalResult`` (or its dict) whose accuracy and CI go in the metadata.
        form: ``"classifier"``, ``"enrolment"`` or ``"both"``.
        int8: also write an int8 QDQ model with :mod:`medmeta.export.quantize` and its parity.
        calibration_x: preprocessed inputs calibrating int8 (default ``support_x``).
        opset: ONNX opset, >= 17.
        ood_quantile: quantile of the OOD rule (:mod:`medmeta.edge.enrol`).
        check_tolerance: largest |onnxruntime - eager| probability accepted by the
            export-time check on the support set (or ``calibration_x``) inputs.

    Segmentation learners and ``AdaptedSegmenter`` s go to
    :func:`medmeta.export.export_segmenter` (``support_y``: the support label maps) and
    return its :class:`~medmeta.export.SegmenterExport`.

    Raises:
        TypeError / ValueError: bad arguments (named); a learner that has no enrolment form.
        ExportError: both exporters failed or the result does not match eager PyTorch.
    """
    from medmeta.export import segmentation  # imports this module: resolved at call time

    if segmentation.is_segmenter(model):
        return segmentation.from_to_onnx(
            model, path, support_x=support_x, support_y=support_y, preprocessing=preprocessing,
            class_names=class_names, temperature=temperature,
            temperature_source=temperature_source, evaluation=evaluation, form=form, int8=int8,
            calibration_x=calibration_x, opset=opset, ood_quantile=ood_quantile,
            check_tolerance=check_tolerance,
        )  # fmt: skip
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {MIN_OPSET}, got {opset!r}")
    if not check_tolerance > 0:
        raise ValueError(f"check_tolerance: expected a positive float, got {check_tolerance!r}")
    if not 0.0 < ood_quantile <= 1.0:
        raise ValueError(f"ood_quantile: expected a value in (0, 1], got {ood_quantile!r}")
    sx = None if support_x is None else _tensor("support_x", support_x, torch.float32)
    sy = None if support_y is None else _tensor("support_y", support_y, torch.int64)
    if (sx is None) != (sy is None):
        raise ValueError("support_x and support_y: give both or neither")
    if sx is not None and (sx.dim() < 2 or sy.shape != (sx.shape[0],) or sx.shape[0] == 0):
        raise ValueError(
            f"support_x [S, ...] and support_y [S]: got shapes {list(sx.shape)} and {list(sy.shape)}"
        )
    if sx is not None and not torch.isfinite(sx).all():
        raise ValueError("support_x: contains NaN or infinite values")
    if not isinstance(model, MetaLearner | Adapted):
        raise TypeError(f"model: expected a MetaLearner or an Adapted, got {type(model).__name__}")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    if isinstance(model, MetaLearner):
        if sx is None:
            raise ValueError(f"support_x/support_y: required to adapt the {model.name!r} learner")
        adapted, algorithm = model.adapt(sx.to(device), sy.to(device)), model.name
    else:
        adapted, algorithm = model, None
    if device.type != "cpu":  # export (and its eager reference) on CPU; the caller's stays put
        adapted = copy.deepcopy(adapted).cpu()
    adapted = adapted.eval()
    ways = int(adapted.ways)
    if sy is not None and (sy.min() < 0 or sy.max() >= ways):
        raise ValueError(f"support_y: labels must be in [0, {ways}), got {sy.min()}..{sy.max()}")
    names = class_names_for(ways, class_names)

    pre = _preprocessing(preprocessing, sx)
    input_shape = list(pre.input_shape)
    if sx is not None and list(sx.shape[1:]) != input_shape:
        raise ValueError(
            f"support_x: examples of shape {list(sx.shape[1:])} differ from the preprocessing's "
            f"input_shape {input_shape}"
        )
    if sx is not None:
        example = sx
    elif calibration_x is not None:  # real inputs for the tracing and the export check
        example = _tensor("calibration_x", calibration_x, torch.float32)
        if list(example.shape[1:]) != input_shape or len(example) == 0:
            raise ValueError(
                f"calibration_x: expected [n, *{input_shape}], got {list(example.shape)}"
            )
    else:
        example = torch.zeros(2, *input_shape)
    example = example if len(example) >= 2 else example.repeat(2, *[1] * (example.dim() - 1))
    T = _temperature(temperature, evaluation)
    base = {
        "medmeta_version": medmeta.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "algorithm": algorithm,
        "class_names": names,
        "input_name": "x",
        "input_shape": input_shape,
        "preprocessing": pre.to_dict(),
        "temperature": T,
        **_calibration(temperature, evaluation, temperature_source),
        "evaluation": evaluation_summary(evaluation),
        "precision": "float32",
        "support_size": None if sx is None else int(sx.shape[0]),
    }
    parts = graphs.split_adapted(adapted, sx, sy)
    if form in ("enrolment", "both") and not parts.enrolable:
        raise ValueError(
            f"form={form!r}: the enrolment form needs a learner with an embedding network and a "
            f"prototype head (protonet, supervised, siamese with classifier='prototype'); "
            f"{algorithm or type(adapted.classify).__name__!r} has none. Use form='classifier'."
        )
    path = Path(path)
    with torch.no_grad():
        support_z = None
        if parts.features is not None and sx is not None:
            support_z = parts.features(sx).flatten(1)
    job = _Job(example, base, T, support_z, sy, ood_quantile, opset, check_tolerance)
    written: dict[str, tuple[Path, dict[str, Any]]] = {}
    if form in ("classifier", "both"):
        written["classifier"] = _export_classifier(job, adapted, parts, path)
    if form in ("enrolment", "both"):
        written.update(_export_enrolment(job, parts, path))
    exporters, checks = job.exporters, job.checks
    result = ExportResult(
        classifier=written["classifier"][0] if "classifier" in written else None,
        embedder=written["embedder"][0] if "embedder" in written else None,
        head=written["head"][0] if "head" in written else None,
        metadata=(written.get("classifier") or written["embedder"])[1],
        exporter="torchscript" if "torchscript" in exporters else "dynamo",
        checks=checks,
        metadata_by_role={role: meta for role, (_, meta) in written.items()},
    )
    if int8:
        _quantize(result, sx, sy, calibration_x)
    logger.info(
        "exported %s (%s exporter): %s",
        algorithm or "adapted model",
        result.exporter,
        ", ".join(str(p) for p, _ in written.values()),
    )
    return result


def _preprocessing(
    preprocessing: Preprocessing | dict[str, Any] | None, sx: torch.Tensor | None
) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    if isinstance(preprocessing, dict):
        return Preprocessing.from_dict(preprocessing)
    if preprocessing is not None:
        raise TypeError(
            f"preprocessing: expected a Preprocessing or its dict, got {type(preprocessing).__name__}"
        )
    if sx is None:
        raise ValueError("preprocessing: required when no support_x tells the input shape")
    shape = tuple(sx.shape[1:])
    if len(shape) == 3:
        return Preprocessing.for_images(shape)
    if len(shape) == 1:
        return Preprocessing.for_vectors(shape[0])
    if len(shape) == 2:
        return Preprocessing.for_series(shape)
    raise ValueError(f"support_x: no default preprocessing for examples of shape {list(shape)}")


@dataclass
class _Job:
    """What every file of one :func:`to_onnx` call shares."""

    example: torch.Tensor  # preprocessed inputs [>= 2, *input_shape] for tracing and checks
    base: dict[str, Any]  # metadata common to all files
    temperature: float
    support_z: torch.Tensor | None  # support embeddings [S, D]
    support_y: torch.Tensor | None
    quantile: float
    opset: int
    tolerance: float
    exporters: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)

    def export(
        self,
        module: nn.Module,
        args: tuple[torch.Tensor, ...],
        inputs: list[str],
        outputs: list[str],
        dynamic: dict[str, dict[int, str]],
        what: str,
    ) -> onnx.ModelProto:
        model, exporter = export_graph(module, args, inputs, outputs, dynamic, self.opset, what)
        self.exporters.append(exporter)
        return model

    def enrolment(self, prototypes: torch.Tensor, metric: str) -> dict[str, Any]:
        return _enrolment_metadata(
            prototypes,
            self.support_z,
            self.support_y,
            self.base["class_names"],
            metric,
            self.quantile,
        )


def _export_classifier(
    job: _Job, adapted: Adapted, parts: graphs.AdaptedParts, path: Path
) -> tuple[Path, dict[str, Any]]:
    T, x = job.temperature, job.example
    featured = parts.features is not None and parts.prototypes is not None
    if featured:
        module: nn.Module = graphs.FeatureClassifierGraph(
            parts.features, parts.head, parts.prototypes, parts.metric, T
        )
        outputs = ["probabilities", "distances", "embeddings"]
    else:
        module = graphs.ProbabilityGraph(adapted.classify, T)
        outputs = ["probabilities"]
    dynamic = {"x": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    model = job.export(module, (x,), ["x"], outputs, dynamic, "classifier")
    with torch.no_grad():
        want = torch.softmax(adapted(x) / T, dim=-1)  # the eager reference
    got = _run_onnx(model, {"x": x.numpy()})
    job.checks["classifier"] = _check("classifier", got[0], want, job.tolerance)
    meta = {
        **job.base,
        "role": "classifier",
        "outputs": outputs,
        "exporter": job.exporters[-1],
        "metric": parts.metric if featured else None,
        "embedding_dim": int(got[2].shape[1]) if featured else None,
        "enrolment": job.enrolment(parts.prototypes, parts.metric) if featured else None,
    }
    return path, _finalise(model, meta, path)


def _export_enrolment(
    job: _Job, parts: graphs.AdaptedParts, path: Path
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The embedder and its prototype head (head first: the embedder records its hash)."""
    x, T = job.example, job.temperature
    head_temperature = parts.prototype_head.temperature
    embedder = graphs.EmbedderGraph(parts.features)
    embed_model = job.export(
        embedder,
        (x,),
        ["x"],
        ["embeddings"],
        {"x": {0: "batch"}, "embeddings": {0: "batch"}},
        "embedder",
    )
    with torch.no_grad():
        z = embedder(x)
    (got_z,) = _run_onnx(embed_model, {"x": x.numpy()})
    job.checks["embedder"] = _check("embedder", got_z, z, job.tolerance)
    dim = int(z.shape[1])
    embed_sha = weights_sha256(embed_model)

    protos = parts.prototypes.detach().float()
    if job.support_z is not None:  # the device recomputes prototypes as class means
        means = ops.prototypes(job.support_z[None], job.support_y[None], len(protos))[0]
        gap = float((means - protos).abs().max())
        if gap > job.tolerance * max(1.0, float(protos.abs().max())):
            raise ExportError(
                f"the learner's prototypes differ from the class means of its support "
                f"embeddings by {gap:.3g}; on-device enrolment (class means) would not "
                "reproduce them"
            )
    head = graphs.PrototypeHeadGraph(parts.metric, head_temperature, T)
    dynamic = {
        "embeddings": {0: "batch"},
        "prototypes": {0: "classes"},
        "probabilities": {0: "batch", 1: "classes"},
        "distances": {0: "batch", 1: "classes"},
    }
    head_model = job.export(
        head,
        (z, protos),
        ["embeddings", "prototypes"],
        ["probabilities", "distances"],
        dynamic,
        "head",
    )
    with torch.no_grad():
        want = torch.softmax(parts.head(z) / T, dim=-1)  # the learner's own head, eagerly
    got = _run_onnx(head_model, {"embeddings": z.numpy(), "prototypes": protos.numpy()})
    job.checks["head"] = _check("head", got[0], want, job.tolerance)
    common = {"metric": parts.metric, "embedding_dim": dim, "head_temperature": head_temperature}
    head_path = _sibling(path, "head")
    head_meta = {
        **job.base,
        **common,
        "role": "head",
        "input_name": "embeddings",
        "input_shape": [dim],
        "preprocessing": None,
        "outputs": ["probabilities", "distances"],
        "exporter": job.exporters[-1],
        "embedder_weights_sha256": embed_sha,
    }
    head_meta = _finalise(head_model, head_meta, head_path)
    embed_path = _sibling(path, "embed")
    embed_meta = {
        **job.base,
        **common,
        "role": "embedder",
        "outputs": ["embeddings"],
        "exporter": job.exporters[-2],
        "enrolment": job.enrolment(protos, parts.metric),
        "head_file": head_path.name,
        "head_sha256": hashlib.sha256(head_path.read_bytes()).hexdigest(),
    }
    embed_meta = _finalise(embed_model, embed_meta, embed_path)
    return {"embedder": (embed_path, embed_meta), "head": (head_path, head_meta)}


def _quantize(
    result: ExportResult, sx: torch.Tensor | None, sy: torch.Tensor | None, calibration_x: Any
) -> None:
    """Write the int8 twin of the primary file (medmeta.export.quantize) with its parity."""
    from medmeta.export import quantize  # another module's job; imported only when asked

    source = result.classifier or result.embedder
    calib = calibration_x if calibration_x is not None else (None if sx is None else sx.numpy())
    if calib is None:
        raise ValueError("calibration_x: int8=True needs calibration inputs (or support_x)")
    calib = np.ascontiguousarray(np.asarray(calib, dtype=np.float32))
    int8_path = _sibling(source, "int8")
    quantize.quantize_onnx(source, int8_path, calib)
    inputs = sx.numpy() if sx is not None else calib
    labels = sy.numpy() if sx is not None and source == result.classifier else None
    # quantize_onnx already gave the int8 file its own metadata (precision, weights hash)
    result.parity = quantize.parity_report(source, int8_path, inputs, labels)
    result.int8 = int8_path
