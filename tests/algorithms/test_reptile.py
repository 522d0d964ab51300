"""Reptile: the meta-step equals theta + eps * mean_t(phi_t - theta) with phi_t from a
per-task SGD loop, the interface, and learning on real data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from maml_helpers import (
    check_adapt_matches_predict,
    check_deterministic,
    check_learns,
    check_spec_round_trip,
    meta_train_and_evaluate,
    random_batch,
    torch_threads,
)
from medmeta.algorithms import create
from medmeta.algorithms.reptile import Reptile
from medmeta.nn import MLP, Conv4


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _sgd_per_task(learner, x, y, steps: int, lr: float) -> dict[str, torch.Tensor]:
    """phi_t for every task from a plain loop: ``steps`` SGD steps on task t alone."""
    theta = {k: v.detach() for k, v in learner.adapted_parameters().items()}
    phis = []
    for t in range(x.shape[0]):
        phi = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(learner, phi, (x[t],)), y[t])
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {
                k: (p - lr * g).detach().requires_grad_()
                for (k, p), g in zip(phi.items(), grads, strict=True)
            }
        phis.append(phi)
    return {k: torch.stack([phi[k].detach() for phi in phis]) for k in theta}


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: MLP(10, hidden=(16,)), (10,)), (lambda: Conv4(1, hidden=8), (1, 28, 28))],
    ids=["mlp", "conv4-batchnorm"],
)
def test_meta_step_is_reptile_update(make, shape):
    """With SGD(lr=eps): theta' = theta + eps * mean_t(phi_t - theta), phi_t from a per-task
    loop of plain SGD on the support set."""
    torch.manual_seed(0)
    learner = Reptile(make(), 3, input_shape=shape, inner_lr=0.2, inner_steps=3).double()
    batch = random_batch(4, 3, 2, 3, shape, torch.float64)
    theta = {k: v.detach().clone() for k, v in learner.adapted_parameters().items()}
    learner.train()
    phi = _sgd_per_task(learner, batch.support_x, batch.support_y, steps=3, lr=0.2)
    eps = 0.5
    learner.meta_train_step(batch, torch.optim.SGD(learner.parameters(), lr=eps))
    moved = 0.0
    for k, p in learner.adapted_parameters().items():
        expected = theta[k] + eps * (phi[k] - theta[k]).mean(0)
        torch.testing.assert_close(p.detach(), expected, atol=1e-10, rtol=1e-10)
        moved = max(moved, float((p.detach() - theta[k]).abs().max()))
    assert moved > 1e-3


def test_inner_loop_batched_equals_loop():
    torch.manual_seed(0)
    learner = Reptile(Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_lr=0.2).double()
    batch = random_batch(3, 3, 2, 1, (1, 28, 28), torch.float64)
    fast = learner.adapt_detached(batch.support_x, batch.support_y, 4)
    loop = _sgd_per_task(learner, batch.support_x, batch.support_y, steps=4, lr=0.2)
    for k in loop:
        torch.testing.assert_close(fast[k], loop[k], atol=1e-10, rtol=1e-10)


def test_step_result_and_reporting_loss():
    torch.manual_seed(0)
    learner = Reptile(MLP(10, hidden=(16,)), 3, feature_dim=16, inner_steps=2)
    batch = random_batch(2, 3, 2, 3, (10,), torch.float32)
    result = learner.meta_train_step(batch, torch.optim.Adam(learner.parameters(), lr=1e-3))
    assert 0 <= result.accuracy <= 1 and result.loss > 0
    loss, accuracy = learner.meta_loss(batch)  # first-order MAML loss, for reporting
    assert loss.requires_grad and accuracy.shape == (2,)


def test_adapt_matches_predict_and_spec():
    torch.manual_seed(0)
    learner = create("reptile", Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), eval_steps=3)
    assert "first_order" not in learner.spec()["hparams"]
    batch = random_batch(2, 3, 3, 2, (1, 28, 28), torch.float32)
    check_adapt_matches_predict(learner, batch)
    check_spec_round_trip(learner, batch, lambda: Conv4(1, hidden=8))


def test_deterministic():
    check_deterministic(
        lambda: Reptile(Conv4(3, hidden=8), 3, input_shape=(3, 28, 28), inner_steps=2)
    )


def test_reptile_learns_pbc_blood():
    """3-way 5-shot, held-out classes: 5 inner steps, Adam on the pseudo-gradient."""
    torch.manual_seed(0)
    learner = Reptile(Conv4(3, hidden=16), 3, input_shape=(3, 28, 28), inner_lr=0.3, inner_steps=5)
    check_learns(meta_train_and_evaluate(learner, shots=5, steps=60))
