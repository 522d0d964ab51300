"""Few-shot regression tasks: support-only standardisation (no leak from the queries or the
meta-test rows), the seeded episode sampler (shapes, exact resume), the two protocols on
the embedded data, and clear errors on bad input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from medmeta.data import DataError, load
from medmeta.data.regression_protocols import (
    EXPRESSION_TEST_TYPES,
    EXPRESSION_TRAIN_TYPES,
    THYROID_LABS,
    expression_tasks,
    thyroid_lab_tasks,
)
from medmeta.data.regression_tasks import (
    RegressionTask,
    RegressionTasks,
    standardise,
    support_statistics,
    unstandardise,
)


def _tasks(n_tasks: int = 3, rows: int = 12, features: int = 4, seed: int = 0) -> RegressionTasks:
    g = torch.Generator().manual_seed(seed)
    return RegressionTasks([
        RegressionTask(f"t{i}", torch.randn(rows + i, features, generator=g),
                       torch.randn(rows + i, generator=g) * (i + 1) + 10 * i)
        for i in range(n_tasks)
    ], name="toy")  # fmt: skip


@functools.cache
def _expression():
    return expression_tasks()


# ------------------------------------------------------------------ standardisation


def test_support_statistics_match_numpy_and_ignore_the_queries():
    """Mean and biased std of the support alone (float64 numpy reference); the queries are
    standardised with them, so changing a query target changes nothing else."""
    g = torch.Generator().manual_seed(1)
    support = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3 + 5
    query = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mean, scale = support_statistics(support)
    np.testing.assert_allclose(mean.numpy(), support.numpy().mean(1), rtol=1e-14)
    np.testing.assert_allclose(scale.numpy(), support.numpy().std(1), rtol=1e-14)
    z = standardise(support, mean, scale)
    np.testing.assert_allclose(z.mean(1).numpy(), 0, atol=1e-14)
    np.testing.assert_allclose(z.std(1, unbiased=False).numpy(), 1, rtol=1e-14)
    zq = standardise(query, mean, scale)
    changed = query.clone()
    changed[2, 3] += 100.0
    zc = standardise(changed, *support_statistics(support))
    assert torch.equal(zc[[0, 1, 3]], zq[[0, 1, 3]]) and torch.equal(zc[2, :3], zq[2, :3])
    torch.testing.assert_close(unstandardise(zq, mean, scale), query, rtol=1e-14, atol=1e-13)


def test_constant_and_single_support_get_scale_one():
    _, scale = support_statistics(torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]]))
    assert scale.tolist() == pytest.approx([1.0, (2 / 3) ** 0.5])
    _, one = support_statistics(torch.tensor([[7.0]]))
    assert one.tolist() == [1.0]


def test_expression_inputs_use_meta_training_cells_only():
    """The gene ranking and the input standardisation come from the meta-training cell
    types: rewriting every meta-test cell changes no meta-training task, and the meta-test
    inputs are the raw values standardised with the meta-training cells' statistics."""
    ds = load("pbmc68k_celltypes")
    names = list(ds.class_names)
    test_rows = np.isin(ds.labels, [names.index(t) for t in EXPRESSION_TEST_TYPES])
    altered = ds.subset(np.arange(len(ds)))
    altered.x = np.array(ds.x, copy=True)
    altered.x[test_rows] = np.random.default_rng(0).exponential(size=altered.x[test_rows].shape)
    base, other = _expression(), expression_tasks(altered)
    assert base.info["input_genes"] == other.info["input_genes"]
    for a, b in zip(base.train, other.train, strict=True):
        assert a.name == b.name and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    genes = [str(g) for g in ds.meta["gene_names"]]
    panel = [genes.index(g) for g in base.info["input_genes"]]
    train_rows = np.isin(ds.labels, [names.index(t) for t in EXPRESSION_TRAIN_TYPES])
    x = np.asarray(ds.x, dtype=np.float64)[:, panel]
    mean, std = x[train_rows].mean(0), x[train_rows].std(0)
    task = base.test[0]
    rows = ds.labels == names.index(task.group)
    np.testing.assert_allclose(task.x.numpy(), (x[rows] - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(task.y.numpy(), np.asarray(ds.x)[rows, genes.index(task.target)])


# ------------------------------------------------------------------------ sampler


def test_sampler_shapes_dtypes_and_rows_of_one_task():
    tasks = _tasks()
    b = tasks.episode_sampler(1, 3, 5, batch_size=4, generator=0).sample()
    assert b.support_x.shape == (4, 3, 4) and b.query_x.shape == (4, 5, 4)
    assert b.support_y.shape == (4, 3) and b.query_y.shape == (4, 5)
    assert b.support_y.dtype == torch.float32 and b.classes.shape == (4, 1)
    assert (b.ways, b.shots, b.queries) == (1, 3, 5)
    for e in range(4):  # support and query rows are distinct rows of the episode's task
        task = tasks[int(b.classes[e, 0])]
        x = torch.cat([b.support_x[e], b.query_x[e]])
        y = torch.cat([b.support_y[e], b.query_y[e]])
        rows = [int((task.x == xi).all(1).nonzero()[0]) for xi in x]
        assert len(set(rows)) == 8 and torch.equal(task.y[rows], y)


def test_sampler_resumes_exactly_and_is_seeded():
    tasks = _tasks()
    a = tasks.episode_sampler(1, 2, 3, batch_size=2, generator=5)
    for _ in range(3):
        a.sample()
    state = a.state_dict()
    expected = [a.sample() for _ in range(3)]
    b = tasks.episode_sampler(1, 2, 3, batch_size=2, generator=99)
    b.load_state_dict(state)
    for e, got in zip(expected, (b.sample() for _ in range(3)), strict=True):
        assert torch.equal(e.support_x, got.support_x) and torch.equal(e.query_y, got.query_y)
        assert torch.equal(e.classes, got.classes)
    same = tasks.episode_sampler(1, 2, 3, batch_size=2, generator=5).sample()
    other = tasks.episode_sampler(1, 2, 3, batch_size=2, generator=6).sample()
    first = tasks.episode_sampler(1, 2, 3, batch_size=2, generator=5).sample()
    assert torch.equal(same.support_y, first.support_y)
    assert not torch.equal(same.support_y, other.support_y)


def test_sampler_refuses_bad_settings():
    tasks = _tasks()
    with pytest.raises(DataError, match="ways must be 1, got 2"):
        tasks.episode_sampler(2, 2, 2)
    with pytest.raises(DataError, match=r"3 task\(s\) have fewer than shots \+ queries = 10 \+ 5"):
        tasks.episode_sampler(1, 10, 5)
    with pytest.raises(DataError, match="shots must be an int >= 1"):
        tasks.episode_sampler(1, 0, 2)


# ------------------------------------------------------------------------- errors


def test_nan_target_and_input_are_named():
    x, y = torch.randn(6, 3), torch.randn(6)
    y[4] = float("nan")
    with pytest.raises(DataError, match=r"task 'lab': target \(y\) is nan at row 4"):
        RegressionTasks([RegressionTask("lab", x, y)])
    x[2, 1] = float("inf")
    with pytest.raises(DataError, match=r"task 'lab': input x\[2, 1\] is inf"):
        RegressionTasks([RegressionTask("lab", x, torch.randn(6))])


def test_bad_task_sets_are_refused():
    ok = RegressionTask("a", torch.randn(5, 3), torch.randn(5))
    with pytest.raises(DataError, match="at least one task"):
        RegressionTasks([])
    with pytest.raises(DataError, match="has 2 features, the other tasks have 3"):
        RegressionTasks([ok, RegressionTask("b", torch.randn(5, 2), torch.randn(5))])
    with pytest.raises(DataError, match=r"task names must be unique, repeated: \['a'\]"):
        RegressionTasks([ok, ok])
    with pytest.raises(DataError, match=r"x must be \[n, F\] and y \[n\]"):
        RegressionTasks([RegressionTask("c", torch.randn(5, 3), torch.randn(4))])


# ---------------------------------------------------------------------- protocols


def test_expression_protocol_holds_out_cell_types_and_genes():
    split = _expression()
    info = split.info
    assert split.train.num_features == split.test.num_features == 50
    assert len(split.train) == 4 * 60 and len(split.test) == 3 * 40
    train_genes, test_genes = set(info["train_target_genes"]), set(info["test_target_genes"])
    assert not train_genes & test_genes and not (train_genes | test_genes) & set(
        info["input_genes"]
    )
    assert {t.group for t in split.train} == set(EXPRESSION_TRAIN_TYPES)
    assert {t.group for t in split.test} == set(EXPRESSION_TEST_TYPES)
    assert split.test.smallest() >= 30  # K = 20 support plus 10 queries
    # target genes are expressed in most cells: a continuous target, not mostly zeros
    zero = np.mean([float((t.y == 0).float().mean()) for t in split.test])
    assert zero < 0.6


def test_thyroid_protocol_blanks_the_target_lab():
    split = thyroid_lab_tasks()
    names = split.test.feature_names
    assert "FTI" not in names and "TBG" not in names and "referral_source=SVI" not in names
    assert len(split.train) == 3 * len(THYROID_LABS) and len(split.test) == 2 * len(THYROID_LABS)
    table = load("thyroid")
    src = table.frame["referral_source"].astype(str).to_numpy()
    for task in split.test:
        lab = task.target.removeprefix("log ")
        assert torch.all(task.x[:, names.index(f"{lab}__missing")] == 1)
        assert torch.all(task.x[:, names.index(lab)] == 0)
        raw = table.frame[lab].to_numpy()[(src == task.group) & table.frame[lab].notna().to_numpy()]
        np.testing.assert_allclose(task.y.numpy(), np.log(raw), rtol=1e-6)
    flags = names.index("hypopituitary")  # 0/1 flags enter unscaled
    assert set(torch.cat([t.x[:, flags] for t in split.train]).unique().tolist()) <= {0.0, 1.0}


def test_protocol_arguments_are_checked():
    with pytest.raises(DataError, match="unknown cell type 'Neuron'"):
        expression_tasks(train_types=("Neuron",))
    with pytest.raises(DataError, match="meta-train and meta-test cell types overlap"):
        expression_tasks(train_types=("CD19+ B",), test_types=("CD19+ B",))
    with pytest.raises(DataError, match="no rows in group 'Mars'"):
        thyroid_lab_tasks(test_groups=("Mars",))
