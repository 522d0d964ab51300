"""Prototypical Networks: shapes, gradients, the adapted classifier, persistence,
determinism, agreement with a direct computation, input errors, and learning on real
blood-cell images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.protonet import PrototypeHead, distance
from medmeta.ops import _reference


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


def test_shapes_gradients_and_accuracy():
    learner = mh.build("protonet")
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)
    mh.check_accuracy_matches_predict(learner, batch)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine", "dot"])
def test_predict_and_loss_equal_direct_computation(metric):
    learner = mh.build("protonet", metric=metric, temperature=2.0).double().eval()
    batch = mh.episodes(batch_size=2)
    sx, qx = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        logits = learner.predict(sx, batch.support_y, qx)
        for b in range(2):
            zs, zq = learner.backbone(sx[b]), learner.backbone(qx[b])
            protos = torch.stack([zs[batch.support_y[b] == n].mean(0) for n in range(3)])
            expected = -_reference.pairwise_distance(zq[None], protos[None], metric)[0] / 2.0
            torch.testing.assert_close(logits[b], expected)
        loss, accuracy = learner.meta_loss(dataclasses.replace(batch, support_x=sx, query_x=qx))
    ce = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
    torch.testing.assert_close(loss, ce)
    torch.testing.assert_close(accuracy, (logits.argmax(-1) == batch.query_y).double().mean(-1))


def test_temperature_scales_logits():
    batch = mh.episodes()
    a = mh.build("protonet").eval()
    b = mh.build("protonet", temperature=4.0).eval()
    with torch.no_grad():
        la = a.predict(batch.support_x, batch.support_y, batch.query_x)
        lb = b.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(lb, la / 4.0)


def test_prototype_head_matches_ops_for_every_metric(gen):
    z = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    for metric in ("sqeuclidean", "euclidean", "cosine", "dot"):
        expected = -_reference.pairwise_distance(z[None], p[None], metric)[0] / 0.5
        torch.testing.assert_close(PrototypeHead(p, metric, 0.5)(z), expected)
        torch.testing.assert_close(distance(z, p, metric), -expected * 0.5)


def test_adapt_matches_predict_and_exposes_enrolment_form():
    learner = mh.build("protonet")
    batch = mh.episodes(shots=3, batch_size=1)
    mh.check_adapt_matches_predict(learner, batch)
    adapted = mh.build("protonet").adapt(batch.support_x[0], batch.support_y[0])
    assert adapted.metric == "sqeuclidean" and adapted.prototypes.shape == (3, 16)
    with torch.no_grad():  # enrolment form: embed + prototypes gives the same logits
        z = adapted.embed(batch.query_x[0])
        torch.testing.assert_close(
            -distance(z, adapted.prototypes, adapted.metric), adapted(batch.query_x[0])
        )


def test_adapt_restores_training_mode():
    learner = mh.build("protonet")
    learner.train()
    batch = mh.episodes(batch_size=1)
    learner.adapt(batch.support_x[0], batch.support_y[0])
    assert learner.training and all(m.training for m in learner.modules())


def test_episodes_are_independent_in_eval_mode():
    mh.check_episodes_independent(mh.build("protonet"), mh.episodes(batch_size=3))


def test_spec_roundtrip():
    learner = mh.build("protonet", metric="cosine", temperature=0.5)
    assert learner.spec() == {
        "algorithm": "protonet",
        "ways": 3,
        "hparams": {"metric": "cosine", "temperature": 0.5},
    }
    mh.check_roundtrip(learner, mh.episodes(), mh.tiny_conv4)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: mh.build("protonet", seed=3))


def test_training_with_more_ways_than_testing():
    learner = mh.build("protonet", ways=3)
    loss, accuracy = learner.meta_loss(mh.episodes(ways=5, batch_size=2))
    assert accuracy.shape == (2,) and bool(torch.isfinite(loss))


def test_bad_inputs_raise_clear_errors():
    learner = mh.build("protonet")
    batch = mh.episodes(batch_size=2)
    bad_y = batch.support_y.clone()
    bad_y[1, 0] = 5
    # predict takes N from the labels: a label 5 makes a 6-way episode with classes missing
    with pytest.raises(ValueError, match="episode 0, class 3 has no support example"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    missing = batch.support_y * 2 % 4  # labels 0 and 2 only: class 1 has no support example
    with pytest.raises(ValueError, match="episode 0, class 1 has no support example"):
        learner.predict(batch.support_x, missing, batch.query_x)
    with pytest.raises(ValueError, match="same shape"):
        learner.predict(batch.support_x, batch.support_y, batch.query_x[..., :14])
    with pytest.raises(ValueError, match="episodes"):
        learner.predict(batch.support_x, batch.support_y, batch.query_x[:1])
    with pytest.raises(ValueError, match=r"adapt takes one task"):
        learner.adapt(batch.support_x, batch.support_y)
    with pytest.raises(ValueError, match="'metric' must be one of"):
        create("protonet", mh.tiny_conv4(), 3, metric="manhattan")
    with pytest.raises(ValueError, match="'temperature' must be positive"):
        create("protonet", mh.tiny_conv4(), 3, temperature=0.0)


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = mh.build("protonet").adapt(batch.support_x[0], batch.support_y[0])
    mh.check_exportable(adapted, batch.query_x[0])


@pytest.mark.parametrize("shots", [5, 1])
def test_learns_on_blood_cells(shots):
    result = mh.train_and_evaluate(mh.build("protonet"), shots=shots, steps=40)
    print(result)
    result.check(ways=3, novel_margin=0.15 if shots == 5 else 0.1, seen_gain=0.1)
