"""Meta-SGD: batched meta-gradients (including those of the learned rates alpha) equal a
per-task loop, the interface, and learning on real data."""

from __future__ import annotations

import pytest
import torch

from maml_helpers import (
    assert_grads_match,
    check_adapt_matches_predict,
    check_deterministic,
    check_learns,
    check_spec_round_trip,
    loop_meta_grads,
    loop_task_loss,
    meta_train_and_evaluate,
    module_model,
    random_batch,
    torch_threads,
    trainable,
)
from medmeta.algorithms import create
from medmeta.algorithms._fast_weights import broadcast
from medmeta.algorithms.metasgd import MetaSGD
from medmeta.nn import MLP, Conv4

BACKBONES = [
    pytest.param(lambda: MLP(10, hidden=(16,)), (10,), id="mlp"),
    pytest.param(lambda: Conv4(1, hidden=8), (1, 28, 28), id="conv4-batchnorm"),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _learner(make, shape, dtype, **hparams) -> MetaSGD:
    torch.manual_seed(0)
    learner = MetaSGD(make(), 3, input_shape=shape, **hparams).to(dtype)
    with torch.no_grad():  # distinct rates, so a mix-up of alpha and parameters shows
        for a in learner.alpha:
            a.uniform_(0.01, 0.3)
    return learner


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("make", "shape"), BACKBONES)
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_meta_gradients_equal_per_task_loop(make, shape, dtype, first_order):
    learner = _learner(make, shape, dtype, inner_steps=2, first_order=first_order)
    batch = random_batch(4, 3, 2, 3, shape, dtype)
    adapted = learner.adapted_parameters()
    alpha = dict(zip(adapted, learner.alpha, strict=True))

    def task_loss(t: int) -> torch.Tensor:
        return loop_task_loss(
            module_model(learner),
            adapted,
            batch.support_x[t],
            batch.support_y[t],
            batch.query_x[t],
            batch.query_y[t],
            steps=2,
            rate=lambda step, name: alpha[name],
            second_order=not first_order,
        )

    reference = loop_meta_grads(trainable(learner), task_loss, batch.batch_size)
    assert any(k.startswith("alpha.") for k in reference)
    assert max(float(g.abs().max()) for k, g in reference.items() if k.startswith("alpha.")) > 0
    assert_grads_match(learner, batch, reference, TOL[dtype])


def test_alpha_is_per_element_and_learned():
    learner = MetaSGD(Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), alpha_init=0.02)
    adapted = learner.adapted_parameters()
    assert len(learner.alpha) == len(adapted)
    for a, p in zip(learner.alpha, adapted.values(), strict=True):
        assert a.shape == p.shape and torch.all(a == 0.02)
    before = [a.detach().clone() for a in learner.alpha]
    batch = random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32)
    learner.meta_train_step(batch, torch.optim.Adam(learner.parameters(), lr=1e-2))
    assert all(not torch.equal(a, b) for a, b in zip(learner.alpha, before, strict=True))
    assert (
        learner.spec()["hparams"]["alpha_init"] == 0.02
        and "inner_lr" not in learner.spec()["hparams"]
    )


def test_uses_alpha_at_test_time():
    """predict steps with alpha: zero rates leave the meta-parameters' predictions."""
    learner = _learner(*BACKBONES[0].values, torch.float32)
    batch = random_batch(2, 3, 2, 2, (10,), torch.float32)
    adapted = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    with torch.no_grad():
        for a in learner.alpha:
            a.zero_()
    frozen = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    with torch.no_grad():
        plain = learner.forward_tasks(batch.query_x, broadcast(learner.adapted_parameters(), 2))
    torch.testing.assert_close(frozen, plain)
    assert not torch.allclose(adapted, frozen)


@pytest.mark.parametrize(("make", "shape"), BACKBONES)
def test_adapt_matches_predict(make, shape):
    learner = _learner(make, shape, torch.float32, eval_steps=3)
    check_adapt_matches_predict(learner, random_batch(1, 3, 4, 2, shape, torch.float32))


def test_spec_round_trip():
    learner = create("metasgd", Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), alpha_init=0.03)
    batch = random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32)
    learner.meta_train_step(batch, torch.optim.Adam(learner.parameters(), lr=1e-2))
    check_spec_round_trip(learner, batch, lambda: Conv4(1, hidden=8))


def test_deterministic():
    check_deterministic(lambda: MetaSGD(Conv4(3, hidden=8), 3, input_shape=(3, 28, 28)))


def test_metasgd_learns_pbc_blood():
    """3-way 1-shot, held-out classes: one inner step with learned rates, 50 meta-steps."""
    torch.manual_seed(0)
    learner = MetaSGD(Conv4(3, hidden=16), 3, input_shape=(3, 28, 28))
    check_learns(meta_train_and_evaluate(learner, shots=1, steps=50))
