"""Corrupt, truncated and foreign model files, and bad inputs, give clear errors (type and
message), never a crash or a silent wrong answer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from helpers_edge import edit_onnx_metadata, tamper_weights
from medmeta.edge import EdgeModel, EdgeModelError


@pytest.fixture(scope="module")
def classifier(exported) -> EdgeModel:
    return EdgeModel(exported.classifier)


@pytest.fixture
def embedder(exported) -> EdgeModel:
    return EdgeModel(exported.embedder)


def test_missing_corrupt_and_truncated_files(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        EdgeModel(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EdgeModelError, match="cannot be loaded as an ONNX model"):
        EdgeModel(corrupt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.classifier.read_bytes()[:5000])
    with pytest.raises(EdgeModelError, match="corrupt or truncated"):
        EdgeModel(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(EdgeModelError):
        EdgeModel(empty)


def test_foreign_onnx_model_without_medmeta_metadata(tmp_path):
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(foreign), dynamo=False)
    with pytest.raises(EdgeModelError, match="not a medmeta model"):
        EdgeModel(foreign)
    with pytest.raises(EdgeModelError, match="not a medmeta model"):
        EdgeModel.read_metadata(foreign)


def test_inconsistent_or_newer_metadata(exported, tmp_path):
    cases = {
        "newer.onnx": (lambda m: m.update(schema_version=99), "newer than this runtime"),
        "format.onnx": (lambda m: m.update(format="other"), "metadata format"),
        "shape.onnx": (lambda m: m.update(input_shape=[3, 32, 32]), "does not match"),
        "outputs.onnx": (
            lambda m: m.update(outputs=["probabilities", "x"]),
            "differ from metadata",
        ),
        "role.onnx": (lambda m: m.update(role="translator"), "role must be one of"),
        "missing.onnx": (lambda m: m.pop("class_names"), "lacks required keys"),
    }
    for name, (edit, match) in cases.items():
        edit_onnx_metadata(exported.classifier, tmp_path / name, edit)
        with pytest.raises(EdgeModelError, match=match):
            EdgeModel(tmp_path / name)
    model = onnx.load(str(exported.classifier))
    (prop,) = [p for p in model.metadata_props if p.key == "medmeta"]
    prop.value = "{not json"
    onnx.save(model, str(tmp_path / "json.onnx"))
    with pytest.raises(EdgeModelError, match="not JSON"):
        EdgeModel(tmp_path / "json.onnx")


def test_the_head_alone_or_a_wrong_head_is_refused(exported, tmp_path):
    with pytest.raises(EdgeModelError, match="is an enrolment head"):
        EdgeModel(exported.head)
    folder = tmp_path / "pair"
    folder.mkdir()
    (folder / exported.embedder.name).write_bytes(exported.embedder.read_bytes())
    with pytest.raises(FileNotFoundError, match="head_file"):
        EdgeModel(folder / exported.embedder.name)
    (folder / exported.head.name).write_bytes(exported.head.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(EdgeModelError, match="SHA-256 differs"):
        EdgeModel(folder / exported.embedder.name)


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (np.zeros((2, 28, 28, 3), bool), TypeError, "dtype bool"),
        (np.zeros((2, 28, 28, 3), complex), TypeError, "numeric array"),
        (np.array(["a", "b"]), TypeError, "numeric array"),
        (np.zeros((2, 28, 28, 3), np.int16), TypeError, "no implied intensity range"),
        (np.zeros((2, 5, 28, 28, 3), np.uint8), ValueError, "expected images"),
        (np.zeros((2, 28, 28, 2), np.uint8), ValueError, "channel axis"),
        (np.zeros((2, 3, 28, 3), np.uint8), ValueError, "channel axis"),
        (np.zeros((0, 28, 28, 3), np.uint8), ValueError, "empty batch"),
        (np.full((2, 28, 28, 3), np.nan, np.float32), ValueError, "example 0 contains NaN"),
    ],
)
def test_bad_raw_inputs(classifier, raw, error, match):
    with pytest.raises(error, match=match):
        classifier.predict(raw)


def test_bad_preprocessed_inputs(classifier):
    with pytest.raises(TypeError, match="needs float32 model inputs, got dtype float64"):
        classifier.predict(np.zeros((2, 3, 28, 28)), preprocessed=True)
    with pytest.raises(TypeError, match="got dtype uint8"):
        classifier.predict(np.zeros((2, 3, 28, 28), np.uint8), preprocessed=True)
    with pytest.raises(
        ValueError, match=r"needs shape \[n, 3, 28, 28\] with n >= 1, got \[2, 28, 28, 3\]"
    ):
        classifier.predict(np.zeros((2, 28, 28, 3), np.float32), preprocessed=True)
    x = np.zeros((3, 3, 28, 28), np.float32)
    x[2, 1, 4, 4] = np.inf
    with pytest.raises(ValueError, match="example 2 contains NaN or infinite"):
        classifier.predict(x, preprocessed=True)


def test_bad_enrolment_inputs(embedder, classifier, task):
    support = task.support_raw
    with pytest.raises(EdgeModelError, match="classifier with fixed classes"):
        classifier.enrol(support, task.support_y)
    with pytest.raises(ValueError, match=r"labels: must be in \[0, 3\), found 3"):
        embedder.enrol(support, np.full(15, 3))
    with pytest.raises(ValueError, match=r"labels: must be in \[0, 4\), found -1"):
        embedder.enrol(support, np.full(15, -1), class_names=list("abcd"))
    with pytest.raises(ValueError, match="class 'd' has no enrolment example"):
        embedder.enrol(support, np.repeat(np.arange(3), 5), class_names=list("abcd"))
    with pytest.raises(ValueError, match=r"labels: expected shape \[15\]"):
        embedder.enrol(support, np.zeros(14, np.int64))
    with pytest.raises(TypeError, match="integer class indices or class-name strings"):
        embedder.enrol(support, np.zeros(15))
    with pytest.raises(TypeError, match="only with integer labels"):
        embedder.enrol(support, ["x"] * 15, class_names=["x"])
    with pytest.raises(ValueError, match="unique names"):
        embedder.enrol(support, np.zeros(15, np.int64), class_names=["a", "a"])
    # nothing changed after all these refusals
    assert embedder.class_names == task.class_names
    assert list(embedder.enrolment.counts) == [5, 5, 5]


def test_explain_and_save_need_the_right_form(classifier, tmp_path):
    with pytest.raises(EdgeModelError, match="classifier with fixed classes"):
        classifier.save(tmp_path / "e.npz")
    with pytest.raises(ValueError, match="threads"):
        EdgeModel(classifier.path, threads=0)
    with pytest.raises(ValueError, match="ood_quantile"):
        EdgeModel(classifier.path, ood_quantile=1.5)


@pytest.mark.parametrize("role", ["classifier", "embedder"])
def test_weights_edited_after_export_are_refused(exported, tmp_path, role):
    source = getattr(exported, role)
    folder = tmp_path / role
    folder.mkdir()
    for f in (exported.classifier, exported.embedder, exported.head):
        (folder / f.name).write_bytes(f.read_bytes())
    EdgeModel(folder / source.name)  # the untouched copy loads
    tamper_weights(source, folder / source.name)
    with pytest.raises(EdgeModelError, match="weights do not match the weights_sha256"):
        EdgeModel(folder / source.name)
