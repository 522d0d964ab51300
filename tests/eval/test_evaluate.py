"""evaluate(): consistency of the metrics on real episodes, determinism, temperature
scaling, errors and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medmeta.data import DataError, load
from medmeta.eval import (
    collect_predictions,
    evaluate,
    fit_temperature,
    plots,
)
from medmeta.nn import Conv4
from train.standin import CentroidLearner, mlp_learner, pbmc_splits

TASK = {"ways": 3, "shots": 3, "queries": 5}


@pytest.fixture(scope="module")
def train_part():
    return pbmc_splits()[0]  # 6 classes


def test_metrics_are_consistent(train_part):
    learner = mlp_learner()
    r = evaluate(learner, train_part, **TASK, episodes=40, seed=3, batch_size=8)
    E, N, Q = 40, 3, 5
    assert r.episodes == E and r.ways == N and r.seed == 3
    assert r.confusion.sum() == E * N * Q
    # every episode has N*Q queries, so the pooled accuracy equals the mean over episodes
    assert np.trace(r.confusion) / r.confusion.sum() == pytest.approx(r.accuracy)
    assert r.accuracy == pytest.approx(r.episode_accuracy.mean())
    assert r.ci95 == pytest.approx(1.96 * r.episode_accuracy.std() / np.sqrt(E))
    # per-class sensitivity is the confusion row's diagonal share; specificity in [0, 1]
    np.testing.assert_allclose(r.sensitivity, np.diag(r.confusion) / r.confusion.sum(1))
    np.testing.assert_array_equal(r.support, r.confusion.sum(1))
    assert r.balanced_accuracy == pytest.approx(np.mean(r.sensitivity))
    assert np.all((r.specificity >= 0) & (r.specificity <= 1))
    assert r.class_names == [train_part.class_names[i] for i in r.class_ids]
    assert len(r.class_names) == 6  # all training classes are drawn in 40 episodes
    assert 0 <= r.auroc <= 1 and 0 <= r.macro_f1 <= 1 and 0 <= r.ece <= 1
    assert r.reliability.count.sum() == E * N * Q
    assert r.accuracy > 1 / N  # even an untrained embedding separates cell types
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["per_class"][r.class_names[0]]["support"] == int(r.support[0])
    assert "accuracy" in r.summary()


def test_same_seed_same_numbers_other_seed_other_episodes(train_part):
    learner = mlp_learner()
    a = evaluate(learner, train_part, **TASK, episodes=20, seed=5, batch_size=4)
    b = evaluate(learner, train_part, **TASK, episodes=20, seed=5, batch_size=4)
    assert a.to_dict() == b.to_dict()
    # the episodes do not depend on the batch size
    p1 = collect_predictions(learner, train_part, **TASK, episodes=7, seed=5, batch_size=3)
    p2 = collect_predictions(learner, train_part, **TASK, episodes=7, seed=5, batch_size=7)
    torch.testing.assert_close(p1.logits, p2.logits)
    assert torch.equal(p1.classes, p2.classes)
    p3 = collect_predictions(learner, train_part, **TASK, episodes=7, seed=6, batch_size=7)
    assert not torch.equal(p1.classes, p3.classes)
    c = evaluate(learner, train_part, **TASK, episodes=20, seed=6, batch_size=4)
    assert not np.array_equal(a.episode_accuracy, c.episode_accuracy)


def test_temperature_scaling_reduces_ece():
    train = pbmc_splits()[0]
    learner = mlp_learner(scale=5.0)  # logits x 5: over-confident, same predictions
    t = fit_temperature(learner, train, **TASK, episodes=60, seed=1)
    assert t > 1.5
    before = evaluate(learner, train, **TASK, episodes=60, seed=2)
    after = evaluate(learner, train, **TASK, episodes=60, seed=2, temperature=t)
    assert after.accuracy == before.accuracy  # scaling does not change the argmax
    np.testing.assert_array_equal(after.confusion, before.confusion)
    assert after.ece < 0.6 * before.ece
    assert after.nll < before.nll and after.brier < before.brier
    assert after.temperature == t and after.to_dict()["temperature"] == t


def test_bad_arguments(train_part):
    learner = mlp_learner()
    with pytest.raises(DataError, match="7-way episodes need 7 classes"):
        evaluate(learner, train_part, ways=7, shots=3, queries=5, episodes=5)
    with pytest.raises(DataError, match="fewer than shots"):
        evaluate(learner, train_part, ways=3, shots=50, queries=50, episodes=5)
    with pytest.raises(ValueError, match="episodes"):
        evaluate(learner, train_part, **TASK, episodes=0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(learner, train_part, **TASK, episodes=2, batch_size=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            evaluate(learner, train_part, **TASK, episodes=2, temperature=bad)


def test_images_with_dataset_class_names_and_plots(tmp_path):
    ds = load("pbc_blood")
    torch.manual_seed(0)
    learner = CentroidLearner(Conv4(3, hidden=8), ways=4)
    r = evaluate(learner, ds, ways=4, shots=1, queries=2, episodes=12, seed=0, batch_size=6)
    assert set(r.class_names) <= set(ds.class_names) and "basophil" in ds.class_names
    assert r.confusion.shape == (len(r.class_names),) * 2
    paths = [
        plots.plot_confusion_matrix(r, tmp_path / "confusion.png"),
        plots.plot_reliability_diagram(r, tmp_path / "reliability.png"),
        plots.plot_per_class(r, tmp_path / "per_class.png"),
    ]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, p


def test_auroc_and_per_class_rates_carry_cis_that_shrink_with_episodes(train_part):
    """AUROC's CI is over episodes like the accuracy's; per-class sensitivity/specificity get
    bootstrap intervals around the pooled value, narrower with 4x the episodes."""
    from medmeta.eval import metrics as M

    learner = mlp_learner()
    few = evaluate(learner, train_part, **TASK, episodes=30, seed=5)
    many = evaluate(learner, train_part, **TASK, episodes=120, seed=5)
    preds = collect_predictions(learner, train_part, **TASK, episodes=30, seed=5)
    probs = torch.softmax(preds.logits.double(), -1).numpy()
    per_episode = M.episode_macro_auroc(probs, preds.labels.numpy())
    assert few.auroc_ci95 == pytest.approx(M.mean_ci95(per_episode[np.isfinite(per_episode)])[1])
    assert 0 < many.auroc_ci95 < few.auroc_ci95
    for r in (few, many):
        for name, stats in r.per_class.items():
            for rate in ("sensitivity", "specificity"):
                low, high = stats[f"{rate}_ci"]
                assert low <= stats[rate] <= high, (name, rate)
    width = lambda r: np.nanmean(r.sensitivity_ci[:, 1] - r.sensitivity_ci[:, 0])  # noqa: E731
    assert width(many) < 0.75 * width(few)
    assert json.loads(json.dumps(few.to_dict()))["auroc_ci95"] == pytest.approx(few.auroc_ci95)
    # n is the distinct images, not the query draws (which repeat them)
    assert few.distinct_images == len(train_part) == int(few.images.sum())
    assert int(many.support.sum()) == 120 * 3 * 5 and many.distinct_images == len(train_part)
