"""Metrics and calibration against hand-computed examples and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmeta.eval import metrics as M
from medmeta.eval.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature_logits,
    nll,
    reliability,
    softmax,
)


def test_mean_ci95_formula():
    mean, ci = M.mean_ci95(np.array([0.0, 1.0, 0.0, 1.0]))
    assert mean == 0.5
    assert ci == pytest.approx(1.96 * 0.5 / 2.0)  # population std 0.5, sqrt(4) = 2
    assert M.mean_ci95(np.array([0.7]))[1] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        M.mean_ci95(np.array([]))


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    # recalls 1/2, 1, 2/3
    assert M.balanced_accuracy(cm) == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    # a class without true examples is left out of the balanced accuracy
    assert M.balanced_accuracy(np.array([[3, 1], [0, 0]])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_midranks_with_ties():
    np.testing.assert_array_equal(M.midranks(np.array([0.1, 0.5, 0.5, 0.9])), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(M.midranks(np.array([3.0, 1.0, 2.0])), [3, 1, 2])
    np.testing.assert_array_equal(M.midranks(np.full(4, 7.0)), [2.5] * 4)
    rows = M.midranks(np.array([[2.0, 2.0, 1.0, 2.0], [0.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(rows, [[3, 3, 1, 3], [1.5, 3.5, 3.5, 1.5]])


def _auroc_pairs(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal), over all pairs."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_auroc_known_rankings():
    # the classic example: 3 of the 4 positive-negative pairs are ordered correctly
    assert M.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    # perfect, reversed
    assert M.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert M.auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1], bool)) == 0.0
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert M.auroc(np.array([0.2, 0.6, 0.6, 0.9]), np.array([0, 1, 0, 1], bool)) == 0.875
    # all tied: 0.5
    assert M.auroc(np.full(4, 0.3), np.array([0, 1, 0, 1], bool)) == 0.5
    # undefined without positives or negatives
    assert math.isnan(M.auroc(np.array([0.1, 0.2]), np.array([1, 1], bool)))


def test_auroc_matches_pair_counting_on_random_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(20, 30)).astype(float)  # many ties
    positive = rng.random((20, 30)) < 0.4
    got = M.auroc(scores, positive)
    want = [_auroc_pairs(s, p) for s, p in zip(scores, positive, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_episode_macro_auroc_and_f1():
    # one episode, 3 ways, 2 queries per class
    y = np.array([[0, 0, 1, 1, 2, 2]])
    probs = np.array(
        [
            [
                [0.8, 0.1, 0.1],
                [0.4, 0.5, 0.1],  # class 0 predicted as 1
                [0.1, 0.8, 0.1],
                [0.2, 0.7, 0.1],
                [0.1, 0.1, 0.8],
                [0.3, 0.1, 0.6],
            ]
        ]
    )
    # OvR class 0: positives 0.8, 0.4 vs negatives 0.1 0.2 0.1 0.3 -> all ordered: 1
    # class 1: positives 0.8, 0.7 vs negatives 0.1 0.5 0.1 0.1 -> 1
    # class 2: positives 0.8, 0.6 vs negatives 0.1 0.1 0.1 0.1 -> 1
    np.testing.assert_allclose(M.episode_macro_auroc(probs, y), [1.0])
    probs2 = probs.copy()
    probs2[0, 1] = [0.05, 0.9, 0.05]  # class 0 positive now below negatives 0.1, 0.1, 0.3
    # class 0: 0.8 beats all 4; 0.05 beats none -> 4/8; class 1: 0.8/0.7 vs 0.1, 0.9, 0.1, 0.1
    # -> (3 + 3)/8; class 2: 1
    np.testing.assert_allclose(M.episode_macro_auroc(probs2, y), [(0.5 + 0.75 + 1.0) / 3])

    pred = probs.argmax(-1)  # [0, 1, 1, 1, 2, 2]
    # F1: class 0: 2*1/(2+0+1) = 2/3; class 1: 2*2/(4+1+0) = 4/5; class 2: 1
    np.testing.assert_allclose(M.episode_macro_f1(pred, y, 3), [(2 / 3 + 4 / 5 + 1) / 3])


def test_class_counts_pool_only_episodes_with_the_class():
    # 2 episodes, 2-way, 2 queries per class; dataset classes 0..2
    classes = np.array([[0, 1], [2, 0]])
    y = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 1, 1]])
    c = M.class_counts(pred, y, classes, 3)
    # class 0: episode 1 label 0 (TP 1, FN 1, FP 0, TN 2); episode 2 label 1 (TP 2, FN 0,
    # FP 1, TN 1)
    np.testing.assert_array_equal([c.tp[0], c.fn[0], c.fp[0], c.tn[0]], [3, 1, 1, 3])
    # class 1 (only in episode 1, label 1): TP 2, FN 0, FP 1, TN 1
    np.testing.assert_array_equal([c.tp[1], c.fn[1], c.fp[1], c.tn[1]], [2, 0, 1, 1])
    # class 2 (only in episode 2, label 0): TP 1, FN 1, FP 0, TN 2; episode 1 does not count
    np.testing.assert_array_equal([c.tp[2], c.fn[2], c.fp[2], c.tn[2]], [1, 1, 0, 2])
    np.testing.assert_allclose(c.sensitivity, [3 / 4, 1.0, 1 / 2])
    np.testing.assert_allclose(c.specificity, [3 / 4, 1 / 2, 1.0])
    np.testing.assert_array_equal(c.support, [4, 2, 2])


def test_ece_known_case():
    conf = np.array([0.9, 0.9, 0.65, 0.65])
    correct = np.array([1, 0, 1, 1], bool)
    # bins of width 1/15: 0.9 in (0.867, 0.933] (bin 13), 0.65 in (0.6, 0.667] (bin 9)
    # ECE = 2/4 |0.5 - 0.9| + 2/4 |1 - 0.65| = 0.2 + 0.175
    rel = reliability(conf, correct, bins=15)
    assert rel.ece == pytest.approx(0.375)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.375)
    assert rel.count.tolist() == [0] * 9 + [2, 0, 0, 0, 2, 0]
    assert rel.accuracy[13] == 0.5 and rel.confidence[9] == pytest.approx(0.65)
    assert np.isnan(rel.accuracy[0])
    d = rel.to_dict()
    assert d["accuracy"][0] is None and len(d["edges"]) == 16
    # perfectly calibrated: ECE 0; edge values land in the first / last bin
    assert reliability(np.array([1.0, 1.0]), np.array([1, 1], bool)).ece == 0.0
    assert reliability(np.array([0.0, 1.0]), np.array([0, 1], bool), bins=4).count.tolist() == [
        1,
        0,
        0,
        1,
    ]


def test_nll_and_brier_by_hand():
    assert nll(np.array([[0.0, 0.0]]), np.array([0])) == pytest.approx(math.log(2))
    assert nll(np.array([[2.0, 0.0, 0.0]]), np.array([0])) == pytest.approx(
        -math.log(math.exp(2) / (math.exp(2) + 2))
    )
    assert brier_score(np.array([[1.0, 0.0]]), np.array([1])) == 2.0
    assert brier_score(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([0, 0])) == pytest.approx(0.25)
    np.testing.assert_allclose(softmax(np.array([[0.0, math.log(3.0)]])), [[0.25, 0.75]])


def test_temperature_recovers_the_true_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 5)) * 1.5
    p = softmax(z)
    y = (p.cumsum(-1) > rng.random((20000, 1))).argmax(-1)  # labels drawn from softmax(z)
    t = fit_temperature_logits(3.0 * z, y)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll(3.0 * z / t, y) < nll(3.0 * z, y)
    assert fit_temperature_logits(z / 2.0, y) == pytest.approx(0.5, rel=0.05)
