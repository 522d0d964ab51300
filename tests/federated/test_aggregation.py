"""The server strategy without a federation: Flower messages built by hand, aggregated by
:class:`MetaFedStrategy`, compared with the written-out formulas (FedAvg weighted mean,
Reptile's annealed server step, clipping and seeded noise) and with the left-out sites
named in the log."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord

from federated.fakes import Grid, reply, toy_plan
from medmeta.federated import privacy
from medmeta.federated.strategy import MetaFedStrategy
from medmeta.federated.weights import from_record, to_record

NAMES = {11: "a", 22: "b", 33: "c"}


pytestmark = pytest.mark.usefixtures("task_identity")  # messages built outside a federation


def _global(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,)),
            "bn.running_var": rng.uniform(0.5, 1.5, size=(4,))}  # fmt: skip


def _round(strategy, server_round, theta, deltas, examples=None):
    """Configure a round on nodes 11, 22, 33 and aggregate ``deltas`` (node -> delta or
    None for a failed site; a node absent from ``deltas`` sends nothing)."""
    grid = Grid(list(NAMES))
    sent = list(strategy.configure_train(server_round, to_record(theta), ConfigRecord(), grid))
    by_node = {m.metadata.dst_node_id: m for m in sent}
    examples = examples or {}
    replies = [reply(by_node[n], d, examples.get(n, 10)) for n, d in deltas.items() if n in by_node]
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return from_record(arrays), metrics


def _f32(w):
    return {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in w.items()}


def test_fedavg_is_the_weighted_mean_of_the_local_models() -> None:
    rng = np.random.default_rng(0)
    theta = _f32(_global(rng))
    deltas = {n: _f32({k: 0.1 * rng.normal(size=v.shape) for k, v in theta.items()}) for n in NAMES}
    n_ex = {11: 100, 22: 300, 33: 600}
    strategy = MetaFedStrategy(toy_plan(algorithm="fedavg"), NAMES)
    new, metrics = _round(strategy, 1, theta, deltas, n_ex)
    total = sum(n_ex.values())
    for k in theta:  # written out: sum_i n_i (theta + delta_i) / sum_i n_i
        expected = sum(n_ex[n] * (theta[k] + deltas[n][k]) for n in NAMES) / total
        if k.endswith("running_var"):
            expected = np.maximum(expected, 1e-5)
        np.testing.assert_allclose(new[k], expected, rtol=1e-6, atol=1e-7)
    assert metrics["sites"] == 3
    assert strategy.history[0]["sites"] == ["a", "b", "c"] and strategy.history[0]["left_out"] == []


def test_reptile_server_step_is_annealed_linearly() -> None:
    rng = np.random.default_rng(1)
    plan = toy_plan(algorithm="reptile", server_lr=0.8, rounds=4)
    theta = _f32(_global(rng))
    deltas = {n: _f32({k: rng.normal(size=v.shape) for k, v in theta.items()}) for n in NAMES}
    mean = {k: sum(deltas[n][k] for n in NAMES) / 3 for k in theta}  # equal weights
    for server_round, eta in ((1, 0.8), (3, 0.8 * (1 - 2 / 4)), (4, 0.8 * (1 - 3 / 4))):
        strategy = MetaFedStrategy(plan, NAMES)
        new, _ = _round(strategy, server_round, theta, deltas)
        np.testing.assert_allclose(new["w"], theta["w"] + eta * mean["w"], rtol=1e-6, atol=1e-7)
        assert strategy.history[0]["server_step"] == pytest.approx(eta)
    assert plan.server_step(1) == 0.8 and toy_plan(algorithm="fedavg").server_step(3) == 1.0


def test_nan_and_wrong_shape_updates_are_left_out_and_named(caplog) -> None:
    rng = np.random.default_rng(2)
    theta = _f32(_global(rng))
    good = _f32({k: 0.1 * rng.normal(size=v.shape) for k, v in theta.items()})
    nan = {**good, "b": np.array([0.0, np.nan, 0.0, np.inf])}
    wrong = {**good, "w": np.zeros((4, 4))}
    strategy = MetaFedStrategy(toy_plan(algorithm="fedavg"), NAMES)
    with caplog.at_level(logging.WARNING, logger="medmeta.federated"):
        new, metrics = _round(strategy, 2, theta, {11: good, 22: nan, 33: wrong})
    np.testing.assert_allclose(new["w"], theta["w"] + good["w"], rtol=1e-6)  # only site a
    left = {r["site"]: r["reason"] for r in strategy.history[0]["left_out"]}
    assert left == {
        "b": "2 NaN/inf value(s) in b",
        "c": "wrong shape: w is [4, 4], expected [3, 4]",
    }
    logged = [r.getMessage() for r in caplog.records]
    assert "round 2: left out site b: 2 NaN/inf value(s) in b" in logged
    assert any(m.startswith("round 2: left out site c: wrong shape") for m in logged)
    assert metrics["sites"] == 1


def test_failed_and_silent_sites_are_left_out_and_the_round_goes_on(caplog) -> None:
    rng = np.random.default_rng(3)
    theta = _f32(_global(rng))
    good = _f32({k: 0.1 * rng.normal(size=v.shape) for k, v in theta.items()})
    strategy = MetaFedStrategy(toy_plan(algorithm="fedavg"), NAMES)
    with caplog.at_level(logging.WARNING, logger="medmeta.federated"):
        new, _ = _round(strategy, 1, theta, {11: good, 22: None})  # b fails, c never answers
    np.testing.assert_allclose(new["b"], theta["b"] + good["b"], rtol=1e-6)
    left = {r["site"]: r["reason"] for r in strategy.history[0]["left_out"]}
    assert left["b"] == "failed: site crashed: out of memory"
    assert left["c"] == "no reply (dropped out or timed out)"
    assert sum("left out site c" in r.getMessage() for r in caplog.records) == 1
    # nothing usable: the global model is kept as it was
    kept, metrics = _round(MetaFedStrategy(toy_plan(), NAMES), 1, theta, {22: None})
    assert all(np.array_equal(kept[k], theta[k]) for k in theta) and metrics["sites"] == 0


def test_extra_or_missing_arrays_are_left_out() -> None:
    rng = np.random.default_rng(4)
    theta = _f32(_global(rng))
    good = _f32({k: 0.1 * rng.normal(size=v.shape) for k, v in theta.items()})
    strategy = MetaFedStrategy(toy_plan(algorithm="fedavg"), NAMES)
    missing = {k: v for k, v in good.items() if k != "b"}
    _round(strategy, 1, theta, {11: good, 22: missing, 33: {**good, "head": np.zeros(2)}})
    left = {r["site"]: r["reason"] for r in strategy.history[0]["left_out"]}
    assert left == {"b": "wrong arrays: missing ['b'], unexpected []",
                    "c": "wrong arrays: missing [], unexpected ['head']"}  # fmt: skip


def test_private_aggregate_clips_to_c_and_adds_seeded_noise() -> None:
    rng = np.random.default_rng(5)
    theta = _f32({"w": rng.normal(size=(50, 40))})
    deltas = {
        n: _f32({"w": s * rng.normal(size=(50, 40))})
        for n, s in zip(NAMES, (0.001, 1, 5), strict=True)
    }
    clip = 0.5
    # no noise: exactly the sum of the clipped updates over the sites per round
    strategy = MetaFedStrategy(toy_plan(algorithm="fedavg", dp_clip=clip, dp_noise=0.0), NAMES)
    new, _ = _round(strategy, 1, theta, deltas, {11: 1, 22: 10, 33: 1000})
    clipped = [privacy.clip(deltas[n], clip)[0]["w"] for n in NAMES]
    assert all(np.linalg.norm(c) <= clip * (1 + 1e-12) for c in clipped)
    np.testing.assert_allclose(new["w"], theta["w"] + sum(clipped) / 3, rtol=1e-6, atol=1e-7)
    assert np.linalg.norm(new["w"] - theta["w"]) <= clip + 1e-6  # at most C per site, averaged
    assert [privacy.clip(deltas[n], clip)[1] > clip for n in NAMES] == [False, True, True]
    entry = strategy.history[0]  # released with the model: nothing about a single site
    assert "site_norms" not in entry and entry["loss"] is None and entry["accuracy"] is None
    assert entry["noise_std"] == 0.0 and entry["sites"] == ["a", "b", "c"]
    # noise N(0, (sigma C)^2) on the sum: seeded by (seed, round), std sigma C / 3 on the mean
    plan = toy_plan(algorithm="fedavg", dp_clip=clip, dp_noise=2.0, seed=9)
    first, _ = _round(MetaFedStrategy(plan, NAMES), 1, theta, deltas)
    again, _ = _round(MetaFedStrategy(plan, NAMES), 1, theta, deltas)
    other, _ = _round(MetaFedStrategy(plan, NAMES), 2, theta, deltas)
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.allclose(first["w"], other["w"])
    noise = first["w"] - new["w"]
    assert np.std(noise) == pytest.approx(2.0 * clip / 3, rel=0.05)
    assert abs(np.mean(noise)) < 4 * (2.0 * clip / 3) / np.sqrt(noise.size)


def test_epsilon_is_opacus_rdp_accountant() -> None:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=1.3, sample_rate=2 / 3)
    assert privacy.epsilon(1.3, 2 / 3, 30, 1e-5) == accountant.get_epsilon(1e-5)
    # more noise, fewer rounds or a smaller sample rate spend less
    assert privacy.epsilon(2.0, 2 / 3, 30, 1e-5) < privacy.epsilon(1.3, 2 / 3, 30, 1e-5)
    assert privacy.epsilon(1.3, 1 / 3, 30, 1e-5) < privacy.epsilon(1.3, 2 / 3, 30, 1e-5)
    assert privacy.epsilon(0.0, 1.0, 3, 1e-5) == float("inf")


def test_sampling_is_seeded_by_round_and_independent_of_node_ids() -> None:
    plan = toy_plan(("a", "b", "c", "d"), sites_per_round=2, seed=3)
    one = MetaFedStrategy(plan, {1: "a", 2: "b", 3: "c", 4: "d"})
    two = MetaFedStrategy(plan, {90: "d", 80: "c", 70: "b", 60: "a"})
    draws = []
    for r in range(1, 9):
        picked = [one.names[n] for n in one.sample(r, [1, 2, 3, 4])]
        assert picked == [two.names[n] for n in two.sample(r, [60, 70, 80, 90])]
        assert len(set(picked)) == 2
        draws.append(tuple(picked))
    assert len(set(draws)) > 1  # not the same pair every round
    assert plan.sample_rate == 0.5
