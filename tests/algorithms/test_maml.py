"""MAML and first-order MAML: batched meta-gradients equal a per-task loop, the interface
(predict / adapt / spec / determinism), and learning on real data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
from medmeta.algorithms.maml import FOMAML, MAML
from medmeta.nn import MLP, Conv4


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


BACKBONES = [
    pytest.param(lambda: MLP(10, hidden=(16,)), (10,), id="mlp"),
    pytest.param(lambda: Conv4(1, hidden=8), (1, 28, 28), id="conv4-batchnorm"),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _loop_reference(learner, batch, steps: int, lr: float, second_order: bool):
    adapted = learner.adapted_parameters()

    def task_loss(t: int) -> torch.Tensor:
        return loop_task_loss(
            module_model(learner),
            adapted,
            batch.support_x[t],
            batch.support_y[t],
            batch.query_x[t],
            batch.query_y[t],
            steps=steps,
            rate=lambda step, name: lr,
            second_order=second_order,
        )

    return loop_meta_grads(trainable(learner), task_loss, batch.batch_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("make", "shape"), BACKBONES)
@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_meta_gradients_equal_per_task_loop(name, make, shape, dtype):
    """Second-order MAML = loop with create_graph=True; first-order = create_graph=False."""
    torch.manual_seed(0)
    learner = create(name, make(), 3, input_shape=shape, inner_lr=0.3, inner_steps=2).to(dtype)
    learner.train()
    batch = random_batch(4, 3, 2, 3, shape, dtype)
    reference = _loop_reference(learner, batch, 2, 0.3, second_order=(name == "maml"))
    assert_grads_match(learner, batch, reference, TOL[dtype])


def test_first_and_second_order_differ():
    """The second-order terms are not negligible here, so the test above can tell them apart."""
    torch.manual_seed(0)
    learner = MAML(Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_lr=0.3, inner_steps=2)
    batch = random_batch(4, 3, 2, 3, (1, 28, 28), torch.float32)
    first = _loop_reference(learner, batch, 2, 0.3, second_order=False)
    second = _loop_reference(learner, batch, 2, 0.3, second_order=True)
    assert max(float((first[k] - second[k]).abs().max()) for k in first) > 1e-3


def test_predict_shapes_no_grad_and_parameters_untouched():
    torch.manual_seed(0)
    learner = MAML(MLP(10, hidden=(16,)), 4, feature_dim=16, inner_steps=1, eval_steps=3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = random_batch(3, 4, 2, 5, (10,), torch.float32)
    with torch.no_grad():
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (3, 20, 4) and not logits.requires_grad
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.inference_mode():
        torch.testing.assert_close(
            learner.predict(batch.support_x, batch.support_y, batch.query_x), logits
        )
    loss, accuracy = learner.meta_loss(batch)
    assert loss.requires_grad and loss.dim() == 0 and accuracy.shape == (3,)


def test_predict_adapts():
    """More test-time steps fit the support set better (adaptation really happens)."""
    torch.manual_seed(0)
    learner = MAML(MLP(10, hidden=(16,)), 3, input_shape=(10,), inner_lr=0.5)
    batch = random_batch(2, 3, 4, 2, (10,), torch.float32)
    fits = []
    for steps in (1, 20):
        learner.eval_steps = steps
        logits = learner.predict(batch.support_x, batch.support_y, batch.support_x)
        fits.append(F.cross_entropy(logits.flatten(0, 1), batch.support_y.flatten()))
    assert fits[1] < 0.5 * fits[0]


@pytest.mark.parametrize(("make", "shape"), BACKBONES)
def test_adapt_matches_predict(make, shape):
    torch.manual_seed(0)
    learner = MAML(make(), 3, input_shape=shape, inner_lr=0.3, eval_steps=4)
    batch = random_batch(1, 3, 4, 2, shape, torch.float32)
    check_adapt_matches_predict(learner, batch)
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    # the deployed batch norm holds the support statistics, the meta-parameters are unchanged
    for name, layer in adapted.classify.named_modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            assert not torch.equal(layer.running_var, torch.ones_like(layer.running_var)), name
    assert not torch.equal(adapted.classify.head.weight, learner.head.weight)


def test_spec_round_trip_and_registry():
    torch.manual_seed(0)
    learner = create("fomaml", Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=2)
    assert isinstance(learner, FOMAML) and learner.first_order
    assert learner.spec()["hparams"]["input_shape"] == [1, 28, 28]
    batch = random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32)
    check_spec_round_trip(learner, batch, lambda: Conv4(1, hidden=8))
    maml = create("maml", MLP(10, hidden=(16,)), 3, feature_dim=16, first_order=True)
    check_spec_round_trip(
        maml, random_batch(2, 3, 2, 2, (10,), torch.float32), lambda: MLP(10, hidden=(16,))
    )
    with pytest.raises(ValueError, match="fomaml is first-order"):
        FOMAML(MLP(10, hidden=(16,)), 3, feature_dim=16, first_order=False)
    with pytest.raises(ValueError, match="input_shape"):
        MAML(MLP(10, hidden=(16,)), 3)


def test_deterministic():
    check_deterministic(lambda: MAML(Conv4(3, hidden=8), 3, input_shape=(3, 28, 28), inner_steps=1))


def test_maml_learns_pbc_blood():
    """3-way 5-shot, held-out classes: second-order MAML, 40 meta-steps."""
    torch.manual_seed(0)
    learner = MAML(Conv4(3, hidden=16), 3, input_shape=(3, 28, 28), inner_steps=2)
    check_learns(meta_train_and_evaluate(learner, shots=5, steps=40))


def test_fomaml_learns_pbc_blood():
    torch.manual_seed(0)
    learner = FOMAML(Conv4(3, hidden=16), 3, input_shape=(3, 28, 28), inner_steps=2)
    check_learns(meta_train_and_evaluate(learner, shots=5, steps=50))
