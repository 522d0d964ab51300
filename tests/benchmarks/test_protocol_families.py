"""The expression / signal / table protocols with tiny settings: every method and baseline
scores the same seeded episodes, the baselines see the support set only, and ``--family``
of the protocols suite dispatches to them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import protocol_families as P
from benchmarks import protocols

pytest.importorskip("sklearn")


def test_tiny_table_run_through_the_protocols_suite(tmp_path: Path, keep_threads) -> None:
    argv = ["--family", "tables", "--steps", "2", "--episodes", "4", "--out", str(tmp_path)]
    assert protocols.main(argv) == 0
    report = json.loads((tmp_path / "families-cpu-tables.json").read_text())
    rows = report["results"]
    methods = {r["method"] for r in rows}
    assert methods == {"protonet", "maml", "logistic", "knn", "random_forest"}
    assert {r["shots"] for r in rows} == {1, 5} and all(r["episodes"] == 4 for r in rows)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["chance"] == 1 / 3 for r in rows)
    assert (
        "| tables | thyroid | protonet | meta-learner | 3 |"
        in (tmp_path / "families-cpu-tables.md").read_text()
    )


def test_unknown_family_is_a_usage_error(capsys) -> None:
    assert protocols.main(["--family", "images"]) == 2
    assert "--family takes one of" in capsys.readouterr().err


def test_episodes_are_seeded_and_hold_only_test_classes() -> None:
    labels = np.repeat(np.arange(6), 20)
    protocol = P.PROTOCOLS["tables"]
    s1, q1 = P._episodes(labels, [3, 4, 5], protocol, 5, episodes=6, seed=1)
    s2, q2 = P._episodes(labels, [3, 4, 5], protocol, 5, episodes=6, seed=1)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(q1, q2)
    assert s1.shape == (6, 15) and q1.shape == (6, 30)
    assert set(labels[s1].ravel()) <= {3, 4, 5}
    for s, q in zip(s1, q1, strict=True):
        assert not set(s) & set(q)  # no example is both support and query
        ys, _ = P._episode_labels(protocol, 5)
        assert len(set(labels[s[ys == 0]])) == 1  # class-major support


def test_baseline_standardisation_uses_the_support_only() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(40, 3))
    s, q = np.arange(10), np.arange(10, 40)
    xs, xq = P._standardised(raw, s, q)
    np.testing.assert_allclose(xs.mean(0), 0, atol=1e-12)
    moved = raw.copy()
    moved[q] += 100.0  # the queries change: the support's statistics must not
    xs2, xq2 = P._standardised(moved, s, q)
    np.testing.assert_allclose(xs2, xs)
    np.testing.assert_allclose(xq2 - xq, np.broadcast_to(100.0 / raw[s].std(0), xq.shape))


def test_signal_baselines_read_a_phase_invariant_spectrum() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(12, 1, 1000))
    shifted = raw.copy()
    shifted[6:] = np.roll(raw[6:], 137, axis=-1)  # the queries' waveforms start elsewhere
    s, q = np.arange(6), np.arange(6, 12)
    want = P._spectrum_features(raw, s, q)
    got = P._spectrum_features(shifted, s, q)
    assert got[1].shape == (6, P.SPECTRUM_BINS)
    np.testing.assert_allclose(got[1], want[1], atol=1e-9)
    assert not np.allclose(raw[6:], shifted[6:])
