"""Every learner's adapted classifier exports, and its ONNX probabilities equal eager
PyTorch on real query images; learners with a prototype head also export the enrolment
pair, which reproduces the classifier."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medmeta.algorithms.base import build
from medmeta.data.episodes import EpisodeSampler, split_classes
from medmeta.edge import EdgeModel
from medmeta.export import read_metadata, to_onnx
from medmeta.nn import Conv4

FEATURES = ["probabilities", "distances", "embeddings"]
TRAIN_CLASSES = [3, 4, 5, 6, 7]  # the task uses classes 0-2 (see conftest.py)

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


def _learner(name: str, hparams: dict, steps: int, blood) -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            learner = build(name, Conv4(3, hidden=16), 3, input_shape=(3, 28, 28), num_classes=8,
                            **hparams)  # fmt: skip
        if steps:
            train = split_classes(blood, classes=[list(TRAIN_CLASSES), [0, 1, 2]])[0]
            sampler = EpisodeSampler(train, ways=3, shots=5, queries=5, batch_size=2, generator=0)
            optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
            for _ in range(steps):
                learner.meta_train_step(sampler.sample(), optimizer)
    finally:
        torch.set_num_threads(threads)
    return learner.eval()


@pytest.mark.parametrize(
    ("name", "hparams", "steps", "temperature", "outputs", "enrolment"),
    CASES,
    ids=[f"{c[0]}-{c[1].get('classifier', '')}".rstrip("-") for c in CASES],
)
def test_learner_exports_with_parity(
    name, hparams, steps, temperature, outputs, enrolment, blood, task, tmp_path
):
    learner = _learner(name, hparams, steps, blood)
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
