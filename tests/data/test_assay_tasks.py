"""Assay tasks on the real ToxCast and Tox21 tables: splits by provider group, the Tox21
hold-out, and 2-way K-shot episodes whose labels, sizes and exclusions are checked molecule
by molecule against the table."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from medmeta.data import DataError, load
from medmeta.data.assay_tasks import (
    TOX21_PREFIX,
    AssayEpisodeSampler,
    AssayTable,
    AssayTaskSet,
    tox21_holdout,
)


@pytest.fixture(scope="module")
def toxcast() -> AssayTable:
    return load("toxcast")


@pytest.fixture(scope="module")
def index_tasks(toxcast) -> AssayTaskSet:
    """ToxCast with each molecule's index as its only feature, so an episode's inputs say
    which molecules it drew; molecules 0-99 are marked unparsable."""
    parsed = np.ones(toxcast.n_molecules, bool)
    parsed[:100] = False
    return AssayTaskSet(toxcast, np.arange(toxcast.n_molecules)[:, None], parsed)


def _ids(x: torch.Tensor) -> np.ndarray:
    return x[..., 0].long().numpy()


def test_tables_load_as_documented(toxcast):
    assert (toxcast.n_molecules, toxcast.n_assays) == (8576, 617)
    assert toxcast.group_counts() == {
        "ATG": 146, "NVS": 139, "BSK": 115, "TOX21": 100, "APR": 43, "CLD": 19,
        "Tanguay": 18, "OT": 15, "CEETOX": 14, "NCCT": 5, "ACEA": 2, "NHEERL": 1,
    }  # fmt: skip
    assert abs(np.mean(~np.isnan(toxcast.labels)) - 0.29) < 0.005
    assert toxcast.actives().min() == 19 and toxcast.actives().max() == 1761
    assert toxcast.inactives().min() >= 19
    tox21 = load("tox21")
    assert (tox21.n_molecules, tox21.n_assays) == (7831, 12)
    assert tox21.group_counts() == {"NR": 7, "SR": 5}  # derived from the names
    assert tox21.meta["license"].startswith("US government work")


def test_tox21_holdout_removes_exactly_the_tox21_assays(toxcast):
    held = tox21_holdout(toxcast)
    assert held.n_assays == 517 and held.n_molecules == 8576
    assert not any(n.startswith(TOX21_PREFIX) for n in held.task_names)
    assert "TOX21" not in held.group_counts()
    np.testing.assert_array_equal(held.labels, toxcast.labels[:, toxcast.task_groups != "TOX21"])


def test_split_keeps_provider_groups_together(toxcast):
    held = tox21_holdout(toxcast)
    train, test = held.split_assays((0.8, 0.2), seed=0)
    assert set(train.task_groups).isdisjoint(test.task_groups)
    assert train.n_assays + test.n_assays == 517
    assert abs(test.n_assays - 0.2 * 517) <= 0.05 * 517
    assert sorted(train.task_names.tolist() + test.task_names.tolist()) == sorted(held.task_names)
    assert test.meta["groups"] == sorted(set(test.task_groups))
    again = held.split_assays((0.8, 0.2), seed=0)
    assert [p.meta["groups"] for p in again] == [train.meta["groups"], test.meta["groups"]]
    splits = {tuple(held.split_assays((0.8, 0.2), seed=s)[1].meta["groups"]) for s in range(6)}
    assert len(splits) > 1  # the seed matters
    three = held.split_assays((0.7, 0.1, 0.2), seed=1)
    assert sum(p.n_assays for p in three) == 517
    assert all(
        abs(p.n_assays - f * 517) <= 0.05 * 517 for p, f in zip(three, (0.7, 0.1, 0.2), strict=True)
    )


def test_explicit_group_split(toxcast):
    a, b = toxcast.split_assays(groups=[["ATG", "NVS"], ["BSK"]])
    assert (a.n_assays, b.n_assays) == (285, 115)
    with pytest.raises(DataError, match=r"groups: unknown groups \['XYZ'\]"):
        toxcast.split_assays(groups=[["ATG"], ["XYZ"]])
    with pytest.raises(DataError, match="groups: group lists must be disjoint"):
        toxcast.split_assays(groups=[["ATG"], ["ATG"]])
    with pytest.raises(DataError, match="fractions: cannot split 2 groups into 3 parts"):
        load("tox21").split_assays((0.5, 0.3, 0.2))
    with pytest.raises(DataError, match="fractions: must be positive shares"):
        toxcast.split_assays((0.8, -0.2))


def test_balanced_episodes_match_the_table(toxcast, index_tasks):
    K, Q, B = 8, 5, 16
    sampler = index_tasks.episode_sampler(2, K, Q, batch_size=B, generator=3)
    assert isinstance(sampler, AssayEpisodeSampler)
    for _ in range(5):
        b = sampler.sample()
        assert b.support_x.shape == (B, 2 * K, 1) and b.query_x.shape == (B, 2 * Q, 1)
        np.testing.assert_array_equal(b.support_y[0], [0] * K + [1] * K)
        np.testing.assert_array_equal(b.query_y[0], [0] * Q + [1] * Q)
        assays = AssayEpisodeSampler.assays(b).numpy()
        np.testing.assert_array_equal(b.classes.numpy(), np.stack([2 * assays, 2 * assays + 1], 1))
        for e in range(B):
            s, q = _ids(b.support_x[e]), _ids(b.query_x[e])
            col = toxcast.labels[:, assays[e]]
            np.testing.assert_array_equal(col[s], b.support_y[e].numpy())  # 1 = active
            np.testing.assert_array_equal(col[q], b.query_y[e].numpy())  # no NaN
            assert len(set(s) | set(q)) == 2 * (K + Q)  # distinct, support apart from query
            assert min(s.min(), q.min()) >= 100  # unparsable molecules never drawn
    assert sampler.class_names[2 * 5 + 1] == f"{toxcast.task_names[5]}:active"


def test_rest_queries_take_the_whole_assay_or_a_stratified_sample(toxcast, index_tasks):
    K, Q = 16, 3
    everything = index_tasks.episode_sampler(2, K, Q, generator=0, query="rest")
    act, inact = index_tasks.counts()
    for _ in range(6):
        b = everything.sample()
        a = int(AssayEpisodeSampler.assays(b)[0])
        q = _ids(b.query_x[0])
        assert len(q) == act[a] + inact[a] - 2 * K == b.queries
        assert int(b.query_y.sum()) == act[a] - K
        np.testing.assert_array_equal(toxcast.labels[q, a], b.query_y[0].numpy())
        assert len(set(q) | set(_ids(b.support_x[0]))) == len(q) + 2 * K
    capped = index_tasks.episode_sampler(2, K, Q, generator=0, query="rest", max_query=200)
    for _ in range(10):
        b = capped.sample()
        a = int(AssayEpisodeSampler.assays(b)[0])
        n_act = int(b.query_y.sum())
        left_act, left = act[a] - K, act[a] + inact[a] - 2 * K
        assert b.query_x.shape[1] == min(200, left)
        assert Q <= n_act and b.query_x.shape[1] - n_act >= Q
        if left > 200:  # the assay's active rate kept (to rounding, or Q per class)
            assert abs(n_act - max(Q, 200 * left_act / left)) <= 1
        assert (toxcast.labels[_ids(b.query_x[0]), a] == b.query_y[0].numpy()).all()


def test_eligibility_counts_only_tested_parsed_molecules(toxcast, index_tasks, caplog):
    act, inact = index_tasks.counts()
    usable = ~np.isnan(toxcast.labels[100:])
    np.testing.assert_array_equal(act, (toxcast.labels[100:] == 1).sum(0))
    np.testing.assert_array_equal(act + inact, usable.sum(0))
    assert index_tasks.n_unparsed == 100
    assert index_tasks.unparsed_cells == int((~np.isnan(toxcast.labels[:100])).sum())
    with caplog.at_level(logging.INFO, logger="medmeta.data.assay_tasks"):
        sampler = index_tasks.episode_sampler(2, 32, 16, batch_size=4, generator=0)
    need = (act >= 48) & (inact >= 48)
    np.testing.assert_array_equal(sampler.eligible.numpy(), np.flatnonzero(need))
    assert f"{617 - need.sum()} of 617 assays have fewer than 48" in caplog.text
    drawn = {int(a) for _ in range(30) for a in AssayEpisodeSampler.assays(sampler.sample())}
    assert drawn <= set(np.flatnonzero(need).tolist())


def test_unparsed_molecules_are_logged(toxcast, caplog):
    parsed = np.ones(toxcast.n_molecules, bool)
    parsed[[3, 7]] = False
    with caplog.at_level(logging.WARNING, logger="medmeta.data.assay_tasks"):
        AssayTaskSet(toxcast, np.zeros((toxcast.n_molecules, 2)), parsed)
    assert "2 of 8576 molecules have unparsable SMILES and are left out" in caplog.text


def test_seeded_and_resumable(index_tasks):
    a = index_tasks.episode_sampler(2, 8, 4, batch_size=3, generator=11)
    b = index_tasks.episode_sampler(2, 8, 4, batch_size=3, generator=11)
    first = a.sample()
    torch.testing.assert_close(first.support_x, b.sample().support_x)
    state = a.state_dict()
    nxt = a.sample()
    a.load_state_dict(state)
    again = a.sample()
    torch.testing.assert_close(nxt.query_x, again.query_x)
    torch.testing.assert_close(nxt.classes, again.classes)
    other = index_tasks.episode_sampler(2, 8, 4, batch_size=3, generator=12).sample()
    assert not torch.equal(first.support_x, other.support_x)


def test_fingerprint_bits_are_not_rescaled(toxcast):
    bits = np.zeros((toxcast.n_molecules, 4), np.uint8)
    bits[:, 1] = 1
    x = AssayTaskSet(toxcast, bits).episode_sampler(2, 2, 2, generator=0).sample().support_x
    assert x.dtype == torch.float32 and x[..., 1].eq(1.0).all()  # 1 stays 1 (not 1/255)


@pytest.mark.parametrize(
    ("kwargs", "source", "match"),
    [
        ({"ways": 3}, "ways", "2-way"),
        ({"shots": 0}, "shots", "must be an int >= 1"),
        ({"shots": 3000}, "shots", "no assay has shots \\+ queries = 3000 \\+ 4 actives"),
        ({"query": "all"}, "query", "'balanced' or 'rest'"),
        ({"query": "rest", "batch_size": 2}, "batch_size", "use batch_size=1"),
        ({"max_query": 100}, "max_query", "query='rest' only"),
        ({"query": "rest", "max_query": 5}, "max_query", "must be an int >= 8"),
        ({"generator": -1}, "generator", "must be an int >= 0"),
    ],
)
def test_bad_sampler_arguments(index_tasks, kwargs, source, match):
    args = {"ways": 2, "shots": 4, "queries": 4} | kwargs
    with pytest.raises(DataError, match=match) as err:
        index_tasks.episode_sampler(
            args.pop("ways"), args.pop("shots"), args.pop("queries"), **args
        )
    assert err.value.source == source


def test_bad_tables_name_the_field():
    smiles = np.array(["CCO", "CCN", "CCC"])
    ok = np.array([[1.0, np.nan], [0.0, 1.0], [0.0, 0.0]])
    names, groups = np.array(["A_1", "B_1"]), np.array(["A", "B"])
    cases = [
        ((smiles, ok[:2], names, groups), "labels", r"\[n_mol, n_assay\] = \[3, n_assay\]"),
        (
            (smiles, np.where(ok == 1, 2.0, ok), names, groups),
            "labels",
            "found 2.0 at molecule 0, assay 0",
        ),
        ((smiles, ok, np.array(["A_1", "A_1"]), groups), "task_names", "must be unique"),
        ((smiles, ok, names, np.array(["A"])), "task_groups", r"must be a \[2\] array"),
        ((np.array([1, 2, 3]), ok, names, groups), "smiles", "must hold strings"),
    ]
    for args, source, match in cases:
        with pytest.raises(DataError, match=match) as err:
            AssayTable(*args)
        assert err.value.source == source
    table = AssayTable(smiles, ok, names, groups)
    with pytest.raises(DataError, match=r"must be \[n_mol, F\] = \[3, F\]") as err:
        AssayTaskSet(table, np.zeros((2, 5)))
    assert err.value.source == "features"
    with pytest.raises(DataError, match="features: must be finite"):
        AssayTaskSet(table, np.full((3, 5), np.nan))
    with pytest.raises(DataError, match="bool"):
        AssayTaskSet(table, np.zeros((3, 5)), parsed=np.ones(3))
    with pytest.raises(DataError, match="every assay starts with 'A'"):
        AssayTable(smiles, ok[:, :1], names[:1], groups[:1]).drop_prefix("A")


def test_meta_fit_trains_and_validates_on_assay_tasks(toxcast):
    """meta_fit takes task sets: it asks them for balanced training and validation episodes."""
    from medmeta.algorithms import create
    from medmeta.nn import MLP
    from medmeta.train import meta_fit

    rng = np.random.default_rng(0)
    train, val = tox21_holdout(toxcast).split_assays((0.8, 0.2), seed=0)
    x = rng.random((toxcast.n_molecules, 16)).astype(np.float32)
    learner = create("protonet", MLP(16, hidden=(8,)), ways=2)
    result = meta_fit(learner, train.task_set(x), val.task_set(x), ways=2, shots=4, queries=4,
                      steps=3, meta_batch=2, seed=0, val_every=3, val_episodes=4,
                      progress=False)  # fmt: skip
    assert result.last_step == 3 and result.best_step == 3
    assert 0.0 <= result.best_accuracy <= 1.0
