"""MAML++: the multi-step loss schedule, batched meta-gradients (LSLR, per-step batch norm,
multi-step loss, both derivative orders) equal a per-task loop, reduction to MAML,
derivative-order annealing, per-step running statistics, the interface, and learning."""

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
from medmeta.algorithms.maml import MAML
from medmeta.algorithms.mamlpp import MAMLPlusPlus, msl_weights
from medmeta.nn import MLP, Conv4

BACKBONES = [
    pytest.param(lambda: MLP(10, hidden=(16,)), (10,), id="mlp-batchnorm"),
    pytest.param(lambda: Conv4(1, hidden=8), (1, 28, 28), id="conv4-batchnorm"),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_msl_schedule():
    assert msl_weights(5, 0, 100) == pytest.approx([0.2] * 5)
    # half-way: non-final weights lose 50 * (1/5/100), the last gains four times that
    assert msl_weights(5, 50, 100) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.6])
    late = msl_weights(5, 99, 100)
    assert late[:4] == pytest.approx([0.006] * 4) and late[4] == pytest.approx(0.976)
    for step in (0, 10, 50, 99):
        assert sum(msl_weights(5, step, 100)) == pytest.approx(1.0)
    assert msl_weights(5, 100, 100) is None and msl_weights(3, 0, 0) is None


def _learner(make, shape, dtype, **hparams) -> MAMLPlusPlus:
    torch.manual_seed(0)
    learner = MAMLPlusPlus(make(), 3, input_shape=shape, inner_steps=STEPS, **hparams).to(dtype)
    with torch.no_grad():  # distinct per-step rates and batch-norm sets
        learner.lslr.uniform_(0.05, 0.4)
        for p in learner.bn.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return learner.train()


def _reference(learner, batch, second_order: bool, weights):
    adapted = learner.adapted_parameters()
    column = {name: k for k, name in enumerate(adapted)}

    def per_version(version: int):
        return {k: v[0] for k, v in learner.bn.affine(min(version, STEPS), 1).items()}

    def task_loss(t: int) -> torch.Tensor:
        return loop_task_loss(
            module_model(learner),
            adapted,
            batch.support_x[t],
            batch.support_y[t],
            batch.query_x[t],
            batch.query_y[t],
            steps=STEPS,
            rate=lambda step, name: learner.lslr[step, column[name]],
            second_order=second_order,
            extra=per_version,
            step_weights=weights,
        )

    return loop_meta_grads(trainable(learner), task_loss, batch.batch_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("make", "shape"), BACKBONES)
@pytest.mark.parametrize(
    ("meta_step", "second_order", "multi_step"),
    [(15, True, True), (5, False, True), (25, True, False)],
    ids=["second-order-msl", "first-order-msl", "second-order-final-loss"],
)
def test_meta_gradients_equal_per_task_loop(
    make, shape, dtype, meta_step, second_order, multi_step
):
    """Second order from meta-step 10, multi-step loss until meta-step 20."""
    learner = _learner(make, shape, dtype, msl_steps=20, first_order_steps=10)
    learner.meta_step.fill_(meta_step)
    assert learner.second_order == second_order
    weights = msl_weights(STEPS, meta_step, 20)
    assert (weights is not None) == multi_step
    batch = random_batch(4, 3, 2, 3, shape, dtype)
    reference = _reference(learner, batch, second_order, weights)
    assert {"lslr", "bn.weight.0", "bn.bias.0"} <= set(reference)
    assert not any(k.endswith(("1.weight", "1.bias")) for k in learner.adapted_names())
    assert_grads_match(learner, batch, reference, TOL[dtype])


def test_without_batch_norm_and_schedules_it_is_maml():
    """No batch norm, final-step loss, second order: MAML with (learnable) inner rates."""
    torch.manual_seed(0)
    maml = MAML(
        MLP(10, hidden=(16, 12), batch_norm=False), 3, feature_dim=12, inner_lr=0.2, inner_steps=2
    )
    plus = MAMLPlusPlus(
        MLP(10, hidden=(16, 12), batch_norm=False), 3, feature_dim=12, inner_lr=0.2, inner_steps=2,
        msl_steps=0, first_order_steps=0,
    )  # fmt: skip
    plus.load_state_dict(maml.state_dict(), strict=False)
    batch = random_batch(3, 3, 2, 2, (10,), torch.float32)
    losses, grads = [], []
    for learner in (maml, plus):
        loss, _ = learner.meta_loss(batch)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(learner.adapted_parameters().values())))
    torch.testing.assert_close(losses[1], losses[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_one_inner_step_with_the_multi_step_loss_is_the_final_loss():
    """With one inner step the multi-step loss has no earlier steps: its one weight is 1, so
    the loss during annealing equals the final query loss (once crashed on an empty stack)."""
    torch.manual_seed(0)
    plus = MAMLPlusPlus(MLP(10, hidden=(16, 12), batch_norm=False), 3, feature_dim=12,
                        inner_steps=1, msl_steps=20, first_order_steps=0).train()  # fmt: skip
    batch = random_batch(3, 3, 2, 2, (10,), torch.float32)
    assert msl_weights(1, 0, 20) == pytest.approx([1.0])
    annealing, _ = plus.meta_loss(batch)
    plus.meta_step.fill_(20)  # the schedule is over: the final loss alone
    final, _ = plus.meta_loss(batch)
    torch.testing.assert_close(annealing, final)


def test_derivative_order_annealing_and_step_counter():
    torch.manual_seed(0)
    learner = MAMLPlusPlus(
        MLP(10, hidden=(16,)), 3, feature_dim=16, inner_steps=2, first_order_steps=2
    )
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-3)
    batch = random_batch(2, 3, 2, 2, (10,), torch.float32)
    orders = [learner.meta_train_step(batch, optimizer).extra["second_order"] for _ in range(4)]
    assert orders == [0.0, 0.0, 1.0, 1.0]
    assert int(learner.state_dict()["meta_step"]) == 4
    clone = create("mamlpp", MLP(10, hidden=(16,)), 3, **learner.spec()["hparams"])
    clone.load_state_dict(learner.state_dict())
    assert int(clone.meta_step) == 4 and clone.second_order


def test_lslr_and_batch_norm_sets_are_learned_and_recorded():
    torch.manual_seed(0)
    learner = MAMLPlusPlus(
        Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=2, msl_steps=5
    )
    assert learner.lslr.shape == (2, len(learner.adapted_names()))
    assert [tuple(w.shape) for w in learner.bn.weight] == [(3, 8)] * 4  # versions 0..2
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-2)
    learner.meta_train_step(random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32), optimizer)
    after = learner.state_dict()
    for key in ("lslr", "bn.weight.0", "bn.bias.3", "bn.running_mean_0", "bn.running_var_3"):
        assert not torch.equal(after[key], before[key]), key
    for k, layer in enumerate(learner.bn.layers):  # the backbone's own affine is unused
        assert not layer.weight.requires_grad and torch.equal(
            after[f"{learner.bn.names[k]}.weight"], before[f"{learner.bn.names[k]}.weight"]
        )
    mean = after["bn.running_mean_0"]
    assert not torch.equal(mean[0], mean[1]) and not torch.equal(mean[1], mean[2])


def test_recording_is_the_lerp_towards_the_mean_task_statistics():
    """Recording a version's statistics leaves the output that of batch statistics and moves
    the version's running mean / unbiased variance towards their mean over tasks."""
    torch.manual_seed(0)
    learner = MAMLPlusPlus(Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=2)
    layer, (mean, var) = learner.bn.layers[0], learner.bn.running_statistics(0)
    mean[1], var[1] = torch.rand(8), torch.rand(8) + 0.5
    before = mean.clone(), var.clone()
    x = torch.randn(3, 4, 8, 5, 5) * 2 + 1  # [T, n, C, H, W]
    params = {"weight": torch.rand(3, 8), "bias": torch.randn(3, 8)}
    plain = layer.forward_tasks(x, params)
    with learner.bn.normalisation(1, "record"):
        recorded = layer.forward_tasks(x, params)
    torch.testing.assert_close(recorded, plain)
    h = x.transpose(1, 2).flatten(2)  # [T, C, n*H*W]
    torch.testing.assert_close(mean[1], before[0][1].lerp(h.mean(2).mean(0), 0.1))
    torch.testing.assert_close(var[1], before[1][1].lerp(h.var(2).mean(0), 0.1))
    for kept in (0, 2):  # other versions untouched
        assert torch.equal(mean[kept], before[0][kept]) and torch.equal(var[kept], before[1][kept])


def test_running_statistics_at_evaluation():
    """bn_running_stats: in eval mode queries are classified independently with the per-step
    statistics, and the deployed model gives the same for any input."""
    torch.manual_seed(0)
    learner = MAMLPlusPlus(
        Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=2, bn_running_stats=True
    )
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-3)
    for seed in range(3):
        learner.meta_train_step(
            random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32, seed), optimizer
        )
    batch = random_batch(1, 3, 3, 4, (1, 28, 28), torch.float32, seed=9)
    learner.eval()
    xs, ys, xq = batch.support_x, batch.support_y, batch.query_x
    together = learner.predict(xs, ys, xq)[0]
    alone = torch.cat([learner.predict(xs, ys, xq[:, i : i + 1])[0] for i in range(xq.shape[1])])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    adapted = learner.adapt(xs[0], ys[0])
    with torch.no_grad():
        torch.testing.assert_close(adapted(xq[0]), together, atol=1e-5, rtol=1e-5)
        first_bn = adapted.classify.backbone[0][1]
        torch.testing.assert_close(first_bn.running_mean, learner.bn.running_mean_0[2])
        torch.testing.assert_close(first_bn.weight, learner.bn.weight[0][2])
    learner.train()  # training mode: transductive batch statistics again
    assert not torch.allclose(learner.predict(xs, ys, xq)[0], together, atol=1e-3)


@pytest.mark.parametrize(("make", "shape"), BACKBONES)
def test_adapt_matches_predict(make, shape):
    learner = _learner(make, shape, torch.float32)
    check_adapt_matches_predict(learner, random_batch(1, 3, 4, 2, shape, torch.float32))


def test_spec_round_trip():
    torch.manual_seed(0)
    learner = create(
        "mamlpp", Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=2, msl_steps=3
    )
    batch = random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32)
    learner.meta_train_step(batch, torch.optim.Adam(learner.parameters(), lr=1e-2))
    assert set(learner.spec()["hparams"]) >= {"msl_steps", "first_order_steps", "bn_running_stats"}
    check_spec_round_trip(learner, batch, lambda: Conv4(1, hidden=8))


def test_deterministic():
    check_deterministic(
        lambda: MAMLPlusPlus(Conv4(3, hidden=8), 3, input_shape=(3, 28, 28), inner_steps=2)
    )


def test_mamlpp_learns_pbc_blood():
    """3-way 1-shot, held-out classes: multi-step loss for 20 meta-steps, first-order for 25."""
    torch.manual_seed(0)
    learner = MAMLPlusPlus(
        Conv4(3, hidden=16),
        3,
        input_shape=(3, 28, 28),
        inner_steps=2,
        msl_steps=20,
        first_order_steps=25,
    )
    check_learns(meta_train_and_evaluate(learner, shots=1, steps=50))
