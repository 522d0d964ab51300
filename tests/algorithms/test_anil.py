"""ANIL: batched meta-gradients (body and head) equal a per-task loop, only the head
adapts, the body runs once per meta-batch, the interface, and learning on real data."""

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
    random_batch,
    torch_threads,
    trainable,
)
from medmeta.algorithms import create
from medmeta.algorithms.anil import ANIL
from medmeta.nn import MLP, Conv4

BACKBONES = [
    pytest.param(lambda: MLP(10, hidden=(16,)), (10,), id="mlp-batchnorm"),
    pytest.param(lambda: MLP(10, hidden=(16,), batch_norm=False), (10,), id="mlp-plain"),
    pytest.param(lambda: Conv4(1, hidden=8), (1, 28, 28), id="conv4-batchnorm"),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _head(params, features):
    return F.linear(features, params["head.weight"], params["head.bias"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("make", "shape"), BACKBONES)
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_meta_gradients_equal_per_task_loop(make, shape, dtype, first_order):
    """Reference: per task, body features of support and query (one forward, so batch norm
    sees both), then the head's inner loop written out."""
    torch.manual_seed(0)
    learner = ANIL(
        make(), 3, input_shape=shape, inner_lr=0.3, inner_steps=3, first_order=first_order
    )
    learner = learner.to(dtype).train()
    batch = random_batch(4, 3, 2, 3, shape, dtype)
    S = batch.support_x.shape[1]

    def task_loss(t: int) -> torch.Tensor:
        features = learner.backbone(torch.cat([batch.support_x[t], batch.query_x[t]]))
        return loop_task_loss(
            _head,
            learner.adapted_parameters(),
            features[:S],
            batch.support_y[t],
            features[S:],
            batch.query_y[t],
            steps=3,
            rate=lambda step, name: 0.3,
            second_order=not first_order,
        )

    reference = loop_meta_grads(trainable(learner), task_loss, batch.batch_size)
    assert any(k.startswith("backbone.") for k in reference)
    assert_grads_match(learner, batch, reference, TOL[dtype])


def test_only_the_head_adapts_and_body_runs_once(monkeypatch):
    torch.manual_seed(0)
    learner = ANIL(Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), inner_steps=4)
    assert learner.adapted_names() == ["head.weight", "head.bias"]
    calls = []
    forward_tasks = learner.backbone.forward_tasks

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return forward_tasks(*args, **kwargs)

    monkeypatch.setattr(learner.backbone, "forward_tasks", counting)
    batch = random_batch(3, 3, 2, 4, (1, 28, 28), torch.float32)
    learner.meta_loss(batch)
    assert calls == [torch.Size([3, 6 + 12, 1, 28, 28])]  # one forward: all tasks, support + query
    learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert len(calls) == 2
    monkeypatch.undo()
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    for name, p in adapted.classify.backbone.named_parameters():
        assert torch.equal(p, learner.backbone.get_parameter(name)), name
    assert not torch.equal(adapted.classify.head.weight, learner.head.weight)


@pytest.mark.parametrize(("make", "shape"), BACKBONES)
def test_adapt_matches_predict(make, shape):
    torch.manual_seed(0)
    learner = ANIL(make(), 3, input_shape=shape, inner_lr=0.3, eval_steps=5)
    check_adapt_matches_predict(learner, random_batch(1, 3, 4, 2, shape, torch.float32))


def test_spec_round_trip():
    torch.manual_seed(0)
    learner = create("anil", Conv4(1, hidden=8), 3, input_shape=(1, 28, 28), first_order=True)
    batch = random_batch(2, 3, 2, 2, (1, 28, 28), torch.float32)
    check_spec_round_trip(learner, batch, lambda: Conv4(1, hidden=8))


def test_deterministic():
    check_deterministic(lambda: ANIL(Conv4(3, hidden=8), 3, input_shape=(3, 28, 28)))


def test_anil_learns_pbc_blood():
    """3-way 5-shot, held-out classes: 50 meta-steps."""
    torch.manual_seed(0)
    learner = ANIL(Conv4(3, hidden=16), 3, input_shape=(3, 28, 28), inner_steps=2)
    check_learns(meta_train_and_evaluate(learner, shots=5, steps=50))
