"""ROC-AUC, AUPRC (average precision) and ΔAUPRC against scikit-learn, brute-force pair
counting and a threshold-by-threshold float64 reference, with ties, batches and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medmeta.eval.ranking_metrics import average_precision, delta_auprc, roc_auc


def _pairs_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(equal), over all pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def _threshold_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision from its definition: for each distinct threshold t (high to low),
    precision and recall of "score >= t", summed as sum (R_n - R_{n-1}) P_n."""
    total = labels.sum()
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        chosen = scores >= t
        tp = float(labels[chosen].sum())
        precision, recall = tp / chosen.sum(), tp / total
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def _random_tasks(seed: int, rows: int, length: int, rate: float, ties: bool):
    rng = np.random.default_rng(seed)
    labels = (rng.random((rows, length)) < rate).astype(np.int64)
    labels[:, 0], labels[:, 1] = 1, 0  # every row has both classes
    scores = rng.normal(size=(rows, length)) + 0.8 * labels
    if ties:
        scores = np.round(scores, 1)  # many tied scores, across the classes too
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_against_brute_force_references(ties):
    scores, labels = _random_tasks(0, 40, 57, 0.2, ties)
    auc = roc_auc(scores, labels)
    ap = average_precision(scores, labels)
    assert auc.shape == ap.shape == (40,)
    for r in range(40):
        assert auc[r] == pytest.approx(_pairs_auc(scores[r], labels[r]), abs=1e-12)
        assert ap[r] == pytest.approx(_threshold_ap(scores[r], labels[r]), abs=1e-12)
    np.testing.assert_allclose(delta_auprc(scores, labels), ap - labels.mean(1), atol=1e-15)


@pytest.mark.parametrize("ties", [False, True])
def test_against_scikit_learn(ties):
    metrics = pytest.importorskip("sklearn.metrics")
    scores, labels = _random_tasks(1, 25, 300, 0.07, ties)  # rare actives, as in screening
    for r in range(25):
        assert roc_auc(scores[r], labels[r]) == pytest.approx(
            metrics.roc_auc_score(labels[r], scores[r]), abs=1e-12
        )
        assert average_precision(scores[r], labels[r]) == pytest.approx(
            metrics.average_precision_score(labels[r], scores[r]), abs=1e-12
        )


def test_hand_computed_examples():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # scikit-learn's documented example: AP = (1/2)(1/1) + (1/2)(2/3) = 0.8333...
    assert average_precision(scores, labels) == pytest.approx(5 / 6)
    assert roc_auc(scores, labels) == 0.75
    assert delta_auprc(scores, labels) == pytest.approx(5 / 6 - 0.5)
    # all scores tied: one threshold, precision = the active fraction
    assert average_precision(np.zeros(5), np.array([1, 0, 0, 1, 0])) == pytest.approx(0.4)
    assert delta_auprc(np.zeros(5), np.array([1, 0, 0, 1, 0])) == pytest.approx(0.0)
    # perfect ranking: AP 1, ΔAUPRC = 1 - fraction; reversed: AUC 0
    y = np.array([1, 1, 0, 0, 0])
    assert average_precision(-np.arange(5.0), y) == 1.0
    assert delta_auprc(-np.arange(5.0), y) == pytest.approx(0.6)
    assert roc_auc(np.arange(5.0), y) == 0.0


def test_random_rankings_score_near_zero_delta_auprc():
    """A random ranking's AUPRC tracks the active rate; ΔAUPRC removes it (near 0 once a task
    has many actives; with few, a random AP sits a little above the rate)."""
    rng = np.random.default_rng(3)
    for rate in (0.1, 0.3):
        labels = (rng.random((1000, 1000)) < rate).astype(np.int64)
        scores = rng.random((1000, 1000))
        assert abs(average_precision(scores, labels).mean() - rate) < 0.01
        assert abs(delta_auprc(scores, labels).mean()) < 0.01
        assert abs(roc_auc(scores, labels).mean() - 0.5) < 0.005


def test_bool_labels_rows_and_leading_axes():
    scores, labels = _random_tasks(2, 6, 30, 0.3, True)
    flat = average_precision(scores, labels)
    nested = average_precision(scores.reshape(2, 3, 30), labels.reshape(2, 3, 30).astype(bool))
    np.testing.assert_array_equal(nested.reshape(-1), flat)
    assert isinstance(average_precision(scores[0], labels[0]), float)


def test_rows_without_positives_or_negatives_are_nan():
    scores = np.array([[0.2, 0.1, 0.5], [0.3, 0.2, 0.9]])
    labels = np.array([[0, 0, 0], [1, 1, 1]])
    ap, auc = average_precision(scores, labels), roc_auc(scores, labels)
    assert np.isnan(ap[0]) and ap[1] == 1.0
    assert np.isnan(auc).all()
    assert np.isnan(delta_auprc(scores[0], labels[0]))


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.zeros(3), np.zeros(4), r"scores \[3\] and labels \[4\] differ in shape"),
        (np.array([0.1, np.nan]), np.array([0, 1]), "scores must be finite; 1 are NaN"),
        (np.array([0.1, 0.2]), np.array([0, 2]), "labels must be 0/1"),
        (np.zeros((2, 0)), np.zeros((2, 0)), "L >= 1"),
    ],
)
def test_bad_input_is_refused(scores, labels, match):
    for fn in (roc_auc, average_precision, delta_auprc):
        with pytest.raises(ValueError, match=match):
            fn(scores, labels)
