"""Every learner's adapted classifier exports, and its ONNX probabilities equal eager
PyTorch on real query images; learners with a prototype head also export the enrolment
pair, which reproduces the classifier."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers_edge import meta_trained_conv4
from medmeta.edge import EdgeModel
from medmeta.export import read_metadata, to_onnx

FEATURES = ["probabilities", "distances", "embeddings"]

# fomaml and reptile adapt to the same Sequential(backbone, head) as maml (test_onnx.py).
# (name, hyper-parameters, meta-training steps, calibration temperature, outputs, enrolment)
# Steps and temperatures are chosen so the reference probabilities are far from uniform
# (parity on near-uniform outputs would prove little): the MAML family is confident as
# initialised; relation scores are sigmoids near 0.5, sharpened by a low temperature.
CASES = [
    ("metasgd", {}, 0, 1.0, FEATURES, False),
    ("anil", {}, 0, 0.5, FEATURES, False),
    ("mamlpp", {}, 0, 1.0, FEATURES, False),
    ("matching", {}, 20, 1.0, ["probabilities"], False),
    ("relation", {}, 30, 0.01, ["probabilities"], False),
    ("snail", {}, 20, 0.3, ["probabilities"], False),
    ("siamese", {"classifier": "prototype"}, 20, 0.2, FEATURES, True),
    ("siamese", {"classifier": "nearest"}, 20, 0.2, ["probabilities"], False),
    ("supervised", {}, 20, 0.3, FEATURES, True),
]


@pytest.mark.slow  # each case meta-trains, adapts and exports a learner (3-11 s)
@pytest.mark.parametrize(
    ("name", "hparams", "steps", "temperature", "outputs", "enrolment"),
    CASES,
    ids=[f"{c[0]}-{c[1].get('classifier', '')}".rstrip("-") for c in CASES],
)
def test_learner_exports_with_parity(
    name, hparams, steps, temperature, outputs, enrolment, meta_train_set, task, tmp_path
):
    learner = meta_trained_conv4(name, meta_train_set, steps, **hparams)
    adapted = learner.adapt(task.support_x, task.support_y)
    result = to_onnx(
        learner, tmp_path / "m.onnx", support_x=task.support_x, support_y=task.support_y,
        temperature=temperature, form="both" if enrolment else "classifier",
    )  # fmt: skip
    meta = read_metadata(result.classifier)
    assert meta["algorithm"] == name and meta["outputs"] == outputs
    with torch.no_grad():
        want = torch.softmax(adapted(task.query_x) / temperature, -1).numpy()
    session = ort.InferenceSession(str(result.classifier), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"x": task.query_x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert want.max(1).mean() > 0.4  # chance is 1/3: the probabilities carry information
    # the torch-free runtime on raw uint8 images gives the same probabilities
    device = EdgeModel(result.classifier)
    np.testing.assert_allclose(device.predict_proba(task.query_raw), want, atol=1e-5, rtol=0)
    pred = device.predict(task.query_raw[:5])
    if "distances" in outputs:  # an embedding space: OOD flags and explanations
        assert pred.ood is not None and pred.ood_threshold > 0
        assert len(device.explain(task.query_raw[:2], k=2)[0].neighbours) == 2
    else:
        assert pred.ood is None and pred.ood_threshold is None
        with pytest.raises(ValueError, match="need an embedding space"):
            device.explain(task.query_raw[:2])
    if enrolment:
        emb = ort.InferenceSession(str(result.embedder)).run(None, {"x": task.query_x.numpy()})[0]
        head = ort.InferenceSession(str(result.head))
        probs, _ = head.run(None, {"embeddings": emb, "prototypes": adapted.prototypes.numpy()})
        np.testing.assert_allclose(probs, got, atol=1e-5, rtol=0)
    else:
        assert result.embedder is None and result.head is None
