"""prototypical_loss: fused forward/backward against the composite reference."""

from __future__ import annotations

import pytest
import torch

from helpers import SHAPES, assert_close, randint, randn, strided
from medmeta import ops
from medmeta.ops import _reference

METRICS = ["sqeuclidean", "euclidean", "cosine", "dot"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, gen, metric, shape):
    device, dtype = device_dtype
    B, Q, N, D = shape
    q = randn(gen, B, Q, D, device=device, requires_grad=True)
    p = randn(gen, B, N, D, device=device, requires_grad=True)
    t = randint(gen, N, B, Q, device=device)
    qd, pd = q.detach().to(dtype).requires_grad_(), p.detach().to(dtype).requires_grad_()
    loss, acc = ops.prototypical_loss(
        qd, pd, t, metric, temperature=0.5 if metric != "dot" else 8.0
    )
    ref_loss, ref_acc = _reference.prototypical_loss(
        q, p, t, metric, 0.5 if metric != "dot" else 8.0
    )
    assert loss.shape == (B,) and acc.shape == (B,) and loss.dtype == dtype
    assert_close(loss, ref_loss, dtype)
    if dtype in (torch.float64, torch.float32):  # argmax ties may flip in half precision
        torch.testing.assert_close(acc.double().cpu(), ref_acc.detach().cpu())
    g = randn(gen, B, device=device)
    got = torch.autograd.grad(loss, (qd, pd), g.to(dtype))
    want = torch.autograd.grad(ref_loss, (q, p), g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_and_gradgradcheck(device, gen, metric):
    q = randn(gen, 2, 5, 4, device=device, requires_grad=True)
    p = randn(gen, 2, 3, 4, device=device, requires_grad=True)
    t = randint(gen, 3, 2, 5, device=device)

    def fn(a, b):
        return ops.prototypical_loss(a, b, t, metric, temperature=0.7)[0]

    assert torch.autograd.gradcheck(fn, (q, p))
    assert torch.autograd.gradgradcheck(fn, (q, p))


def test_loss_is_the_composite_cross_entropy(gen):
    q, p = randn(gen, 4, 10, 6), randn(gen, 4, 5, 6)
    t = randint(gen, 5, 4, 10)
    loss, acc = ops.prototypical_loss(q, p, t)
    logits = -(torch.cdist(q, p) ** 2)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), t.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, want.reshape(4, 10).mean(1))
    torch.testing.assert_close(acc, (logits.argmax(-1) == t).double().mean(1))


def test_accuracy_ties_pick_the_first_class():
    q = torch.zeros(1, 2, 3, dtype=torch.float64)
    p = torch.ones(1, 4, 3, dtype=torch.float64)  # all classes equally far
    loss, acc = ops.prototypical_loss(q, p, torch.tensor([[0, 2]]))
    torch.testing.assert_close(acc, torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(loss, torch.log(torch.tensor([4.0], dtype=torch.float64)))


def test_non_contiguous_and_int32_targets(gen):
    q, p = randn(gen, 2, 6, 9), randn(gen, 2, 3, 9)
    t = randint(gen, 3, 2, 6)
    want = ops.prototypical_loss(q, p, t)
    got = ops.prototypical_loss(strided(q), strided(p), t.to(torch.int32).t().contiguous().t())
    torch.testing.assert_close(got, want)


def test_empty_batch(device):
    q = torch.zeros(0, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    p = torch.zeros(0, 3, 4, dtype=torch.float64, device=device)
    loss, acc = ops.prototypical_loss(q, p, torch.zeros(0, 5, dtype=torch.int64, device=device))
    assert loss.shape == (0,) and acc.shape == (0,)
    loss.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize(
    ("targets", "kwargs", "error", "match"),
    [
        (torch.tensor([[0, 3]]), {}, ValueError, r"'targets' must be in \[0, 3\), found 3"),
        (torch.tensor([[0, -1]]), {}, ValueError, r"'targets' must be in \[0, 3\), found -1"),
        (torch.tensor([[0.0, 1.0]]), {}, TypeError, r"'targets' must hold integer class indices"),
        (torch.tensor([0, 1]), {}, ValueError, r"'targets' must be a 2-D tensor \[1,2\]"),
        (
            torch.tensor([[0, 1, 2]]),
            {},
            ValueError,
            r"'targets' must have shape \[1,2\], got \[1, 3\]",
        ),
        (
            torch.tensor([[0, 1]]),
            {"temperature": 0.0},
            ValueError,
            r"'temperature' must be a positive finite float",
        ),
        (
            torch.tensor([[0, 1]]),
            {"temperature": "hot"},
            TypeError,
            r"'temperature' must be a float",
        ),
    ],
)
def test_bad_input_errors(targets, kwargs, error, match):
    q, p = torch.zeros(1, 2, 4), torch.randn(1, 3, 4)
    with pytest.raises(error, match=match):
        ops.prototypical_loss(q, p, targets, **kwargs)


def test_empty_class_and_query_dimensions_are_errors():
    with pytest.raises(ValueError, match="at least one class"):
        ops.prototypical_loss(
            torch.zeros(1, 2, 4), torch.zeros(1, 0, 4), torch.zeros(1, 2, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="at least one query"):
        ops.prototypical_loss(
            torch.zeros(1, 0, 4), torch.zeros(1, 3, 4), torch.zeros(1, 0, dtype=torch.int64)
        )


def test_out_of_range_targets_without_value_checks_give_nan_not_a_crash():
    ops.set_value_checks(False)
    try:
        loss, _ = ops.prototypical_loss(
            torch.zeros(1, 2, 4), torch.randn(1, 3, 4), torch.tensor([[0, 99]])
        )
    finally:
        ops.set_value_checks(True)
    assert torch.isnan(loss).all()
