"""Backbones: shapes, and the task-batched forward against a per-task loop, including
second-order MAML meta-gradients through batch norm (where vmap is wrong)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from medmeta import ops
from medmeta.nn import (
    MLP,
    Conv1dNet,
    Conv4,
    ResNet12,
    embedding_dim,
    make_backbone,
    task_parameters,
)
from medmeta.nn.layers import Linear, TaskSequential

CASES = [
    ("mlp", lambda: MLP(12, hidden=(16, 8)), (12,)),
    ("conv4", lambda: Conv4(3, hidden=8), (3, 28, 28)),
    ("resnet12", lambda: ResNet12(1, channels=(4, 6, 8, 8)), (1, 32, 32)),
    ("conv1d", lambda: Conv1dNet(1, channels=(4, 6), kernel_size=5), (1, 40)),
]


@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=[c[0] for c in CASES])
def test_task_forward_equals_per_task_functional_call(name, make, shape):
    torch.manual_seed(0)
    net = make().double()
    T, n = 3, 5
    x = torch.randn(T, n, *shape, dtype=torch.float64)
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in task_parameters(net, T).items()}
    batched = net.forward_tasks(x, params)
    for t in range(T):
        single = functional_call(net, {k: v[t] for k, v in params.items()}, (x[t],))
        torch.testing.assert_close(batched[t], single, atol=1e-10, rtol=1e-10)
    assert batched.shape == (T, n, embedding_dim(net, shape))


def _maml_meta_grads(model, x_s, y_s, x_q, y_q, batched):
    """Two-step second-order MAML meta-gradient; batched over tasks or one task at a time."""
    T = x_s.shape[0]
    names = [k for k, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    if batched:
        fast = list(task_parameters(model, T).values())
        for _ in range(2):
            logits = model.forward_tasks(x_s, dict(zip(names, fast, strict=True)))
            loss = (
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), y_s.flatten(), reduction="sum"
                )
                / y_s.shape[1]
            )
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = ops.inner_update(fast, list(grads), 0.1)
        logits = model.forward_tasks(x_q, dict(zip(names, fast, strict=True)))
        outer = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y_q.flatten())
        return torch.autograd.grad(outer, theta)
    total = [torch.zeros_like(p) for p in theta]
    for t in range(T):
        fast = list(theta)
        for _ in range(2):
            logits = functional_call(model, dict(zip(names, fast, strict=True)), (x_s[t],))
            loss = torch.nn.functional.cross_entropy(logits, y_s[t])
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - 0.1 * g for p, g in zip(fast, grads, strict=True)]
        logits = functional_call(model, dict(zip(names, fast, strict=True)), (x_q[t],))
        outer = torch.nn.functional.cross_entropy(logits, y_q[t]) / T
        for acc, g in zip(total, torch.autograd.grad(outer, theta), strict=True):
            acc += g
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: MLP(10, hidden=(16,)), (10,)), (lambda: Conv4(1, hidden=8), (1, 28, 28))],
    ids=["mlp", "conv4-batchnorm"],
)
def test_second_order_maml_batched_equals_loop(make, shape, dtype):
    torch.manual_seed(1)
    backbone = make()
    dim = embedding_dim(backbone, shape)
    model = TaskSequential(backbone, Linear(dim, 3)).to(dtype)
    T, K, Q = 4, 2, 3
    x_s, x_q = (
        torch.randn(T, 3 * K, *shape, dtype=dtype),
        torch.randn(T, 3 * Q, *shape, dtype=dtype),
    )
    y_s = torch.arange(3).repeat_interleave(K).expand(T, -1)
    y_q = torch.arange(3).repeat_interleave(Q).expand(T, -1)
    batched = _maml_meta_grads(model, x_s, y_s, x_q, y_q, batched=True)
    loop = _maml_meta_grads(model, x_s, y_s, x_q, y_q, batched=False)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for a, b in zip(batched, loop, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_make_backbone_and_shapes():
    assert embedding_dim(make_backbone("conv4", (3, 28, 28)), (3, 28, 28)) == 64
    assert embedding_dim(make_backbone("conv4", (1, 64, 64)), (1, 64, 64)) == 64 * 16
    assert embedding_dim(make_backbone("mlp", (765,)), (765,)) == 128
    assert embedding_dim(make_backbone("conv1d", (1, 250)), (1, 250)) == 64
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("vit", (3, 28, 28))
