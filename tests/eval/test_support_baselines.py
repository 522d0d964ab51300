"""Support-set baselines (logistic regression, random forest, k-NN): they learn from one
episode's support set of real data, are seeded, keep the episode's class order and refuse
bad input with messages that name the argument."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medmeta.data import load
from medmeta.eval.support_baselines import BASELINES, baseline_scores, make_baseline

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def khan():
    """Small round blue cell tumours (4 classes, 83 expression profiles of 2308 genes)."""
    ds = load("khan")
    return np.asarray(ds.x, dtype=np.float64), np.asarray(ds.labels)


def _episode(x, labels, shots, seed):
    """A 4-way episode: ``shots`` support profiles per class, the rest as queries."""
    rng = np.random.default_rng(seed)
    support, query = [], []
    for c in range(4):
        idx = rng.permutation(np.flatnonzero(labels == c))
        support.append(idx[:shots])
        query.append(idx[shots:])
    s, q = np.concatenate(support), np.concatenate(query)
    return x[s], labels[s], x[q], labels[q]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_learn_from_a_real_support_set(khan, name):
    """Tumour type from 3 profiles per class: far above the 25% chance of 4 classes over 5
    seeded episodes (measured: logistic 0.72, random forest 0.72, k-NN 0.64; the smallest
    class, BL, has 11 profiles)."""
    accuracies = []
    for seed in range(5):
        sx, sy, qx, qy = _episode(*khan, shots=3, seed=seed)
        probs = baseline_scores(name, sx, sy, qx, seed=seed)
        assert probs.shape == (len(qy), 4)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
        accuracies.append((probs.argmax(1) == qy).mean())
    assert np.mean(accuracies) > 0.25 + 0.3, accuracies


def test_columns_follow_the_episode_labels(khan):
    sx, sy, qx, _ = _episode(*khan, shots=3, seed=0)
    probs = baseline_scores("logistic", sx, sy, qx, seed=0)
    relabel = np.array([2, 0, 3, 1])  # the same task with permuted episode labels
    permuted = baseline_scores("logistic", sx, relabel[sy], qx, seed=0)
    np.testing.assert_allclose(permuted[:, relabel], probs, atol=1e-6)


def test_seeded_random_forest_and_tensor_input(khan):
    sx, sy, qx, _ = _episode(*khan, shots=3, seed=1)
    a = baseline_scores("random_forest", sx, sy, qx, seed=7)
    b = baseline_scores(
        "random_forest", torch.as_tensor(sx), torch.as_tensor(sy), torch.as_tensor(qx), seed=7
    )
    c = baseline_scores("random_forest", sx, sy, qx, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # the seed drives the bootstrap and feature draws
    forest = make_baseline("random_forest", 7, n_estimators=10)
    assert forest.n_estimators == 10 and forest.random_state == 7


def test_knn_never_asks_for_more_neighbours_than_support_examples(khan):
    sx, sy, qx, _ = _episode(*khan, shots=1, seed=2)  # 4 support profiles, default k = 5
    assert baseline_scores("knn", sx, sy, qx, seed=0).shape == (len(qx), 4)
    assert make_baseline("knn", 0, n_support=4).n_neighbors == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "svm"}, r"unknown baseline 'svm'; choose one of \['knn', 'logistic'"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"support_x": np.zeros((4, 3, 1))}, r"support_x must be a non-empty \[n, F\]"),
        ({"query_x": np.zeros((2, 5))}, "support_x has 3 features but query_x has 5"),
        ({"support_y": np.array([0, 1, 1])}, r"support_y must be \[S\] = \[4\] labels"),
        ({"support_y": np.array([0.0, 1, 0, 1])}, "support_y must hold integer episode labels"),
        (
            {"support_y": np.array([0, 2, 0, 2])},
            r"every label 0..N-1 with N >= 2, got counts \[2, 0, 2\]",
        ),
        ({"support_y": np.zeros(4, np.int64)}, "every label 0..N-1 with N >= 2"),
        ({"support_x": np.full((4, 3), np.nan)}, "support_x holds NaN or inf"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {
        "name": "logistic",
        "support_x": np.eye(4, 3),
        "support_y": np.array([0, 1, 0, 1]),
        "query_x": np.ones((2, 3)),
        "seed": 0,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        baseline_scores(args.pop("name"), **args)


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install \"medmeta\[baselines\]\""):
        make_baseline("logistic", 0)
