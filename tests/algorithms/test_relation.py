"""Relation Networks: shapes, gradients, pair construction against a direct computation,
sum/mean class features, losses, the adapted classifier, persistence, determinism, input
errors, and learning on real blood-cell images with the convolutional relation module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.relation import ConvRelationModule, MLPRelationModule
from medmeta.nn import Conv4

MAPS = (16, 7, 7)  # Conv4(3, hidden=16, depth=2) on 28x28


def conv2():
    return Conv4(3, hidden=16, depth=2)


CONFIGS = [
    pytest.param((conv2, {"feature_shape": MAPS}), id="conv"),
    pytest.param((None, {"embedding_dim": 16, "hidden": 16}), id="mlp"),
]


def make(config, **extra):
    backbone, hparams = config
    return mh.build("relation", backbone=backbone, **hparams, **extra)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


@pytest.mark.parametrize("config", CONFIGS)
def test_shapes_gradients_and_accuracy(config):
    learner = make(config)
    assert isinstance(
        learner.relation, ConvRelationModule if "feature_shape" in config[1] else MLPRelationModule
    )
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)
    mh.check_accuracy_matches_predict(learner, batch)


@pytest.mark.parametrize("aggregate", ["mean", "sum"])
def test_scores_equal_the_relation_of_each_pair(aggregate):
    learner = make(CONFIGS[0].values[0], aggregate=aggregate).double().eval()
    batch = mh.episodes(batch_size=2, shots=2, queries=2)
    sx, qx = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        scores = learner.predict(sx, batch.support_y, qx)
        for b in range(2):
            zs = learner.backbone(sx[b]).reshape(-1, *MAPS)
            zq = learner.backbone(qx[b]).reshape(-1, *MAPS)
            for n in range(3):
                c = zs[batch.support_y[b] == n].sum(0)
                c = c / 2 if aggregate == "mean" else c
                pairs = torch.cat([c.expand_as(zq), zq], 1)  # class maps, then query maps
                torch.testing.assert_close(scores[b, :, n], learner.relation(pairs))


def test_mse_loss_against_one_hot_and_ce_option():
    batch = mh.episodes(batch_size=2)
    for loss in ("mse", "ce"):
        learner = make(CONFIGS[1].values[0], loss=loss).eval()
        with torch.no_grad():
            value, _ = learner.meta_loss(batch)
            scores = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        if loss == "mse":
            expected = (scores.sigmoid() - F.one_hot(batch.query_y, 3)).square().mean()
        else:
            expected = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())
        torch.testing.assert_close(value, expected)


def test_conv_relation_module_handles_small_maps():
    for shape in [(4, 7, 7), (4, 3, 3), (4, 1, 1), (4, 2, 5)]:
        module = ConvRelationModule(shape, 6, 8).eval()
        assert module(torch.randn(5, 8, *shape[1:])).shape == (5,)


@pytest.mark.parametrize("config", CONFIGS)
def test_adapt_matches_predict(config):
    mh.check_adapt_matches_predict(make(config), mh.episodes(shots=3, batch_size=1))


@pytest.mark.parametrize("config", CONFIGS)
def test_episodes_are_independent_in_eval_mode(config):
    mh.check_episodes_independent(make(config), mh.episodes(batch_size=3))


@pytest.mark.parametrize("config", CONFIGS)
def test_spec_roundtrip(config):
    learner = make(config)
    backbone = config[0] or mh.tiny_conv4
    mh.check_roundtrip(learner, mh.episodes(), backbone)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: make(CONFIGS[0].values[0], seed=3))


def test_bad_inputs_raise_clear_errors():
    learner = make(CONFIGS[0].values[0])
    batch = mh.episodes(batch_size=2)
    bad_y = batch.support_y.clone()
    bad_y[0, 1] = -1
    with pytest.raises(ValueError, match=r"prototypes: 'labels' must be in \[0, 3\), found -1"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    wrong = create("relation", mh.tiny_conv4(), 3, feature_shape=(8, 7, 7))
    with pytest.raises(ValueError, match=r"backbone gives 16 features .* expects 392"):
        wrong.predict(batch.support_x, batch.support_y, batch.query_x)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 28, 28\)"):
        create("relation", mh.tiny_conv4(), 3)
    with pytest.raises(ValueError, match=r"'feature_shape' must be \(C, H, W\)"):
        create("relation", mh.tiny_conv4(), 3, feature_shape=(16, 7))
    with pytest.raises(ValueError, match="'loss' must be one of"):
        create("relation", mh.tiny_conv4(), 3, embedding_dim=16, loss="bce")


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = make(CONFIGS[0].values[0]).adapt(batch.support_x[0], batch.support_y[0])
    mh.check_exportable(adapted, batch.query_x[0])


def test_learns_on_blood_cells():
    result = mh.train_and_evaluate(make(CONFIGS[0].values[0]), shots=5, steps=40)
    print(result)
    result.check(ways=3, seen_gain=0.1)
