"""export_segmenter on real abdominal MRI slices (CHAOS T2-SPIR, liver and spleen): the
encoder + prototype head pair reproduces the eager AdaptedSegmenter's logits and label maps
for PANet, ALPNet and ALPNet with ADNet's threshold; plain ONNX ops with dynamic batch,
prototype and class axes; metadata (classes, geometry, preprocessing, pooling rule,
prototypes, support set) and the hashes that tie the files together."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medmeta import algorithms
from medmeta.algorithms import SegmentationLearner
from medmeta.edge import EdgeModel, EdgeModelError, EdgeSegmenter, PoolingRule, Preprocessing
from medmeta.edge.schema import decode_array
from medmeta.export import (
    SegmenterExport,
    export_segmenter,
    pooling_rule,
    read_metadata,
    to_onnx,
    verify_weights,
)
from medmeta.export import onnx as export_onnx
from medmeta.export.metadata import set_metadata
from medmeta.export.segmentation import SEG_CHECK_TOLERANCE
from medmeta.nn import SegEncoder

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")
#: |onnxruntime - eager| logits (they lie in [-20, 20]); measured about 1.5e-5.
PARITY = 2e-4
METHODS = ("panet", "alpnet", "adnet")
#: What the graphs may contain: plain ONNX, no custom or contrib ops.
PLAIN_OPS = {
    "Add", "ArgMax", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Exp", "Expand",
    "Gather", "InstanceNormalization", "MatMul", "Max", "Mul", "ReduceMax", "ReduceSum",
    "Relu", "Reshape", "Resize", "Shape", "Slice", "Sqrt", "Sub", "Transpose", "Unsqueeze",
    "Where", "ConstantOfShape", "Squeeze", "Equal", "Sum", "Pow", "Identity",
}  # fmt: skip


@dataclass
class Slices:
    """Raw uint8 slices ``[n, 128, 128]`` and label maps (0 background, 1 liver, 2 spleen):
    3 support slices of one patient, 4 query slices of another."""

    support_raw: np.ndarray
    support_masks: np.ndarray
    query_raw: np.ndarray
    pre: Preprocessing

    @property
    def support_x(self) -> torch.Tensor:
        return torch.from_numpy(self.pre(self.support_raw))

    @property
    def query_x(self) -> torch.Tensor:
        return torch.from_numpy(self.pre(self.query_raw))


@pytest.fixture(scope="module")
def slices() -> Slices:
    if not CHAOS.exists():
        pytest.skip(f"{CHAOS} is not available")
    with np.load(CHAOS) as z:
        images, masks, patients = z["images"], z["masks"], z["source_ids"]
    both = np.flatnonzero(((masks == 1).any((1, 2))) & ((masks == 4).any((1, 2))))
    first, other = patients[both[0]], patients[both[-1]]
    support = both[patients[both] == first][::2][:3]
    query = both[patients[both] == other][:4]
    labels = np.select([masks == 1, masks == 4], [1, 2], 0).astype(np.int64)
    pre = Preprocessing.for_images((1, 128, 128), mean=0.2, std=0.25)
    return Slices(images[support], labels[support], images[query], pre)


def make_learner(method: str, slices: Slices) -> SegmentationLearner:
    """A randomly initialised small SegEncoder (seed 0) under ``method``; ADNet's threshold
    is set so that about 30% of the query pixels are foreground (a parity check on an
    all-foreground map would prove little)."""
    torch.manual_seed(0)
    encoder = SegEncoder(1, channels=(16, 32, 32, 32), out_channels=32)
    name, extra = ("alpnet", {"foreground_threshold": True}) if method == "adnet" else (method, {})
    learner = algorithms.create(name, encoder, ways=2, **extra).eval()
    if method == "adnet":
        with torch.no_grad():
            fg = learner.adapt(slices.support_x, torch.from_numpy(slices.support_masks))(
                slices.query_x
            )[:, 1:].amax(1)
            learner.threshold_score.fill_(float(torch.quantile(fg.flatten(), 0.7)))
    return learner


@pytest.fixture(scope="module")
def exported(slices, tmp_path_factory) -> dict[str, tuple[SegmentationLearner, SegmenterExport]]:
    """Each method exported once with the TorchScript exporter (the default, dynamo, takes
    10-15 s more on two loaded cores: ``test_the_default_dynamo_export``, marked slow)."""
    out = {}
    for method in METHODS:
        learner = make_learner(method, slices)
        result = export_segmenter(
            learner, tmp_path_factory.mktemp(method) / f"{method}.onnx",
            support_x=slices.support_x, support_masks=slices.support_masks,
            class_names=["liver", "spleen"], preprocessing=slices.pre,
            example_x=slices.query_x, exporter="torchscript",
            evaluation={"dice": 0.41, "ci95": 0.03, "episodes": 20},
        )  # fmt: skip
        out[method] = (learner, result)
    return out


def _run_pair(result: SegmenterExport, x: np.ndarray, protos, onehot) -> list[np.ndarray]:
    enc = ort.InferenceSession(str(result.encoder), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(result.head), providers=["CPUExecutionProvider"])
    (feats,) = enc.run(None, {"x": x})
    return head.run(None, {"features": feats, "prototypes": protos, "prototype_onehot": onehot})


@pytest.mark.parametrize("method", METHODS)
def test_onnx_logits_and_labels_match_pytorch(exported, slices, method):
    learner, result = exported[method]
    adapted = learner.adapt(slices.support_x, torch.from_numpy(slices.support_masks))
    with torch.no_grad():
        want = adapted(slices.query_x).numpy()
        want_labels = adapted.segment(slices.query_x).numpy()
    onehot = np.eye(3, dtype=np.float32)[adapted.prototype_classes.numpy()]
    logits, labels = _run_pair(result, slices.query_x.numpy(), adapted.prototypes.numpy(), onehot)
    assert logits.shape == (4, 3, 128, 128) and labels.shape == (4, 128, 128)
    assert labels.dtype == np.int64
    np.testing.assert_allclose(logits, want, rtol=0, atol=PARITY)
    assert (labels == want_labels).mean() >= 0.999
    np.testing.assert_array_equal(labels, logits.argmax(1))
    fg = (want_labels > 0).mean()
    assert 0.05 < fg < 0.95, fg  # both background and organs are predicted
    assert result.checks["logits"] <= PARITY and result.checks["head"] <= PARITY
    assert result.checks["enrolment"] <= 1e-5 and result.checks["labels"] <= 1e-3
    assert result.exporter == "torchscript"


@pytest.mark.slow  # the dynamo exporter: about 10 s (15 s on two loaded cores)
def test_the_default_dynamo_export(slices, tmp_path):
    learner = make_learner("alpnet", slices)
    masks = torch.from_numpy(slices.support_masks)
    result = export_segmenter(learner, tmp_path / "d.onnx", support_x=slices.support_x,
                              support_masks=masks, preprocessing=slices.pre)  # fmt: skip
    assert result.exporter == "dynamo"
    adapted = learner.adapt(slices.support_x, masks)
    with torch.no_grad():
        want = adapted(slices.query_x).numpy()
    onehot = np.eye(3, dtype=np.float32)[adapted.prototype_classes.numpy()]
    logits, labels = _run_pair(result, slices.query_x.numpy(), adapted.prototypes.numpy(), onehot)
    np.testing.assert_allclose(logits, want, rtol=0, atol=PARITY)
    assert (labels == want.argmax(1)).mean() >= 0.999
    for path in (result.encoder, result.head):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops <= PLAIN_OPS, ops - PLAIN_OPS
    logits5, _ = _run_pair(result, slices.query_x[:1].numpy(), adapted.prototypes.numpy()[:2],
                           np.eye(5, dtype=np.float32)[[0, 4]])  # fmt: skip
    assert logits5.shape == (1, 5, 128, 128)


@pytest.mark.parametrize("method", ["alpnet", "adnet"])
def test_graphs_are_plain_onnx_with_dynamic_axes(exported, slices, method):
    _, result = exported[method]
    for path in (result.encoder, result.head):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        ops = {n.op_type for n in model.graph.node}
        assert ops <= PLAIN_OPS, ops - PLAIN_OPS
        assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
        assert not any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
        )
    assert {p.name for p in result.encoder.parent.iterdir()} == {
        f"{method}.encoder.onnx", f"{method}.head.onnx",
    }  # fmt: skip
    assert "Resize" in {n.op_type for n in onnx.load(str(result.head)).graph.node}
    # batch 1, and any number of prototypes and classes (the device enrols)
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((7, 32)).astype(np.float32)
    onehot = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 4, 1]]
    logits, labels = _run_pair(result, slices.query_x[:1].numpy(), protos, onehot)
    assert logits.shape == (1, 5, 128, 128) and labels.max() <= 4


def test_metadata_describes_the_segmenter(exported, slices):
    for method, (learner, result) in exported.items():
        meta = read_metadata(result.encoder)
        head = read_metadata(result.head)
        assert meta == result.metadata and head == result.metadata_by_role["segmentation_head"]
        assert meta["task"] == head["task"] == "segmentation"
        assert meta["role"] == "encoder" and head["role"] == "segmentation_head"
        assert meta["algorithm"] == ("alpnet" if method == "adnet" else method)
        assert meta["class_names"] == ["background", "liver", "spleen"]
        assert meta["input_shape"] == [1, 128, 128] and meta["grid"] == [16, 16]
        assert Preprocessing.from_dict(meta["preprocessing"]) == slices.pre
        assert meta["feature_dim"] == 32 and head["input_shape"] == [32, 16, 16]
        assert meta["outputs"] == ["features"] and head["outputs"] == ["logits", "labels"]
        assert meta["evaluation"]["dice"] == 0.41 and meta["support_size"] == 3
        seg = meta["segmentation"]
        assert seg["scale"] == 20.0 and PoolingRule.from_dict(seg["pooling"]) == pooling_rule(
            learner
        )
        adapted = learner.adapt(slices.support_x, torch.from_numpy(slices.support_masks))
        assert seg["background"] == adapted.background == head["segmentation"]["background"]
        enrol = meta["enrolment"]
        np.testing.assert_array_equal(decode_array(enrol["prototypes"]), adapted.prototypes.numpy())
        assert enrol["prototype_classes"] == adapted.prototype_classes.tolist()
        assert decode_array(enrol["support_features"]).shape == (3, 32, 16, 16)
        assert decode_array(enrol["support_masks"]).shape == (3, 3, 16, 16)
        assert head["encoder_weights_sha256"] == meta["weights_sha256"]
        assert meta["head_sha256"] == hashlib.sha256(result.head.read_bytes()).hexdigest()
        assert verify_weights(result.encoder) and verify_weights(result.head)
    alp = read_metadata(exported["alpnet"][1].encoder)["segmentation"]
    assert alp["pooling"] == {"global_classes": "foreground", "local_classes": "all",
                              "window": 4, "threshold": 0.95, "max_local": 20}  # fmt: skip
    assert alp["background"] is None
    adnet = read_metadata(exported["adnet"][1].encoder)["segmentation"]
    assert adnet["pooling"]["local_classes"] == "none" and isinstance(adnet["background"], float)


def _copy_pair(result: SegmenterExport, folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    enc, head = folder / result.encoder.name, folder / result.head.name
    enc.write_bytes(result.encoder.read_bytes())
    head.write_bytes(result.head.read_bytes())
    return enc, head


def _bump_a_weight(model: onnx.ModelProto) -> None:
    """Add 1e-3 to the first value of the first float weight (initializer or Constant)."""
    tensors = [*model.graph.initializer]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.type == onnx.AttributeProto.TENSOR]  # fmt: skip
    t = next(t for t in tensors if t.data_type == onnx.TensorProto.FLOAT)
    array = onnx.numpy_helper.to_array(t).copy()
    array.flat[0] += 1e-3
    t.CopyFrom(onnx.numpy_helper.from_array(array, t.name))


def test_changed_files_are_refused(exported, tmp_path):
    _, result = exported["alpnet"]
    EdgeSegmenter.load(result.encoder)  # the untouched pair loads
    # a changed head weight: the head's bytes no longer hash to what the encoder recorded
    enc, head = _copy_pair(result, tmp_path / "head")
    model = onnx.load(str(head))
    _bump_a_weight(model)
    onnx.save(model, str(head))
    assert not verify_weights(head)
    with pytest.raises(EdgeModelError, match="SHA-256 differs from the one its encoder recorded"):
        EdgeSegmenter.load(enc)
    # a changed encoder weight: its recorded weights hash no longer matches the weights
    enc, head = _copy_pair(result, tmp_path / "encoder")
    model = onnx.load(str(enc))
    _bump_a_weight(model)
    onnx.save(model, str(enc))
    assert not verify_weights(enc)
    # tampered prototypes: pooling the stored support set does not give them
    enc, head = _copy_pair(result, tmp_path / "prototypes")
    model = onnx.load(str(enc))
    meta = read_metadata(enc)
    protos = decode_array(meta["enrolment"]["prototypes"])
    protos[0] += 0.5
    meta["enrolment"]["prototypes"] = export_onnx.encode_array(protos)
    set_metadata(model, meta)
    onnx.save(model, str(enc))
    with pytest.raises(EdgeModelError, match="not what pooling the exported support set gives"):
        EdgeSegmenter.load(enc)
    # the classifier runtime refuses segmentation files by name
    with pytest.raises(EdgeModelError, match="segmentation encoder; load the encoder with"):
        EdgeModel(result.encoder)


def test_to_onnx_hands_segmenters_to_export_segmenter(slices, tmp_path, monkeypatch, caplog):
    learner = make_learner("panet", slices)
    masks = torch.from_numpy(slices.support_masks)
    with pytest.raises(ValueError, match="temperature: a classifier option"):
        to_onnx(learner, tmp_path / "t.onnx", support_x=slices.support_x, support_y=masks,
                temperature=2.0)  # fmt: skip

    def no_dynamo(*args, **kwargs):
        raise RuntimeError("dynamo unavailable in this test")

    monkeypatch.setattr(export_onnx, "_export_dynamo", no_dynamo)  # fast: TorchScript
    with caplog.at_level(logging.WARNING, logger="medmeta.export.onnx"):
        result = to_onnx(learner, tmp_path / "p.onnx", support_x=slices.support_x,
                         support_y=masks, class_names=["liver", "spleen"])  # fmt: skip
    assert isinstance(result, SegmenterExport) and result.exporter == "torchscript"
    assert "dynamo unavailable in this test" in caplog.text
    assert result.encoder.name == "p.encoder.onnx" and not (tmp_path / "p.onnx").exists()
    assert result.checks["logits"] <= SEG_CHECK_TOLERANCE
    assert json.loads(onnx.load(str(result.encoder)).metadata_props[0].value)["task"] == (
        "segmentation"
    )


def test_an_adapted_segmenter_carries_its_pooling_rule(exported, slices, tmp_path):
    learner, _ = exported["panet"]
    masks = torch.from_numpy(slices.support_masks)
    adapted = learner.adapt(slices.support_x, masks)
    assert pooling_rule(adapted) == pooling_rule(learner)
    unknown = copy.deepcopy(adapted)
    unknown.pooling = None
    with pytest.raises(ValueError, match="pooling: this AdaptedSegmenter does not record"):
        export_segmenter(unknown, tmp_path / "a.onnx", input_shape=(1, 128, 128))
    with pytest.raises(ValueError, match="gives the background none"):
        export_segmenter(adapted, tmp_path / "a.onnx", input_shape=(1, 128, 128),
                         pooling=PoolingRule("foreground", "none"))  # fmt: skip
    # ALPNet's rule on PANet's prototypes: the device would pool other prototypes
    with pytest.raises(export_onnx.ExportError, match="on-device enrolment of the support set"):
        export_segmenter(adapted, tmp_path / "a.onnx", support_x=slices.support_x,
                         support_masks=masks, pooling=pooling_rule(exported["alpnet"][0]),
                         exporter="torchscript")  # fmt: skip
    result = export_segmenter(adapted, tmp_path / "a.onnx", pooling=pooling_rule(learner),
                              input_shape=(1, 128, 128), example_x=slices.query_x,
                              exporter="torchscript")  # fmt: skip
    meta = result.metadata
    assert meta["algorithm"] is None and meta["enrolment"]["support_features"] is None
    assert meta["class_names"] == ["background", "class_1", "class_2"]
    assert result.checks["logits"] <= PARITY and "enrolment" not in result.checks


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"class_names": ["a", "b", "c", "d"]}, ValueError, "class_names: expected 2 foreground"),
        ({"class_names": ["x", "x"]}, ValueError, "names must be unique"),
        ({"input_shape": (1, 64, 64)}, ValueError, r"input_shape: \[1, 64, 64\] differs"),
        ({"exporter": "tflite"}, ValueError, "exporter: expected one of"),
        ({"opset": 13}, ValueError, "opset: expected an int >= 17"),
        ({"support_masks": None}, ValueError, "support_x/support_masks: required to adapt"),
        ({"support_masks": np.zeros((3, 64, 64), np.int64)}, ValueError,
         r"support_masks: expected \[S, H, W\]"),
        ({"support_masks": np.zeros((3, 128, 128), np.float32)}, TypeError,
         "support_masks: expected integer labels"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(exported, slices, tmp_path, kwargs, error, match):
    learner, _ = exported["panet"]
    args = {"support_x": slices.support_x, "support_masks": slices.support_masks,
            "preprocessing": slices.pre, **kwargs}  # fmt: skip
    with pytest.raises(error, match=match):
        export_segmenter(learner, tmp_path / "m.onnx", **args)
    assert not list(tmp_path.iterdir())
