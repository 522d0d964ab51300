"""Siamese networks: shapes, gradients, the contrastive and triplet losses against loop
implementations, nearest-neighbour / prototype prediction, the adapted classifier,
persistence, determinism, input errors, and learning with both losses on real
blood-cell images."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.siamese import contrastive_loss, triplet_loss

CONFIGS = [
    pytest.param({"loss": "contrastive"}, id="contrastive"),
    pytest.param({"loss": "triplet"}, id="triplet-batch-hard"),
    pytest.param({"loss": "triplet", "mining": "all"}, id="triplet-all"),
    pytest.param({"classifier": "nearest", "normalize": False}, id="nearest"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


def _distances(gen, B=2, M=7):
    z = torch.randn(B, M, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 2, 2]])[:B, :M]
    return torch.cdist(z, z), labels


def test_contrastive_loss_equals_loop(gen):
    dist, labels = _distances(gen)
    margin = 1.5
    got = contrastive_loss(dist, labels, margin)
    for b in range(2):
        pos, neg = [], []
        for i, j in itertools.permutations(range(7), 2):
            d = dist[b, i, j]
            if labels[b, i] == labels[b, j]:
                pos.append(d**2)
            else:
                neg.append(max(0.0, margin - d) ** 2)
        expected = 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg))
        torch.testing.assert_close(got[b], torch.as_tensor(expected, dtype=torch.float64))


def test_triplet_losses_equal_loops(gen):
    dist, labels = _distances(gen)
    margin = 0.7
    hard = triplet_loss(dist, labels, margin, "batch_hard")
    every = triplet_loss(dist, labels, margin, "all")
    for b in range(2):
        anchors, triplets = [], []
        for a in range(7):
            pos = [dist[b, a, p] for p in range(7) if p != a and labels[b, p] == labels[b, a]]
            neg = [dist[b, a, n] for n in range(7) if labels[b, n] != labels[b, a]]
            if pos and neg:
                anchors.append(max(0.0, max(pos) - min(neg) + margin))
            triplets += [max(0.0, p - n + margin) for p in pos for n in neg]
        torch.testing.assert_close(hard[b], torch.as_tensor(sum(anchors) / len(anchors)))
        torch.testing.assert_close(every[b], torch.as_tensor(sum(triplets) / len(triplets)))


@pytest.mark.parametrize("hparams", CONFIGS)
def test_shapes_gradients_and_accuracy(hparams):
    learner = mh.build("siamese", **hparams)
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)
    mh.check_accuracy_matches_predict(learner, batch)


@pytest.mark.parametrize("classifier", ["prototype", "nearest"])
def test_predict_equals_direct_computation(classifier):
    learner = mh.build("siamese", classifier=classifier).double().eval()
    batch = mh.episodes(batch_size=2)
    sx, qx = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        logits = learner.predict(sx, batch.support_y, qx)
        for b in range(2):
            zs = torch.nn.functional.normalize(learner.backbone(sx[b]), dim=-1)
            zq = torch.nn.functional.normalize(learner.backbone(qx[b]), dim=-1)
            for n in range(3):
                members = zs[batch.support_y[b] == n]
                if classifier == "prototype":
                    d = (zq - members.mean(0)).norm(dim=-1)
                else:
                    d = torch.cdist(zq, members).amin(-1)
                torch.testing.assert_close(logits[b, :, n], -d)


@pytest.mark.parametrize("hparams", CONFIGS)
def test_adapt_matches_predict(hparams):
    learner = mh.build("siamese", **hparams)
    batch = mh.episodes(shots=3, batch_size=1)
    mh.check_adapt_matches_predict(learner, batch)
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    if learner.classifier == "prototype":
        assert adapted.metric == "euclidean" and adapted.prototypes.shape == (3, 16)
    else:  # a nearest-neighbour rule has no prototype enrolment form
        assert adapted.prototypes is None


def test_episodes_are_independent_in_eval_mode():
    mh.check_episodes_independent(mh.build("siamese"), mh.episodes(batch_size=3))


@pytest.mark.parametrize("hparams", CONFIGS[:2])
def test_spec_roundtrip(hparams):
    mh.check_roundtrip(mh.build("siamese", **hparams), mh.episodes(), mh.tiny_conv4)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: mh.build("siamese", seed=3, loss="triplet"))


def test_bad_inputs_raise_clear_errors():
    learner = mh.build("siamese")
    batch = mh.episodes(batch_size=2)
    bad_y = batch.support_y.clone()
    bad_y[0, 0] = 4
    # predict takes N from the labels: a label 4 makes a 5-way episode with classes missing
    with pytest.raises(ValueError, match="episode 0, class 3 has no support example"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    with pytest.raises(ValueError, match=r"siamese: 'support_y' must be in \[0, 3\), found 4"):
        learner.meta_loss(dataclasses.replace(batch, support_y=bad_y))
    nearest = mh.build("siamese", classifier="nearest")
    with pytest.raises(ValueError, match="siamese: episode 0, class 3 has no support example"):
        nearest.predict(batch.support_x, bad_y, batch.query_x)
    with pytest.raises(ValueError, match="'loss' must be one of"):
        create("siamese", mh.tiny_conv4(), 3, loss="arcface")
    with pytest.raises(ValueError, match="'margin' must be positive"):
        create("siamese", mh.tiny_conv4(), 3, margin=-1.0)


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = mh.build("siamese", classifier="nearest").adapt(
        batch.support_x[0], batch.support_y[0]
    )
    mh.check_exportable(adapted, batch.query_x[0])


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_learns_on_blood_cells(loss):
    result = mh.train_and_evaluate(mh.build("siamese", loss=loss), shots=5, steps=40)
    print(result)
    result.check(ways=3, seen_gain=0.1)
