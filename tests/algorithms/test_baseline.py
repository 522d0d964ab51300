"""Supervised baseline: global-class labels, the head's cross-entropy, nearest-centroid
prediction, the adapted classifier, persistence, determinism, input errors, and learning
on real blood-cell images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.protonet import distance

HP = {"num_classes": 8, "embedding_dim": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


def test_shapes_gradients_and_accuracy():
    learner = mh.build("supervised", **HP)
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)  # backbone and head
    mh.check_accuracy_matches_predict(learner, batch)


def test_loss_is_cross_entropy_on_global_classes():
    learner = mh.build("supervised", **HP).double().eval()
    batch = mh.episodes(batch_size=2)
    batch = dataclasses.replace(
        batch, support_x=batch.support_x.double(), query_x=batch.query_x.double()
    )
    x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
    y = torch.cat(
        [
            torch.stack([batch.classes[b][batch.support_y[b]] for b in range(2)]),
            torch.stack([batch.classes[b][batch.query_y[b]] for b in range(2)]),
        ],
        1,
    ).flatten()
    assert set(y.tolist()) <= set(mh.TRAIN_CLASSES) and len(set(y.tolist())) > 3
    with torch.no_grad():
        loss, _ = learner.meta_loss(batch)
        expected = F.cross_entropy(learner.head(learner.backbone(x)), y)
    torch.testing.assert_close(loss, expected)


def test_step_reports_head_accuracy():
    learner = mh.build("supervised", **HP)
    opt = torch.optim.SGD(learner.parameters(), lr=0.01)
    result = learner.meta_train_step(mh.episodes(batch_size=2), opt)
    assert 0.0 <= result.extra["head_accuracy"] <= 1.0 and result.loss > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_predict_is_nearest_centroid(normalize):
    learner = mh.build("supervised", **HP, normalize=normalize).double().eval()
    batch = mh.episodes(batch_size=2)
    sx, qx = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        logits = learner.predict(sx, batch.support_y, qx)
        for b in range(2):
            zs, zq = learner.backbone(sx[b]), learner.backbone(qx[b])
            if normalize:
                zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
            protos = torch.stack([zs[batch.support_y[b] == n].mean(0) for n in range(3)])
            torch.testing.assert_close(logits[b], -(torch.cdist(zq, protos) ** 2))


@pytest.mark.parametrize("normalize", [False, True])
def test_adapt_matches_predict(normalize):
    learner = mh.build("supervised", **HP, normalize=normalize)
    batch = mh.episodes(shots=3, batch_size=1)
    mh.check_adapt_matches_predict(learner, batch)
    adapted = mh.build("supervised", **HP, normalize=normalize).adapt(
        batch.support_x[0], batch.support_y[0]
    )
    with torch.no_grad():  # the enrolment form reproduces the classifier
        z = adapted.embed(batch.query_x[0])
        torch.testing.assert_close(
            -distance(z, adapted.prototypes, adapted.metric), adapted(batch.query_x[0])
        )


def test_episodes_are_independent_in_eval_mode():
    mh.check_episodes_independent(mh.build("supervised", **HP), mh.episodes(batch_size=3))


def test_spec_roundtrip():
    learner = mh.build("supervised", **HP, metric="cosine")
    assert learner.spec()["hparams"] == {**HP, "metric": "cosine", "normalize": False}
    mh.check_roundtrip(learner, mh.episodes(), mh.tiny_conv4)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: mh.build("supervised", seed=3, **HP))


def test_bad_inputs_raise_clear_errors():
    learner = mh.build("supervised", num_classes=4, embedding_dim=16)
    batch = mh.episodes(batch_size=2)  # classes 0-4
    batch = dataclasses.replace(batch, classes=torch.tensor([[0, 1, 4], [0, 1, 2]]))
    with pytest.raises(ValueError, match=r"training class id 4 is outside .*num_classes=4"):
        learner.meta_loss(batch)
    bad_y = batch.support_y.clone()
    bad_y[0, 0] = 3
    # predict takes N from the labels: a label 3 makes a 4-way episode with a class missing
    with pytest.raises(ValueError, match="episode 1, class 3 has no support example"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    with pytest.raises(ValueError, match=r"'episode labels' must be in \[0, 3\), found 3"):
        learner.meta_loss(dataclasses.replace(batch, support_y=bad_y))
    with pytest.raises(TypeError, match="'num_classes' must be an int"):
        create("supervised", mh.tiny_conv4(), 3, num_classes="4", embedding_dim=16)
    with pytest.raises(ValueError, match="supervised needs num_classes"):
        create("supervised", mh.tiny_conv4(), 3, embedding_dim=16)


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = mh.build("supervised", **HP, normalize=True).adapt(
        batch.support_x[0], batch.support_y[0]
    )
    mh.check_exportable(adapted, batch.query_x[0])


def test_learns_on_blood_cells():
    result = mh.train_and_evaluate(mh.build("supervised", **HP), shots=5, steps=40)
    print(result)
    result.check(ways=3, seen_gain=0.1)
