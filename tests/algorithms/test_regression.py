"""Few-shot regression with the MAML family (``task="regression"``): meta-gradients of the
squared-error inner and outer loops against a per-task float64 autograd reference, the
interface (shapes, adapt vs predict, support-set standardisation, spec round trip), the
registry, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from maml_helpers import loop_meta_grads, module_model, torch_threads, trainable
from medmeta import algorithms
from medmeta.algorithms import create
from medmeta.algorithms.maml import MAML
from medmeta.algorithms.regressor import AdaptedRegressor
from medmeta.data.episodes import EpisodeBatch
from medmeta.nn import MLP

REGRESSORS = ["fomaml", "maml", "metasgd", "reptile"]
F_IN, HIDDEN = 6, (8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _learner(name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    backbone = MLP(F_IN, hidden=HIDDEN, batch_norm=False)
    learner = create(name, backbone, ways=1, task="regression", input_shape=(F_IN,), **hparams)
    return learner.to(dtype)


def _batch(B=3, K=5, Q=4, dtype=torch.float64, seed=0, scale=3.0, shift=10.0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(B, K, F_IN, generator=g), torch.randn(B, Q, F_IN, generator=g)
    w = torch.randn(B, F_IN, generator=g)
    sy = (sx * w[:, None]).sum(-1) * scale + shift + 0.1 * torch.randn(B, K, generator=g)
    qy = (qx * w[:, None]).sum(-1) * scale + shift
    return EpisodeBatch(sx.to(dtype), sy.to(dtype), qx.to(dtype), qy.to(dtype),
                        torch.zeros(B, 1, dtype=torch.long), 1, K, Q)  # fmt: skip


# ----------------------------------------------------------------- values: meta-gradients


def _reference_task_loss(learner, batch, t, steps, rate, second_order):
    """Task t's query MSE after ``steps`` inner steps, written out one task at a time:
    targets standardised with the support mean and (biased) std, ``p - rate * g``."""
    sy, qy = batch.support_y[t], batch.query_y[t]
    mean, std = sy.mean(), sy.std(unbiased=False)
    zs, zq = (sy - mean) / std, (qy - mean) / std
    model = module_model(learner)
    fast = dict(learner.adapted_parameters())
    for step in range(steps):
        loss = (model(fast, batch.support_x[t])[:, 0] - zs).pow(2).mean()
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
        fast = {k: p - rate(step, k) * g for (k, p), g in zip(fast.items(), grads, strict=True)}
    return (model(fast, batch.query_x[t])[:, 0] - zq).pow(2).mean()


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd"])
def test_meta_gradients_equal_float64_per_task_loop(name):
    """The batched squared-error inner loop and query loss give the meta-gradients of the
    written-out per-task reference in float64 (second order for MAML and Meta-SGD, whose
    learned per-element rates get gradients too; first order for FOMAML)."""
    learner = _learner(name, torch.float64, inner_steps=2)
    batch = _batch()
    if name == "metasgd":
        rates = {k: a for k, a in zip(learner.adapted_names(), learner.alpha, strict=True)}
        rate = lambda step, k: rates[k]  # noqa: E731
    else:
        rate = lambda step, k: learner.inner_lr  # noqa: E731

    def task_loss(t):
        return _reference_task_loss(learner, batch, t, 2, rate, second_order=name != "fomaml")

    reference = loop_meta_grads(trainable(learner), task_loss, batch.batch_size)
    loss, r2 = learner.meta_loss(batch)
    ref_loss = sum(float(task_loss(t).detach()) for t in range(batch.batch_size)) / batch.batch_size
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-12)
    assert r2.shape == (batch.batch_size,)
    wanted = dict(learner.named_parameters())
    grads = torch.autograd.grad(loss, [wanted[k] for k in reference], allow_unused=True)
    assert max(float(g.abs().max()) for g in reference.values()) > 0
    for (k, ref), got in zip(reference.items(), grads, strict=True):
        got = torch.zeros_like(ref) if got is None else got
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10, msg=lambda m, n=k: f"{n}: {m}")


def test_reptile_step_moves_towards_the_per_task_sgd_weights():
    """Reptile's pseudo-gradient is theta - mean_t phi_t with phi_t from plain SGD on task
    t's standardised squared error (float64 reference)."""
    learner = _learner("reptile", torch.float64, inner_steps=3, inner_lr=0.05)
    batch = _batch()
    theta = {k: v.detach().clone() for k, v in learner.adapted_parameters().items()}
    phis = []
    for t in range(batch.batch_size):
        sy = batch.support_y[t]
        zs = (sy - sy.mean()) / sy.std(unbiased=False)
        fast = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for _ in range(3):
            out = functional_call(learner, fast, (batch.support_x[t],))[:, 0]
            grads = torch.autograd.grad((out - zs).pow(2).mean(), list(fast.values()))
            fast = {k: (p - 0.05 * g).detach().requires_grad_()
                    for (k, p), g in zip(fast.items(), grads, strict=True)}  # fmt: skip
        phis.append(fast)
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    learner.meta_train_step(batch, optimizer)
    for k, p in learner.adapted_parameters().items():
        expected = torch.stack([phi[k].detach() for phi in phis]).mean(0)
        torch.testing.assert_close(p.detach(), expected, atol=1e-12, rtol=1e-12)
        assert not torch.equal(expected, theta[k])


# ----------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", REGRESSORS)
def test_predict_and_adapt_shapes_agree(name):
    learner = _learner(name)
    b = _batch(dtype=torch.float32)
    with torch.no_grad():
        pred = learner.predict(b.support_x, b.support_y, b.query_x)
    assert pred.shape == (3, 4) and pred.dtype == torch.float32 and not pred.requires_grad
    adapted = learner.adapt(b.support_x[1], b.support_y[1])
    assert isinstance(adapted, AdaptedRegressor) and not adapted.training
    with torch.no_grad():
        torch.testing.assert_close(adapted(b.query_x[1]), pred[1], atol=1e-5, rtol=1e-5)
        assert adapted(b.query_x[1, :1]).shape == (1,)  # one input at a time


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_targets_are_standardised_with_the_support_set(name):
    """Standardising with the support's mean and scale, predicting and mapping back makes
    predict affine-equivariant in the targets: a*y + c gives a*prediction + c; the queries'
    targets are never seen (predict does not take them)."""
    learner = _learner(name, torch.float64)
    b = _batch()
    base = learner.predict(b.support_x, b.support_y, b.query_x)
    moved = learner.predict(b.support_x, 250.0 * b.support_y - 7.0, b.query_x)
    torch.testing.assert_close(moved, 250.0 * base - 7.0, atol=1e-8, rtol=1e-9)
    # adapting does learn from the support: a different support gives different predictions
    other = learner.predict(b.support_x, b.support_y.flip(-1), b.query_x)
    assert (other - base).abs().max() > 1e-3


def test_constant_support_is_centred_not_scaled():
    """A support set with one repeated target has no spread to divide by: it is centred
    with scale 1, so its predictions are those of an all-zero support shifted by the value
    (finite, no division by ~0)."""
    learner = _learner("maml", torch.float64)
    b = _batch()
    pred = learner.predict(b.support_x, torch.full_like(b.support_y, 4.5), b.query_x)
    zero = learner.predict(b.support_x, torch.zeros_like(b.support_y), b.query_x)
    assert torch.isfinite(pred).all()
    torch.testing.assert_close(pred, zero + 4.5, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", REGRESSORS)
def test_spec_round_trip(name):
    learner = _learner(name)
    spec = learner.spec()
    assert spec["ways"] == 1 and spec["hparams"]["task"] == "regression"
    rebuilt = create(spec["algorithm"], MLP(F_IN, hidden=HIDDEN, batch_norm=False),
                     spec["ways"], **spec["hparams"])  # fmt: skip
    rebuilt.load_state_dict(learner.state_dict())
    assert rebuilt.task == "regression" and rebuilt.spec() == spec
    b = _batch(dtype=torch.float32)
    torch.testing.assert_close(rebuilt.predict(b.support_x, b.support_y, b.query_x),
                               learner.predict(b.support_x, b.support_y, b.query_x))  # fmt: skip


def test_classification_specs_are_unchanged():
    """Classification learners keep their spec (no task entry), so old checkpoints resume."""
    learner = create("maml", MLP(F_IN, hidden=HIDDEN), ways=3, input_shape=(F_IN,))
    assert learner.task == "classification" and "task" not in learner.spec()["hparams"]


def test_registry_lists_regression_methods():
    assert algorithms.available("regression") == REGRESSORS
    classification = algorithms.available("classification")
    assert set(REGRESSORS) <= set(classification) and "protonet" in classification
    assert algorithms.available("segmentation") == ["alpnet", "panet"]
    for name in REGRESSORS:
        assert "regression" in type(_learner(name)).tasks


# -------------------------------------------------------------------------- errors


def test_nan_and_integer_targets_are_named():
    learner = _learner("maml")
    b = _batch(dtype=torch.float32)
    sy = b.support_y.clone()
    sy[1, 2] = float("nan")
    with pytest.raises(
        ValueError, match=r"maml: 'support_y' holds a non-finite target .* \[1, 2\]"
    ):
        learner.predict(b.support_x, sy, b.query_x)
    with pytest.raises(ValueError, match=r"'support_y' holds a non-finite target .* \[2\]"):
        learner.adapt(b.support_x[1], sy[1])
    with pytest.raises(
        TypeError, match=r"must hold float regression targets, got dtype torch\.int64"
    ):
        learner.predict(b.support_x, b.support_y.long(), b.query_x)


def test_bad_shapes_are_refused():
    learner = _learner("reptile")
    b = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"'support_y' must be \[B, S\]"):
        learner.predict(b.support_x, b.support_y[0], b.query_x)
    with pytest.raises(ValueError, match="must have 3 episodes"):
        learner.predict(b.support_x, b.support_y, b.query_x[:2])
    with pytest.raises(ValueError, match="adapt takes one task"):
        learner.adapt(b.support_x, b.support_y)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match=r"regression predicts one target .* ways=1, got ways=3"):
        create("maml", MLP(F_IN, hidden=HIDDEN), ways=3, task="regression", input_shape=(F_IN,))
    with pytest.raises(ValueError, match=r"maml does not support task='segmentation'"):
        create("maml", MLP(F_IN, hidden=HIDDEN), ways=1, task="segmentation", input_shape=(F_IN,))
    with pytest.raises(
        ValueError, match=r"maml supports task in \('classification', 'regression'\)"
    ):
        MAML(MLP(F_IN, hidden=HIDDEN), 1, task="segmentation", input_shape=(F_IN,))
    with pytest.raises(ValueError, match=r"protonet does not support task='regression'.*maml"):
        create("protonet", MLP(F_IN, hidden=HIDDEN), ways=1, task="regression")
