"""Int8 QDQ quantization of an adapted Conv4 Prototypical Network on real blood-cell images.

The float model is a 20-step meta-trained ProtoNet (5 training cell types) adapted to a
5-shot support set of the 3 held-out cell types; parity is measured on the 1785 other
held-out images.

Parity bounds, measured (``episode_parity`` over four seeded 5-shot supports of this
learner): max |p_float - p_int8| 0.005-0.008, mean 0.0008-0.0011, top-1 agreement
0.993-0.997, accuracy change -0.2 to +0.3 points (on the fixture's task: 0.0051, 0.0009,
0.9933, +0.1). A 100-step learner, whose sharper logits turn the same logit error into
larger probability moves near decision boundaries, reaches max 0.08-0.10 with agreement
>= 0.995. The bounds here (max 0.05, mean 0.01, agreement >= 0.95, |accuracy change| <= 2
points) sit 6-10x above what this learner shows and far below what a broken quantization
gives: quantizing the prototype head of the MatMul form ``|x|²+|c|²-2x·c`` (cancels in 8
bits) gave max 0.35, mean 0.021, agreement 0.77 and -15 points on the same task;
calibrating on inputs scaled by 0.3 gives agreement 0.33.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import helpers_edge as he
from medmeta.edge import EdgeModel
from medmeta.export import read_metadata, to_onnx, weights_sha256
from medmeta.export.quantize import (
    QUANTIZATION_KEY,
    episode_parity,
    parity_report,
    probabilities,
    quantize_onnx,
)


@dataclass(frozen=True)
class Models:
    float_path: Path  # medmeta classifier: x -> probabilities, distances, embeddings
    int8_path: Path
    embedder_path: Path  # enrolment form: x -> embeddings (head beside it)
    task: he.HeldOutTask
    adapted: torch.nn.Module


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("quantize")
    learner = he.trained_protonet(steps=20)
    task = he.held_out_task(seed=0)
    adapted = learner.adapt(task.support_x, task.support_y)
    exported = to_onnx(
        adapted,
        folder / "blood.onnx",
        support_x=task.support_x,
        support_y=task.support_y,
        class_names=["monocyte", "neutrophil", "platelet"],
        form="both",
    )
    int8_path = quantize_onnx(
        exported.classifier, folder / "blood.int8.onnx", task.support_x.numpy()
    )
    return Models(exported.classifier, int8_path, exported.embedder, task, adapted)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def _weight_scales(model: onnx.ModelProto) -> list[tuple[np.ndarray, int]]:
    """(scale array, axis) of the DequantizeLinear feeding each Conv's weight input."""
    producers = {out: n for n in model.graph.node for out in n.output}
    inits = _initializers(model)
    found = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", f"Conv weight comes from {dq.op_type}"
        assert inits[dq.input[0]].dtype == np.int8, "weights must be stored as int8"
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        found.append((inits[dq.input[1]], axis))
    return found


def test_int8_model_is_valid_qdq_with_per_channel_weight_scales(models: Models) -> None:
    model = onnx.load(str(models.int8_path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 4 and ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8
    scales = _weight_scales(model)
    assert len(scales) == 4
    for scale, axis in scales:  # one scale per output channel of each 64-filter conv
        assert scale.shape == (64,) and axis == 0
        assert np.all(scale > 0) and len(np.unique(scale)) > 1
    # activations: a per-tensor uint8 QuantizeLinear on the graph input
    q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert _initializers(model)[q_in.input[2]].dtype == np.uint8
    # what follows the embedding (the prototype head: distances, softmax) stays float
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    backbone = {
        "Conv",
        "Relu",
        "MaxPool",
        "Reshape",
        "Flatten",
        "QuantizeLinear",
        "DequantizeLinear",
    }
    head = [n for n in model.graph.node if n.op_type not in backbone]
    assert head and all(producers.get(i) != "DequantizeLinear" for n in head for i in n.input)


def test_per_tensor_option_gives_one_weight_scale_per_conv(models: Models, tmp_path: Path) -> None:
    path = quantize_onnx(
        models.float_path, tmp_path / "t.onnx", models.task.support_x.numpy(), per_channel=False
    )
    scales = _weight_scales(onnx.load(str(path)))
    assert [s.size for s, _ in scales] == [1, 1, 1, 1]


def test_metadata_is_kept_and_says_int8_and_calibration(models: Models) -> None:
    float_meta, int8_meta = read_metadata(models.float_path), read_metadata(models.int8_path)
    changed = {"precision", "quantization", "weights_sha256", "float_weights_sha256"}
    assert {k: v for k, v in int8_meta.items() if k not in changed} == {
        k: v for k, v in float_meta.items() if k not in changed
    }
    assert float_meta["precision"] == "float32" and int8_meta["precision"] == "int8"
    assert int8_meta["float_weights_sha256"] == float_meta["weights_sha256"]
    assert int8_meta["weights_sha256"] == weights_sha256(onnx.load(str(models.int8_path)))
    props = {p.key: p.value for p in onnx.load(str(models.int8_path)).metadata_props}
    quant = json.loads(props[QUANTIZATION_KEY])
    assert quant == int8_meta["quantization"]
    assert quant["dtype"] == "int8" and quant["format"] == "qdq"
    assert "per output channel" in quant["weights"]
    calibration = quant["calibration"]
    assert calibration["method"] == "minmax"
    assert calibration["examples"] == len(models.task.support_x) == 15
    assert calibration["input_shape"] == [3, 28, 28]


def test_edge_runtime_runs_the_int8_classifier(models: Models) -> None:
    x = models.task.query_x[:200].numpy()
    edge = EdgeModel(models.int8_path, threads=1)
    assert edge.metadata["precision"] == "int8"
    p_edge = edge.predict_proba(x, preprocessed=True)
    p_float = EdgeModel(models.float_path, threads=1).predict_proba(x, preprocessed=True)
    assert (p_edge.argmax(1) == p_float.argmax(1)).mean() >= 0.95


def test_int8_embedder_pairs_with_its_float_head(models: Models, tmp_path: Path) -> None:
    """The enrolment form: an int8 embedder still loads with the float head beside it, and
    its probabilities (through the head and the exported prototypes) match the float one's."""
    embedder = models.embedder_path
    int8 = quantize_onnx(
        embedder, embedder.with_name("blood.embed.int8.onnx"), models.task.support_x.numpy()
    )
    x, y = models.task.query_x.numpy(), models.task.query_y.numpy()
    report = parity_report(embedder, int8, x, y)
    assert report["top1_agreement"] >= 0.95 and report["float_accuracy"] > 0.6
    assert EdgeModel(int8, threads=1).metadata["role"] == "embedder"


def test_int8_file_is_self_contained_and_smaller(models: Models) -> None:
    model = onnx.load(str(models.int8_path), load_external_data=False)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    float_size, int8_size = models.float_path.stat().st_size, models.int8_path.stat().st_size
    assert int8_size < 0.5 * float_size  # int8 weights: about a third (488 kB -> 160 kB)
    assert not [p for p in models.int8_path.parent.iterdir() if p.name.startswith(".")]


def test_float_onnx_probabilities_match_eager_torch(models: Models) -> None:
    """The reference side of the parity report is the adapted torch model itself."""
    x = models.task.query_x[:64]
    with torch.inference_mode():
        expected = torch.softmax(models.adapted(x).double(), -1).numpy()
    session = ort.InferenceSession(str(models.float_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(probabilities(session, x.numpy()), expected, atol=1e-5)


def test_int8_agrees_with_float_on_held_out_images(models: Models) -> None:
    x, y = models.task.query_x.numpy(), models.task.query_y.numpy()
    report = parity_report(models.float_path, models.int8_path, x, y)
    assert report["examples"] == len(x) == 1785 and report["classes"] == 3
    assert report["top1_agreement"] >= 0.95
    assert report["max_abs_prob_diff"] < 0.05
    assert report["mean_abs_prob_diff"] < 0.01
    assert report["float_accuracy"] > 0.6  # chance is 1/3
    assert abs(report["accuracy_change"]) <= 0.02
    assert report["accuracy_change"] == pytest.approx(
        report["int8_accuracy"] - report["float_accuracy"]
    )
    assert report["disagreements"] == round((1 - report["top1_agreement"]) * len(x))


def test_parity_detects_a_miscalibrated_quantization(models: Models, tmp_path: Path) -> None:
    """Calibrating on inputs of the wrong scale (a preprocessing mismatch: ranges 3x too
    narrow, so activations saturate) must show in the report."""
    bad = quantize_onnx(
        models.float_path, tmp_path / "bad.onnx", 0.3 * models.task.support_x.numpy()
    )
    x = models.task.query_x[::3].numpy()  # 595 images of the 3 classes
    good = parity_report(models.float_path, models.int8_path, x)
    broken = parity_report(models.float_path, bad, x)
    assert broken["mean_abs_prob_diff"] > 10 * good["mean_abs_prob_diff"]
    assert broken["top1_agreement"] < good["top1_agreement"] - 0.3


def test_episode_parity_on_a_held_out_episode(models: Models) -> None:
    learner = he.trained_protonet(steps=20)
    _, test = he.blood_split()
    result = episode_parity(learner, test, ways=3, shots=5, episodes=1, queries=40, seed=3)
    assert result.episodes == 1 and result.queries_per_episode == 120
    (episode,) = result.per_episode
    assert sorted(episode["classes"]) == sorted(test.class_names[c] for c in he.TEST_CLASSES)
    assert result.top1_agreement >= 0.95 and result.max_abs_prob_diff < 0.05
    assert result.float_accuracy > 0.6
    assert result.accuracy_change == pytest.approx(result.int8_accuracy - result.float_accuracy)


# ---------------------------------------------------------------------------- bad input


def test_missing_and_corrupt_model_files(models: Models, tmp_path: Path) -> None:
    calib = models.task.support_x.numpy()
    with pytest.raises(FileNotFoundError, match=r"float_path.*no ONNX file"):
        quantize_onnx(tmp_path / "absent.onnx", tmp_path / "q.onnx", calib)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(models.float_path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"float_path.*not a valid ONNX model"):
        quantize_onnx(corrupt, tmp_path / "q.onnx", calib)
    with pytest.raises(FileNotFoundError, match="int8_path"):
        parity_report(models.float_path, tmp_path / "absent.onnx", calib)


@pytest.mark.parametrize(
    ("calibration", "error", "match"),
    [
        (np.zeros((15, 3, 32, 32), np.float32), ValueError, r"calibration_x.*\[n, 3, 28, 28\]"),
        (np.zeros((15, 3, 28), np.float32), ValueError, "calibration_x.*model input shape"),
        (np.zeros((15, 3, 28, 28), np.float64), TypeError, "calibration_x.*float32.*float64"),
        (np.zeros((15, 3, 28, 28), np.uint8), TypeError, "calibration_x.*float32.*uint8"),
        (np.zeros((0, 3, 28, 28), np.float32), ValueError, "calibration_x.*at least one"),
        ([[0.0]], TypeError, "calibration_x.*numpy.ndarray.*list"),
    ],
)
def test_bad_calibration_data(
    models: Models, tmp_path: Path, calibration: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        quantize_onnx(models.float_path, tmp_path / "q.onnx", calibration)  # type: ignore[arg-type]
    assert not (tmp_path / "q.onnx").exists()


def test_nan_calibration_data_leaves_the_existing_file_alone(
    models: Models, tmp_path: Path
) -> None:
    target = tmp_path / "q.onnx"
    target.write_bytes(b"previous")
    calib = models.task.support_x.numpy().copy()
    calib[3, 1, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"calibration_x.*finite.*1 NaN"):
        quantize_onnx(models.float_path, target, calib)
    assert target.read_bytes() == b"previous"


def test_bad_parity_inputs_and_labels(models: Models) -> None:
    x = models.task.query_x[:10].numpy()
    with pytest.raises(ValueError, match=r"inputs.*model input shape"):
        parity_report(models.float_path, models.int8_path, x[:, :, :20])
    with pytest.raises(ValueError, match=r"labels.*\[0, 3\)"):
        parity_report(models.float_path, models.int8_path, x, np.full(10, 3))
    with pytest.raises(ValueError, match=r"labels.*shape \[10\]"):
        parity_report(models.float_path, models.int8_path, x, np.zeros(9, np.int64))
    with pytest.raises(TypeError, match=r"labels.*integer"):
        parity_report(models.float_path, models.int8_path, x, np.zeros(10))
