"""Export an adapted few-shot regressor to ONNX: :func:`regressor_to_onnx`.

The model is an :class:`~medmeta.algorithms.ensemble_regressor.EnsembleRegressor` (a
bootstrap ensemble of MAML / first-order MAML / Meta-SGD / Reptile regressors adapted to one
task's support set; Efron & Tibshirani 1993, ch. 6; Lakshminarayanan et al. 2017). The file
computes, for model inputs ``x [n, F]`` (batch axis dynamic), ``prediction``, ``lower``,
``upper`` and ``member_std`` ``[n]`` in the units of the target
(:class:`~medmeta.export.graphs.RegressionIntervalGraph`), and carries the metadata of
:mod:`medmeta.edge.schema` with role ``"regressor"``: the target, the interval (members,
level, z, noise_std), the preprocessing that turns raw table rows or vectors into ``x``, and
scalar summaries of training and of the adapted task's held-out rows. It runs without
PyTorch in :class:`medmeta.edge.EdgeRegressor`.

As for classifiers (:func:`~medmeta.export.onnx.to_onnx`): dynamo exporter first, TorchScript
as the fallback, weights inline, ``onnx.checker`` and a run on onnxruntime against eager
PyTorch on the support inputs before the file is written.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medmeta
from medmeta.algorithms.ensemble_regressor import EnsembleRegressor
from medmeta.edge.preprocess import Preprocessing
from medmeta.edge.schema import REGRESSION_OUTPUTS
from medmeta.export import graphs
from medmeta.export.onnx import (
    MIN_OPSET,
    ExportError,
    _finalise,
    _preprocessing,
    _run_onnx,
    _tensor,
    export_graph,
)

__all__ = ["CHECK_TOLERANCE", "RegressorExport", "regressor_to_onnx"]

logger = logging.getLogger(__name__)

#: Largest |ONNX - eager| accepted by the export-time check, relative to the target's scale
#: (the largest |value| of the outputs or the support targets' standard deviation).
CHECK_TOLERANCE = 1e-4


@dataclass
class RegressorExport:
    """What :func:`regressor_to_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        metadata: its metadata (see :mod:`medmeta.edge.schema`).
        exporter: ``"dynamo"`` or ``"torchscript"``.
        max_abs_diff: the largest |onnxruntime - eager PyTorch| over the four outputs on the
            support inputs (target units).
        relative_diff: ``max_abs_diff`` divided by the target's scale.
    """

    path: Path
    metadata: dict[str, Any]
    exporter: str
    max_abs_diff: float
    relative_diff: float


def _target(target: str | Mapping[str, Any]) -> dict[str, Any]:
    data = {"name": target} if isinstance(target, str) else dict(target)
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ValueError(f"target: expected a column name or {{'name': ...}}, got {target!r}")
    return data


def _scalars(name: str, summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON-able scalar entries of a summary (non-finite floats become None)."""
    if summary is None:
        return None
    if not isinstance(summary, Mapping):
        raise TypeError(f"{name}: expected a dict of scalars or None, got {type(summary).__name__}")
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, str | bool | int):
            out[str(key)] = value
        elif isinstance(value, float):
            out[str(key)] = value if math.isfinite(value) else None
    return out


def _inputs(support_x: Any, support_y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    sx = _tensor("support_x", support_x, torch.float32)
    if sx.dim() < 2 or len(sx) == 0:
        raise ValueError(f"support_x: expected preprocessed inputs [K, ...], got {list(sx.shape)}")
    if not torch.isfinite(sx).all():
        raise ValueError("support_x: contains NaN or infinite values")
    if support_y is None:
        return sx, None
    sy = _tensor("support_y", support_y, torch.float32)
    if sy.shape != (len(sx),):
        raise ValueError(f"support_y: expected [{len(sx)}] targets, got {list(sy.shape)}")
    return sx, sy


def regressor_to_onnx(
    ensemble: EnsembleRegressor,
    path: str | os.PathLike[str],
    *,
    preprocessing: Preprocessing | Mapping[str, Any] | None,
    target: str | Mapping[str, Any],
    support_x: Any,
    support_y: Any = None,
    algorithm: str | None = None,
    held_out: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    opset: int = 18,
    check_tolerance: float = CHECK_TOLERANCE,
) -> RegressorExport:
    """Write ``ensemble`` with its predictive interval as one self-contained ONNX file.

    Args:
        ensemble: the adapted ensemble (:func:`~medmeta.algorithms.ensemble_regressor.
            adapt_ensemble`).
        path: the ``.onnx`` file to write (atomically).
        preprocessing: how raw rows / vectors become model inputs (a :class:`Preprocessing`
            or its dict; None: plain vectors of ``support_x``'s width).
        target: the predicted column's name, or the model card's ``{"name": ..., ...}``.
        support_x: preprocessed support inputs ``[K, F]``: traced, and the export is checked
            on them.
        support_y: the support targets ``[K]`` (optional): their standard deviation sets the
            check's scale and their summary goes into the metadata.
        algorithm: the learner's name, for the metadata.
        held_out, training: scalar summaries (held-out MSE, R², coverage...; training steps,
            validation R²...) stored in the metadata; non-scalars are left out.
        opset: ONNX opset, >= 17.
        check_tolerance: largest |ONNX - eager| accepted, relative to the target's scale.

    Raises:
        TypeError, ValueError: bad arguments (named).
        ExportError: both exporters failed, or the file disagrees with eager PyTorch.
    """
    if not isinstance(ensemble, EnsembleRegressor):
        raise TypeError(f"ensemble: expected an EnsembleRegressor, got {type(ensemble).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {MIN_OPSET}, got {opset!r}")
    if not check_tolerance > 0:
        raise ValueError(f"check_tolerance: expected a positive float, got {check_tolerance!r}")
    target_meta = _target(target)
    sx, sy = _inputs(support_x, support_y)
    pre = _preprocessing(
        dict(preprocessing) if isinstance(preprocessing, Mapping) else preprocessing, sx
    )
    if list(sx.shape[1:]) != list(pre.input_shape):
        raise ValueError(f"support_x: examples of shape {list(sx.shape[1:])} differ from the "
                         f"preprocessing's input_shape {list(pre.input_shape)}")  # fmt: skip
    model = copy.deepcopy(ensemble).cpu().eval()
    example = sx if len(sx) >= 2 else sx.repeat(2, *[1] * (sx.dim() - 1))
    graph = graphs.RegressionIntervalGraph(model)
    outputs = list(REGRESSION_OUTPUTS)
    dynamic = {"x": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    onnx_model, exporter = export_graph(graph, (example,), ["x"], outputs, dynamic, opset,
                                        "regressor")  # fmt: skip
    abs_diff, rel_diff = _check(onnx_model, model, example, sy, check_tolerance)
    meta = {
        "medmeta_version": medmeta.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "role": "regressor",
        "task": "regression",
        "algorithm": algorithm,
        "input_name": "x",
        "input_shape": list(pre.input_shape),
        "n_features": int(np.prod(pre.input_shape)),
        "outputs": outputs,
        "preprocessing": pre.to_dict(),
        "target": target_meta,
        "interval": _interval(model),
        "support_size": len(sx),
        "support_targets": None if sy is None else _describe(sy),
        "held_out": _scalars("held_out", held_out),
        "training": _scalars("training", training),
        "precision": "float32",
        "exporter": exporter,
        "check": {"max_abs_diff": abs_diff, "relative_diff": rel_diff},
    }
    out = Path(path)
    stored = _finalise(onnx_model, meta, out)
    logger.info("exported a %d-member %s regressor (%s exporter) to %s; |ONNX - PyTorch| <= %.3g",
                len(model.members), algorithm or "", exporter, out, abs_diff)  # fmt: skip
    return RegressorExport(out, stored, exporter, abs_diff, rel_diff)


def _interval(ensemble: EnsembleRegressor) -> dict[str, Any]:
    """The interval's metadata: ``prediction ± z sqrt(member variance + noise_std²)``."""
    return {"members": len(ensemble.members), "level": float(ensemble.level),
            "z": float(ensemble.z), "noise_std": float(ensemble.noise_std)}  # fmt: skip


def _describe(y: torch.Tensor) -> dict[str, float]:
    v = y.double()
    std = float(v.std()) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max())}


def _check(
    onnx_model: Any,
    ensemble: EnsembleRegressor,
    x: torch.Tensor,
    sy: torch.Tensor | None,
    tolerance: float,
) -> tuple[float, float]:
    """``(max |onnxruntime - eager|, that / target scale)`` over the four outputs on ``x``;
    :class:`ExportError` beyond ``tolerance`` relative to the scale."""
    iv = ensemble.interval(x)
    want = [iv.mean, iv.lower, iv.upper, iv.member_std]
    got = _run_onnx(onnx_model, {"x": x.numpy()})
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    scale = max(float(torch.stack(want).abs().max()),
                float(sy.double().std()) if sy is not None and len(sy) > 1 else 0.0,
                1e-12)  # fmt: skip
    if not diff <= tolerance * scale:
        raise ExportError(
            f"the exported regressor differs from eager PyTorch by {diff:.3g} ({diff / scale:.3g} "
            f"of the target's scale {scale:.3g}; > {tolerance:g}, check_tolerance=) on the "
            "support inputs"
        )
    return diff, diff / scale
