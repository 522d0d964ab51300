"""to_onnx on real blood-cell images: valid, self-contained, dynamic-batch ONNX files whose
probabilities equal eager PyTorch, with metadata that round-trips."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import medmeta
from medmeta.algorithms import create
from medmeta.data import load
from medmeta.edge import EdgeModel, EdgeModelError, Preprocessing
from medmeta.export import (
    ExportError,
    read_metadata,
    to_onnx,
    verify_weights,
    weights_sha256,
)
from medmeta.export import onnx as export_onnx
from medmeta.nn import Conv4

TEMPERATURE = 1.7
PARITY = 1e-5


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _eager(adapted, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(adapted(x) / TEMPERATURE, dim=-1).numpy()


@pytest.mark.parametrize("which", ["protonet", "maml"])
def test_classifier_file_is_valid_self_contained_and_dynamic(which, request):
    result = request.getfixturevalue(f"{which}_files")
    path = result.classifier
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    expected = {path.name} | (
        {"blood.embed.onnx", "blood.head.onnx"} if which == "protonet" else set()
    )
    assert {p.name for p in path.parent.iterdir()} == expected  # no stray external-data files
    assert result.exporter == "dynamo"
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    session = _session(path)
    for n in (1, 7):
        probs = session.run(
            ["probabilities"], {"x": np.random.default_rng(n).random((n, 3, 28, 28), np.float32)}
        )[0]
        assert probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("which", ["protonet", "maml"])
def test_probabilities_match_eager_pytorch_on_real_images(which, request, task):
    learner = request.getfixturevalue(which)
    result = request.getfixturevalue(f"{which}_files")
    want = _eager(learner.adapt(task.support_x, task.support_y), task.query_x)
    got = _session(result.classifier).run(["probabilities"], {"x": task.query_x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY)
    # the comparison means something: confident, mostly right predictions
    assert want.max(1).mean() > 0.6
    assert (want.argmax(1) == task.query_y).mean() > 0.6
    assert result.checks["classifier"] <= PARITY


def test_enrolment_pair_reproduces_the_classifier(protonet_files, protonet, task):
    adapted = protonet.adapt(task.support_x, task.support_y)
    emb = _session(protonet_files.embedder).run(None, {"x": task.query_x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(emb, adapted.embed(task.query_x).numpy(), atol=1e-5, rtol=1e-5)
    head = _session(protonet_files.head)
    protos = adapted.prototypes.numpy()
    probs, dist = head.run(None, {"embeddings": emb, "prototypes": protos})
    np.testing.assert_allclose(probs, _eager(adapted, task.query_x), atol=PARITY, rtol=0)
    assert dist.shape == (len(emb), 3) and (dist >= 0).all()
    # the class axis is dynamic: a device can enrol any number of classes
    probs5, _ = head.run(
        None, {"embeddings": emb[:2], "prototypes": np.concatenate([protos, protos[:2]])}
    )
    assert probs5.shape == (2, 5)


def test_metadata_round_trips(protonet_files, task):
    meta = read_metadata(protonet_files.classifier)
    assert meta == protonet_files.metadata
    assert meta["format"] == "medmeta-onnx" and meta["role"] == "classifier"
    assert meta["medmeta_version"] == medmeta.__version__
    assert meta["class_names"] == task.class_names
    assert meta["input_shape"] == [3, 28, 28]
    assert Preprocessing.from_dict(meta["preprocessing"]) == Preprocessing.for_images((3, 28, 28))
    assert meta["temperature"] == TEMPERATURE
    assert meta["evaluation"]["accuracy"] == 0.912 and meta["evaluation"]["ci95"] == 0.013
    assert meta["algorithm"] == "protonet" and meta["exporter"] == "dynamo"
    assert meta["outputs"] == ["probabilities", "distances", "embeddings"]
    assert meta["enrolment"]["ood"]["rule"] == "leave-one-out"
    model = onnx.load(str(protonet_files.classifier))
    assert meta["weights_sha256"] == weights_sha256(model)
    assert verify_weights(protonet_files.classifier)
    # the three files: their own metadata, each naming its role
    embed, head = (read_metadata(p) for p in (protonet_files.embedder, protonet_files.head))
    assert embed["role"] == "embedder" and head["role"] == "head"
    assert embed["head_file"] == protonet_files.head.name
    assert head["embedder_weights_sha256"] == embed["weights_sha256"]


def test_weights_hash_detects_a_changed_weight(protonet_files, tmp_path):
    model = onnx.load(str(protonet_files.classifier))
    init = max(model.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)
    array = onnx.numpy_helper.to_array(init).copy()
    array.flat[0] += 1e-3
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    onnx.save(model, str(tmp_path / "tampered.onnx"))
    assert not verify_weights(tmp_path / "tampered.onnx")


def test_eval_result_summary_with_ci_goes_into_the_metadata(protonet, task, tmp_path):
    from medmeta.eval import evaluate

    blood_task = medmeta.data.ArrayDataset(
        task.query_raw, task.query_y, class_names=task.class_names
    )
    result = evaluate(protonet, blood_task, ways=3, shots=5, queries=5, episodes=4, seed=0)
    exported = to_onnx(
        protonet.adapt(task.support_x, task.support_y),
        tmp_path / "m.onnx",
        support_x=task.support_x,
        support_y=task.support_y,
        evaluation=result,
    )
    summary = read_metadata(exported.classifier)["evaluation"]
    assert summary["accuracy"] == pytest.approx(result.accuracy)
    assert summary["ci95"] == pytest.approx(result.ci95)
    assert summary["episodes"] == 4 and "±" in summary["summary"]
    assert read_metadata(exported.classifier)["algorithm"] is None  # an Adapted was given


def test_dynamo_failure_falls_back_to_torchscript_with_the_reason_logged(
    protonet, task, tmp_path, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(export_onnx, "_export_dynamo", broken)
    with caplog.at_level(logging.WARNING, logger="medmeta.export.onnx"):
        result = to_onnx(
            protonet, tmp_path / "ts.onnx", support_x=task.support_x, support_y=task.support_y,
            temperature=TEMPERATURE,
        )  # fmt: skip
    assert result.exporter == "torchscript"
    assert read_metadata(result.classifier)["exporter"] == "torchscript"
    assert any(
        "simulated dynamo failure" in r.getMessage() and "TorchScript" in r.getMessage()
        for r in caplog.records
    )
    got = _session(result.classifier).run(["probabilities"], {"x": task.query_x.numpy()})[0]
    want = _eager(protonet.adapt(task.support_x, task.support_y), task.query_x)
    np.testing.assert_allclose(got, want, atol=PARITY, rtol=0)
    for n in (1, 7):
        assert _session(result.classifier).run(["probabilities"], {"x": task.query_x[:n].numpy()})[
            0
        ].shape == (n, 3)


def test_both_exporters_failing_is_an_export_error(protonet, task, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("nope")

    monkeypatch.setattr(export_onnx, "_export_dynamo", broken)
    monkeypatch.setattr(export_onnx, "_export_torchscript", broken)
    with pytest.raises(ExportError, match="both exporters"):
        to_onnx(protonet, tmp_path / "x.onnx", support_x=task.support_x, support_y=task.support_y)
    assert not (tmp_path / "x.onnx").exists()


def test_maml_has_no_enrolment_form(maml, task, tmp_path):
    with pytest.raises(ValueError, match="enrolment form needs"):
        to_onnx(maml, tmp_path / "m.onnx", support_x=task.support_x, support_y=task.support_y,
                form="enrolment")  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"form": "everything"}, ValueError, "form"),
        ({"opset": 16}, ValueError, "opset"),
        ({"class_names": ["a", "b"]}, ValueError, "class_names: expected 3"),
        ({"class_names": ["a", "a", "b"]}, ValueError, "unique"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"preprocessing": Preprocessing.for_images((3, 32, 32))}, ValueError, "input_shape"),
        ({"preprocessing": "images"}, TypeError, "preprocessing"),
        ({"evaluation": 0.9}, TypeError, "evaluation"),
    ],
)
def test_bad_arguments_are_named(protonet, task, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        to_onnx(protonet, tmp_path / "m.onnx", support_x=task.support_x, support_y=task.support_y,
                **kwargs)  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_bad_support_sets_are_named(protonet, task, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="support_x/support_y: required"):
        to_onnx(protonet, path)
    with pytest.raises(TypeError, match="support_x: expected preprocessed float"):
        to_onnx(protonet, path, support_x=torch.zeros(15, 3, 28, 28, dtype=torch.uint8),
                support_y=task.support_y)  # fmt: skip
    nan = task.support_x.clone()
    nan[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        to_onnx(protonet, path, support_x=nan, support_y=task.support_y)
    with pytest.raises(ValueError, match="give both or neither"):
        to_onnx(protonet, path, support_x=task.support_x)
    with pytest.raises(TypeError, match="integer labels"):
        to_onnx(protonet, path, support_x=task.support_x, support_y=task.support_y.float())
    with pytest.raises(TypeError, match="MetaLearner or an Adapted"):
        to_onnx(torch.nn.Linear(3, 3), path, support_x=task.support_x, support_y=task.support_y)
    assert not path.exists()


def test_adapted_without_support_exports_prototypes_only(protonet, task, tmp_path):
    """An Adapted without its support set: prototypes baked in, no stored support examples,
    the OOD threshold from the gaps between prototypes; needs a preprocessing spec."""
    adapted = protonet.adapt(task.support_x, task.support_y)
    with pytest.raises(ValueError, match="preprocessing: required"):
        to_onnx(adapted, tmp_path / "a.onnx")
    result = to_onnx(adapted, tmp_path / "a.onnx", preprocessing=Preprocessing.for_images((3, 28, 28)),
                     calibration_x=task.query_x[:4], form="both")  # fmt: skip
    meta = read_metadata(result.embedder)
    assert meta["enrolment"]["support_embeddings"] is None
    assert meta["enrolment"]["ood"]["rule"] == "prototype-gap"
    got = _session(result.classifier).run(["probabilities"], {"x": task.query_x.numpy()})[0]
    with torch.no_grad():  # temperature 1 here
        want = torch.softmax(adapted(task.query_x), -1).numpy()
    np.testing.assert_allclose(got, want, atol=PARITY, rtol=0)


def test_foreign_and_corrupt_files_are_refused_by_read_metadata(tmp_path):
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(foreign), dynamo=False)
    with pytest.raises(EdgeModelError, match="not a medmeta model"):
        read_metadata(foreign)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(EdgeModelError, match="not a readable ONNX file"):
        read_metadata(corrupt)


def test_metadata_is_one_json_entry(protonet_files):
    model = onnx.load(str(protonet_files.embedder))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["medmeta"])
    assert meta["schema_version"] == 1 and meta["role"] == "embedder"


def test_int8_option_writes_a_quantized_twin_with_parity(protonet, task, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    result = to_onnx(
        protonet, tmp_path / "q.onnx", support_x=task.support_x, support_y=task.support_y,
        int8=True, calibration_x=task.query_x.numpy(),
    )  # fmt: skip
    assert result.int8 is not None and result.int8.exists()
    meta = read_metadata(result.int8)
    assert meta["precision"] == "int8"
    assert meta["float_weights_sha256"] == result.metadata["weights_sha256"]
    assert verify_weights(result.int8)
    assert result.parity["top1_agreement"] >= 0.9
    assert result.parity["max_abs_prob_diff"] < 0.2


def test_unknown_learner_forms_are_explained(tmp_path, task):
    # a learner whose adapt() output cannot be split: the classifier form only
    learner = create("matching", Conv4(3, hidden=8), ways=3)
    with pytest.raises(ValueError, match="form='classifier'"):
        to_onnx(learner, tmp_path / "m.onnx", support_x=task.support_x, support_y=task.support_y,
                form="both")  # fmt: skip


def test_maml_classifier_on_the_edge_runtime(maml_files, maml, task):
    """The MAML classifier carries the support centroids of its adapted features: the
    runtime flags OOD inputs and explains predictions with it, but cannot enrol."""
    device = EdgeModel(maml_files.classifier)
    want = _eager(maml.adapt(task.support_x, task.support_y), task.query_x)
    np.testing.assert_allclose(device.predict_proba(task.query_raw), want, atol=PARITY, rtol=0)
    meta = device.metadata
    assert meta["metric"] == "sqeuclidean" and meta["enrolment"]["ood"]["rule"] == "leave-one-out"
    # the adapted backbone was fitted to the support set, so its leave-one-out distances
    # understate a new input's: the threshold is tight here (documented); MRI still stands out
    # (0.88 of the MRI images flagged on an AVX2 CPU, more where the model trained otherwise)
    in_rate = device.predict(task.query_raw).ood.mean()
    mri_rate = device.predict(load("brain_tumor_mri").x[::20][:60]).ood.mean()
    assert mri_rate >= 0.8 and mri_rate > in_rate + 0.3, (mri_rate, in_rate)
    why = device.explain(task.query_raw[:3], k=5)
    assert all(len(e.neighbours) == 5 and e.neighbours[0].distance <= e.neighbours[-1].distance
               for e in why)  # fmt: skip
    with pytest.raises(EdgeModelError, match="fixed classes"):
        device.enrol(task.support_raw, task.support_y.numpy())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_a_learner_on_the_gpu_is_adapted_there_and_exported_from_cpu(protonet, task, tmp_path):
    import copy

    gpu = copy.deepcopy(protonet).cuda()
    result = to_onnx(gpu, tmp_path / "g.onnx", support_x=task.support_x, support_y=task.support_y,
                     temperature=TEMPERATURE)  # fmt: skip
    assert next(gpu.parameters()).is_cuda  # the caller's learner stays on the GPU
    got = _session(result.classifier).run(["probabilities"], {"x": task.query_x.numpy()})[0]
    want = _eager(protonet.adapt(task.support_x, task.support_y), task.query_x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # GPU vs CPU adaptation
