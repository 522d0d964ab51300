"""Export few-shot segmenters (PANet, ALPNet, ADNet) to ONNX: :func:`export_segmenter`.

The enrolment form of the classifiers, for dense prediction. From a
:class:`~medmeta.algorithms.segmenter.AdaptedSegmenter` (or a segmentation learner and a
support set to adapt it to), ``path = out/<stem>.onnx`` gives two files:

* ``<stem>.encoder.onnx``: ``x [n, C, H, W] -> features [n, D, h, w]``, the learner's dense
  encoder. The batch axis is dynamic; ``C, H, W`` are fixed to ``input_shape`` (the
  :class:`~medmeta.edge.Preprocessing` resizes every raw image to it, so a device never
  feeds another size, and the feature grid ``h x w`` -- hence the soft masks and local
  windows of on-device enrolment -- is the one the head and the metadata describe).
* ``<stem>.head.onnx``: ``(features [n, D, h, w], prototypes [P, D], prototype_onehot
  [P, N+1]) -> (logits [n, N+1, H, W], labels [n, H, W] int64)``: the learner's score head
  (:func:`medmeta.algorithms._seg_prototypes.class_scores`: scaled cosine similarities,
  per class their softmax-weighted mean -- ALPNet, Ouyang et al. 2020; a single prototype
  per class is PANet's ``scale * cos``, Wang et al. 2019; ADNet's learned background score,
  Hansen et al. 2022, as a constant) upsampled bilinearly with half-pixel centres (torch's
  ``align_corners=False``) to ``H x W``, and its argmax. Prototypes and classes are inputs
  with dynamic ``P`` and ``N+1``, so a device can enrol any classes. Plain ONNX ops only
  (MatMul, ReduceMax, Exp, Div, Resize, ArgMax, ...).

The encoder's metadata (:mod:`medmeta.edge.schema`) holds the class names (background at
0), input shape and preprocessing, the scale and background score, the pooling rule
(:class:`~medmeta.edge.PoolingRule`: which classes get class and local prototypes, ALPNet's
window / threshold / max_local) so that :class:`~medmeta.edge.EdgeSegmenter` enrols exactly
as the learner adapts, the exported prototypes and (by default) the support features and
soft masks, and the head's file name and SHA-256; the head records the encoder's weights
hash. Both files carry the weights SHA-256 of :mod:`medmeta.export.metadata`.

Checks at export, on the support images (or ``example_x``): onnxruntime's logits (encoder
then head) against the eager ``AdaptedSegmenter`` within ``check_tolerance`` (absolute, in
logit units; logits lie in ``[-scale, scale]``), the labels equal wherever the eager top-two
logits are more than twice that apart, and numpy enrolment of the support set
(:mod:`medmeta.edge.segmenter`) reproducing the adapted prototypes and their classes.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

import medmeta
from medmeta.algorithms.protonet import distance
from medmeta.algorithms.segmenter import AdaptedSegmenter, SegmentationLearner
from medmeta.edge.preprocess import Preprocessing
from medmeta.edge.schema import encode_array
from medmeta.edge.segmenter import ENCODER_ROLE, HEAD_ROLE, PoolingRule, soft_masks
from medmeta.export import onnx as export_onnx
from medmeta.export.metadata import evaluation_summary, weights_sha256

__all__ = [
    "SEG_CHECK_TOLERANCE",
    "SegmentationHeadGraph",
    "SegmenterExport",
    "export_segmenter",
    "pooling_rule",
]

logger = logging.getLogger(__name__)

#: Largest |onnxruntime - eager| logit accepted by the export-time check. Logits lie in
#: ``[-scale, scale]`` (20 by default), so this is 2.5e-5 of the range, ~200 float32 ulps
#: at 20; measured: about 1.5e-5 (a few ulps) on SegEncoders.
SEG_CHECK_TOLERANCE = 5e-4
#: Largest gap between numpy enrolment and the adapted prototypes, relative to their size.
ENROLMENT_TOLERANCE = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class SegmenterExport:
    """Files written by :func:`export_segmenter`.

    Attributes:
        encoder, head: ``<stem>.encoder.onnx`` and ``<stem>.head.onnx``.
        metadata: the encoder's metadata; ``metadata_by_role``: both files' by role.
        exporter: ``"dynamo"``, or ``"torchscript"`` if either file used it.
        checks: ``{"encoder": max |ort - eager| feature / max(1, max |feature|), "head":
            max |ort - eager| logit of the head alone, "logits": the same end to end,
            "labels": fraction of pixels whose label differs, "enrolment": largest relative
            gap of the numpy-enrolled prototypes}`` (the last with a support set).
    """

    encoder: Path
    head: Path
    metadata: dict[str, Any]
    exporter: str
    checks: dict[str, float] = field(default_factory=dict)
    metadata_by_role: dict[str, dict[str, Any]] = field(default_factory=dict)


class SegmentationHeadGraph(nn.Module):
    """``(features [n, D, h, w], prototypes [P, D], prototype_onehot [P, K]) -> (logits
    [n, K, H, W], labels [n, H, W])``: :func:`~medmeta.algorithms._seg_prototypes.
    class_scores` with the prototypes' classes as a one-hot input, upsampled to ``size``
    (bilinear, ``align_corners=False``) as :class:`AdaptedSegmenter` does, then argmax."""

    def __init__(self, scale: float, background: float | None, size: tuple[int, int]) -> None:
        super().__init__()
        self.scale = float(scale)
        self.background = None if background is None else float(background)
        self.size = (int(size[0]), int(size[1]))

    def forward(
        self, features: torch.Tensor, prototypes: torch.Tensor, onehot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, D, h, w = features.shape
        q = features.permute(0, 2, 3, 1).reshape(n * h * w, D)
        sim = self.scale * (1 - distance(q, prototypes, "cosine"))  # [nhw, P]
        e = torch.exp(sim - sim.max(-1, keepdim=True).values)
        den = e @ onehot
        score = (e * sim) @ onehot / den.clamp_min(torch.finfo(sim.dtype).tiny)
        if self.background is not None:  # ADNet: class 0 scores the learned threshold
            score = torch.cat([torch.full_like(score[:, :1], self.background), score[:, 1:]], 1)
        scores = score.reshape(n, h, w, onehot.shape[1]).permute(0, 3, 1, 2)
        logits = F.interpolate(scores, size=self.size, mode="bilinear", align_corners=False)
        return logits, logits.argmax(1)


def pooling_rule(learner: SegmentationLearner | AdaptedSegmenter) -> PoolingRule:
    """The :class:`PoolingRule` of a segmentation learner or of what it adapted.

    Raises:
        ValueError: an AdaptedSegmenter that does not record its pooling rule.
    """
    rule = learner.pooling() if isinstance(learner, SegmentationLearner) else learner.pooling
    if rule is None:
        raise ValueError(
            "pooling: this AdaptedSegmenter does not record how its prototypes were pooled; "
            "pass pooling=PoolingRule(...) or export the learner with its support set"
        )
    return PoolingRule.from_dict(rule)


# ------------------------------------------------------------------------------ arguments


def segmentation_class_names(ways: int, class_names: Sequence[str] | None) -> list[str]:
    """``N+1`` unique names, the background at 0, from ``N`` foreground names (``"background"``
    is prepended) or ``N+1`` names (the first names the background); default ``background,
    class_1, ..., class_N``."""
    if class_names is None:
        return ["background", *(f"class_{k}" for k in range(1, ways + 1))]
    if isinstance(class_names, str):
        raise TypeError("class_names: expected a sequence of names, got one string")
    names = [str(n) for n in class_names]
    if len(names) == ways:
        names = ["background", *names]
    if len(names) != ways + 1:
        raise ValueError(
            f"class_names: expected {ways} foreground names, or {ways + 1} with the background "
            f"first (the segmenter has {ways} classes), got {len(names)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: names must be unique, got {names}")
    return names


def _support_tensors(
    support_x: Any, support_masks: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``support_x [S, C, H, W]`` float32 and ``support_masks [S, H, W]`` int64, checked."""
    if support_masks is not None and support_x is None:
        raise ValueError("support_masks: given without support_x")
    sx = None if support_x is None else export_onnx._tensor("support_x", support_x, torch.float32)
    if sx is not None and (sx.dim() != 4 or len(sx) == 0):
        raise ValueError(f"support_x: expected images [S, C, H, W], got shape {list(sx.shape)}")
    if sx is not None and not torch.isfinite(sx).all():
        raise ValueError("support_x: contains NaN or infinite values")
    if support_masks is None:
        return sx, None
    sm = export_onnx._tensor("support_masks", support_masks, torch.int64)
    if sm.shape != (sx.shape[0], *sx.shape[2:]):
        raise ValueError(
            f"support_masks: expected [S, H, W] = {[sx.shape[0], *sx.shape[2:]]} (one label map "
            f"per support image, same size), got {list(sm.shape)}"
        )
    return sx, sm


def _rule(pooling: PoolingRule | Mapping[str, Any]) -> PoolingRule:
    if isinstance(pooling, PoolingRule):
        return pooling
    if isinstance(pooling, Mapping):
        return PoolingRule.from_dict(pooling)
    raise TypeError(f"pooling: expected a PoolingRule or its dict, got {type(pooling).__name__}")


def _adapted(
    model: Any, sx: torch.Tensor | None, sm: torch.Tensor | None, pooling: Any
) -> tuple[AdaptedSegmenter, str | None, PoolingRule]:
    """The adapted segmenter on CPU in eval mode, the learner's name and its pooling rule."""
    if isinstance(model, SegmentationLearner):
        if sx is None or sm is None:
            raise ValueError(
                f"support_x/support_masks: required to adapt the {model.name!r} learner"
            )
        rule = pooling_rule(model) if pooling is None else _rule(pooling)
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        adapted, algorithm = model.adapt(sx.to(device), sm.to(device)), model.name
    elif isinstance(model, AdaptedSegmenter):
        rule = pooling_rule(model) if pooling is None else _rule(pooling)
        adapted, algorithm = model, None
    else:
        raise TypeError(
            "model: expected a segmentation learner (panet, alpnet) or an AdaptedSegmenter, "
            f"got {type(model).__name__}"
        )
    if any(t.device.type != "cpu" for t in [*adapted.parameters(), *adapted.buffers()]):
        adapted = copy.deepcopy(adapted).cpu()  # export on CPU; the caller's stays put
    if rule.background_prototypes != (adapted.background is None):
        raise ValueError(
            f"pooling: {rule} gives the background "
            f"{'prototypes' if rule.background_prototypes else 'none'}, but the segmenter has "
            f"{'no ' if adapted.background is None else ''}learned background score"
        )
    return adapted.eval(), algorithm, rule


def _geometry(
    preprocessing: Any, input_shape: Sequence[int] | None, sx: torch.Tensor | None
) -> Preprocessing:
    """The image preprocessing, consistent with ``input_shape`` and the support images."""
    if isinstance(preprocessing, Preprocessing):
        pre = preprocessing
    elif isinstance(preprocessing, Mapping):
        pre = Preprocessing.from_dict(preprocessing)
    elif preprocessing is not None:
        raise TypeError(f"preprocessing: expected a Preprocessing or its dict, got "
                        f"{type(preprocessing).__name__}")  # fmt: skip
    elif input_shape is not None:
        pre = Preprocessing.for_images(tuple(input_shape))
    elif sx is not None:
        pre = Preprocessing.for_images(tuple(sx.shape[1:]))
    else:
        raise ValueError("input_shape: required (C, H, W) when neither preprocessing nor "
                         "support_x gives it")  # fmt: skip
    if pre.kind != "image":
        raise ValueError(f"preprocessing: a segmenter takes images, got kind {pre.kind!r}")
    shape = list(pre.input_shape)
    if input_shape is not None and list(input_shape) != shape:
        raise ValueError(f"input_shape: {list(input_shape)} differs from the preprocessing's "
                         f"{shape}")  # fmt: skip
    if sx is not None and list(sx.shape[1:]) != shape:
        raise ValueError(f"support_x: images of shape {list(sx.shape[1:])} differ from the "
                         f"input shape {shape}")  # fmt: skip
    return pre


def _example(pre: Preprocessing, sx: torch.Tensor | None, example_x: Any) -> torch.Tensor:
    """Inputs ``[>= 2, C, H, W]`` for tracing and the checks: the support images, else
    ``example_x``, else seeded uniform noise in [0, 1)."""
    shape = list(pre.input_shape)
    if example_x is not None:
        x = export_onnx._tensor("example_x", example_x, torch.float32)
        if list(x.shape[1:]) != shape or len(x) == 0:
            raise ValueError(f"example_x: expected [n, *{shape}], got {list(x.shape)}")
        x = torch.cat([sx, x]) if sx is not None else x
    elif sx is not None:
        x = sx
    else:
        logger.warning("no support_x or example_x: checking the export on random inputs")
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    return x if len(x) >= 2 else x.repeat(2, 1, 1, 1)


# -------------------------------------------------------------------------- the two files


def _export_net(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: tuple[list[str], list[str]],
    dynamic: dict[str, dict[int, str]],
    opset: int,
    what: str,
    exporter: str,
) -> tuple[onnx.ModelProto, str]:
    """``module(*args)`` as ONNX with ``exporter`` (``"auto"``: dynamo, else TorchScript as
    :func:`medmeta.export.export_graph`)."""
    inputs, outputs = names
    if exporter == "auto":
        return export_onnx.export_graph(module, args, inputs, outputs, dynamic, opset, what)
    export = export_onnx._export_dynamo if exporter == "dynamo" else export_onnx._export_torchscript
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            model = export(module.eval(), args, inputs, outputs, dynamic, opset)
            export_onnx._dynamic_ok(model, dynamic)
    except Exception as err:
        raise export_onnx.ExportError(
            f"ONNX export of the {what} with the {exporter} exporter failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    export_onnx._log_warnings(caught, exporter)
    return model, exporter


def _trace_prototypes(protos: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Prototypes repeated so that the traced P is >= 2 and differs from the class count
    (an exporter may otherwise fix P or tie it to N+1)."""
    reps = 2
    while reps * len(protos) == onehot.shape[1]:
        reps += 1
    return protos.repeat(reps, 1), onehot.repeat(reps, 1)


@dataclass
class _Parts:
    """What both files of one export share."""

    adapted: AdaptedSegmenter
    rule: PoolingRule
    example: torch.Tensor  # [>= 2, C, H, W]
    base: dict[str, Any]
    opset: int
    exporter: str
    tolerance: float
    exporters: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)

    @property
    def onehot(self) -> torch.Tensor:
        return F.one_hot(self.adapted.prototype_classes, self.adapted.ways + 1).float()

    def export(
        self,
        module: nn.Module,
        args: tuple[torch.Tensor, ...],
        names: tuple[list[str], list[str]],
        dynamic: dict[str, dict[int, str]],
        what: str,
    ) -> onnx.ModelProto:
        model, used = _export_net(module, args, names, dynamic, self.opset, what, self.exporter)
        self.exporters.append(used)
        return model


def _check_logits(what: str, got: np.ndarray, want: torch.Tensor, tolerance: float) -> float:
    """Max |got - want| of logits ``[n, K, H, W]``, refused above ``tolerance``."""
    return export_onnx._check(f"{what} (logits)", got, want, tolerance)


def _check_labels(got: np.ndarray, want: torch.Tensor, tolerance: float) -> float:
    """The fraction of pixels whose onnxruntime label differs from the eager argmax; an
    error where the eager top-two logits are more than ``2 * tolerance`` apart."""
    top2 = want.topk(2, dim=1).values if want.shape[1] > 1 else None
    differ = got != want.argmax(1).numpy()
    if top2 is not None:
        clear = ((top2[:, 0] - top2[:, 1]) > 2 * tolerance).numpy()
        if (differ & clear).any():
            raise export_onnx.ExportError(
                f"the exported labels differ from eager PyTorch at {int((differ & clear).sum())} "
                "pixels whose top-two logits are clearly apart"
            )
    return float(differ.mean())


def _export_head(parts: _Parts, feats: torch.Tensor) -> tuple[onnx.ModelProto, torch.Tensor]:
    """The head graph, checked alone on the eager features; returns it and the eager logits."""
    a = parts.adapted
    head = SegmentationHeadGraph(a.scale, a.background, tuple(parts.example.shape[-2:]))
    dynamic = {
        "features": {0: "batch"},
        "prototypes": {0: "prototypes"},
        "prototype_onehot": {0: "prototypes", 1: "classes"},
        "logits": {0: "batch", 1: "classes"},
        "labels": {0: "batch"},
    }
    model = parts.export(
        head, (feats, *_trace_prototypes(a.prototypes, parts.onehot)),
        (["features", "prototypes", "prototype_onehot"], ["logits", "labels"]), dynamic, "head",
    )  # fmt: skip
    with torch.no_grad():
        want = a(parts.example)  # the adapted segmenter itself, eagerly
    feeds = {
        "features": feats.numpy(),
        "prototypes": a.prototypes.numpy(),
        "prototype_onehot": parts.onehot.numpy(),
    }
    got, _ = export_onnx._run_onnx(model, feeds)
    parts.checks["head"] = _check_logits("head", got, want, parts.tolerance)
    return model, want


def _enrolment_block(
    parts: _Parts, sx: torch.Tensor | None, sm: torch.Tensor | None, include_support: bool
) -> dict[str, Any]:
    """The metadata ``enrolment``: prototypes, classes and the support set (features and
    soft masks), after checking that numpy enrolment reproduces the prototypes."""
    a = parts.adapted
    protos, owner = a.prototypes.float().numpy(), a.prototype_classes.numpy()
    block: dict[str, Any] = {
        "prototypes": encode_array(protos),
        "prototype_classes": owner.tolist(),
        "support_features": None,
        "support_masks": None,
    }
    if sx is None or sm is None:
        return block
    with torch.no_grad():
        feats = a.encoder(sx).float().numpy()
    masks = soft_masks(sm.numpy(), a.ways + 1, feats.shape[-2:])
    present = [int(c) for c in np.flatnonzero(masks.sum((0, 2, 3)) > 0)]
    got, got_owner = parts.rule.pool(feats, masks, present)
    same = np.array_equal(got_owner, owner)
    gap = float(np.abs(got - protos).max() / max(1.0, np.abs(protos).max())) if same else np.inf
    parts.checks["enrolment"] = gap
    if not gap <= ENROLMENT_TOLERANCE:
        problem = (
            f"on-device enrolment of the support set gives other prototypes (classes "
            f"{got_owner.tolist()} vs {owner.tolist()}, relative gap {gap:.3g})"
        )
        if include_support:
            raise export_onnx.ExportError(
                f"{problem}; pooling= may not be the learner's rule. With include_support=False "
                "the prototypes are exported alone (the device cannot add images to them)"
            )
        logger.warning("%s", problem)
    if include_support:
        block["support_features"] = encode_array(feats)
        block["support_masks"] = encode_array(masks)
    return block


def _write(
    parts: _Parts, path: Path, enrolment: dict[str, Any]
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Export, check and write the head, then the encoder (which records the head's hash)."""
    a, x = parts.adapted, parts.example
    encoder = parts.export(
        a.encoder, (x,), (["x"], ["features"]), {"x": {0: "batch"}, "features": {0: "batch"}},
        "encoder",
    )  # fmt: skip
    with torch.no_grad():
        feats = a.encoder(x)
    (got_feats,) = export_onnx._run_onnx(encoder, {"x": x.numpy()})
    scale = max(1.0, float(feats.abs().max()))
    parts.checks["encoder"] = float(np.abs(got_feats - feats.numpy()).max()) / scale
    head, want = _export_head(parts, feats)
    logits, labels = export_onnx._run_onnx(head, {
        "features": got_feats, "prototypes": a.prototypes.numpy(),
        "prototype_onehot": parts.onehot.numpy(),
    })  # fmt: skip
    parts.checks["logits"] = _check_logits("encoder + head", logits, want, parts.tolerance)
    parts.checks["labels"] = _check_labels(labels, want, parts.tolerance)
    D, h, w = (int(s) for s in feats.shape[1:])
    seg = {"scale": a.scale, "background": a.background}
    head_path = export_onnx._sibling(path, "head")
    head_meta = export_onnx._finalise(head, {
        **parts.base, "role": HEAD_ROLE, "input_name": "features", "input_shape": [D, h, w],
        "preprocessing": None, "outputs": ["logits", "labels"], "exporter": parts.exporters[-1],
        "encoder_weights_sha256": weights_sha256(encoder), "segmentation": seg,
    }, head_path)  # fmt: skip
    encoder_path = export_onnx._sibling(path, "encoder")
    encoder_meta = export_onnx._finalise(encoder, {
        **parts.base, "role": ENCODER_ROLE, "outputs": ["features"],
        "exporter": parts.exporters[0], "feature_dim": D, "grid": [h, w],
        "segmentation": {**seg, "method": parts.base["algorithm"],
                         "pooling": parts.rule.to_dict()},
        "enrolment": enrolment, "head_file": head_path.name,
        "head_sha256": hashlib.sha256(head_path.read_bytes()).hexdigest(),
    }, encoder_path)  # fmt: skip
    return {ENCODER_ROLE: (encoder_path, encoder_meta), HEAD_ROLE: (head_path, head_meta)}


def export_segmenter(
    model: SegmentationLearner | AdaptedSegmenter,
    path: str | os.PathLike[str],
    *,
    support_x: Any = None,
    support_masks: Any = None,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    pooling: PoolingRule | Mapping[str, Any] | None = None,
    example_x: Any = None,
    evaluation: Any = None,
    include_support: bool = True,
    exporter: str = "auto",
    opset: int = 18,
    check_tolerance: float = SEG_CHECK_TOLERANCE,
) -> SegmenterExport:
    """Export a few-shot segmenter as ``<stem>.encoder.onnx`` + ``<stem>.head.onnx`` beside
    ``path`` (see the module docstring).

    Args:
        model: a segmentation learner (adapted here to the support set, which is then
            required) or an :class:`AdaptedSegmenter` (then ``pooling`` is required).
        path: ``out/<stem>.onnx``, naming the pair (nothing is written at ``path`` itself).
        support_x: preprocessed support images ``[S, C, H, W]`` float; the export check's
            inputs and, with ``include_support``, the device's stored support set.
        support_masks: ``[S, H, W]`` integer label maps in ``0..N`` (0 = background).
        class_names: ``N`` foreground names, or ``N+1`` with the background first.
        preprocessing: raw image -> model input (default: images scaled by dtype, no
            normalisation, for ``input_shape`` or the support images' shape).
        input_shape: ``(C, H, W)`` of the model input, if neither of the above gives it.
        pooling: the :class:`PoolingRule` of an AdaptedSegmenter (see :func:`pooling_rule`).
        example_x: more preprocessed images for the export check (default: the support).
        evaluation: an ``EvalResult`` or dict whose summary goes in the metadata.
        include_support: store the support features and soft masks, so that the device can
            add images to the exported classes (``EdgeSegmenter.enrol(replace=False)``).
        exporter: ``"auto"`` (dynamo, falling back to TorchScript), ``"dynamo"`` or
            ``"torchscript"`` (much faster to export; the same graph semantics).
        opset: ONNX opset, >= 17.
        check_tolerance: largest |onnxruntime - eager| logit accepted (absolute).

    Raises:
        TypeError / ValueError: bad arguments (named).
        ExportError: the export failed, or onnxruntime or numpy enrolment do not reproduce
            the eager segmenter.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {EXPORTERS}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < export_onnx.MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {export_onnx.MIN_OPSET}, got {opset!r}")
    if not check_tolerance > 0:
        raise ValueError(f"check_tolerance: expected a positive float, got {check_tolerance!r}")
    sx, sm = _support_tensors(support_x, support_masks)
    adapted, algorithm, rule = _adapted(model, sx, sm, pooling)
    names = segmentation_class_names(adapted.ways, class_names)
    pre = _geometry(preprocessing, input_shape, sx)
    base = {
        "medmeta_version": medmeta.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "task": "segmentation", "algorithm": algorithm, "class_names": names,
        "input_name": "x", "input_shape": list(pre.input_shape), "preprocessing": pre.to_dict(),
        "temperature": 1.0, "calibrated": False, "calibration": "uncalibrated (logits)",
        "evaluation": evaluation_summary(evaluation), "precision": "float32",
        "support_size": None if sx is None else len(sx),
    }  # fmt: skip
    parts = _Parts(adapted, rule, _example(pre, sx, example_x), base, opset, exporter,
                   float(check_tolerance))  # fmt: skip
    enrolment = _enrolment_block(parts, sx, sm, include_support)
    written = _write(parts, Path(path), enrolment)
    result = SegmenterExport(
        encoder=written[ENCODER_ROLE][0],
        head=written[HEAD_ROLE][0],
        metadata=written[ENCODER_ROLE][1],
        exporter="torchscript" if "torchscript" in parts.exporters else "dynamo",
        checks=parts.checks,
        metadata_by_role={role: meta for role, (_, meta) in written.items()},
    )
    logger.info("exported the %s segmenter (%s exporter): %s, %s; checks %s",
                algorithm or "adapted", result.exporter, result.encoder, result.head,
                parts.checks)  # fmt: skip
    return result


def is_segmenter(model: object) -> bool:
    """Whether :func:`medmeta.export.to_onnx` should hand ``model`` to :func:`export_segmenter`."""
    return isinstance(model, AdaptedSegmenter | SegmentationLearner)


def from_to_onnx(model: Any, path: str | os.PathLike[str], **kwargs: Any) -> SegmenterExport:
    """:func:`medmeta.export.to_onnx` on a segmenter: ``support_y`` are the support label
    maps; the classifier-only options (temperature, int8, calibration, OOD, forms other
    than the default) are refused by name; ``to_onnx``'s default ``check_tolerance`` (a
    probability tolerance) becomes :data:`SEG_CHECK_TOLERANCE` (in logits)."""
    defaults = {
        "temperature": None,
        "temperature_source": None,
        "int8": False,
        "calibration_x": None,
        "ood_quantile": export_onnx.DEFAULT_OOD_QUANTILE,
    }
    for name, default in defaults.items():
        if kwargs.get(name, default) != default:
            raise ValueError(f"{name}: a classifier option; segmenters export logits and label "
                             "maps (medmeta.export.export_segmenter)")  # fmt: skip
    tolerance = kwargs.get("check_tolerance", export_onnx.CHECK_TOLERANCE)
    if tolerance == export_onnx.CHECK_TOLERANCE:
        tolerance = SEG_CHECK_TOLERANCE
    if kwargs.get("form", "classifier") not in ("classifier", "enrolment"):
        raise ValueError(f"form={kwargs['form']!r}: a segmenter exports one form (encoder + head)")
    return export_segmenter(
        model, path, support_x=kwargs.get("support_x"), support_masks=kwargs.get("support_y"),
        class_names=kwargs.get("class_names"), preprocessing=kwargs.get("preprocessing"),
        evaluation=kwargs.get("evaluation"), opset=kwargs.get("opset", 18),
        check_tolerance=tolerance,
    )  # fmt: skip
