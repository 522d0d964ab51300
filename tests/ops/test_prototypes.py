"""prototypes: per-class (weighted) means, gradients, empty classes and bad input."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, labels_covering, rand, randn, strided
from medmeta import ops
from medmeta.ops import _reference

# (B, S, N, D): S support examples of N classes
SHAPES = [
    (1, 1, 1, 1),
    (2, 5, 5, 3),
    (3, 25, 5, 64),
    (2, 40, 20, 17),
    (4, 12, 3, 600),
    (0, 4, 2, 8),
]


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, gen, shape, weighted):
    device, dtype = device_dtype
    B, S, N, D = shape
    e = randn(gen, B, S, D, device=device, requires_grad=True)
    w = (rand(gen, B, S, device=device) + 0.1).requires_grad_() if weighted else None
    labels = labels_covering(gen, B, S, N, device=device)
    ed = e.detach().to(dtype).requires_grad_()
    wd = w.detach().to(dtype).requires_grad_() if weighted else None
    out = ops.prototypes(ed, labels, N, wd)
    ref = _reference.prototypes(e, labels, N, w)
    assert out.shape == (B, N, D) and out.dtype == dtype
    assert_close(out, ref, dtype)
    g = randn(gen, B, N, D, device=device)
    inputs, ref_inputs = ((ed, wd), (e, w)) if weighted else ((ed,), (e,))
    got = torch.autograd.grad(out, inputs, g.to(dtype))
    want = torch.autograd.grad(ref, ref_inputs, g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, dtype)


def test_gradcheck_and_gradgradcheck(device, gen):
    e = randn(gen, 2, 7, 4, device=device, requires_grad=True)
    w = (rand(gen, 2, 7, device=device) + 0.5).requires_grad_()
    labels = labels_covering(gen, 2, 7, 3, device=device)

    def fn(a, b):
        return ops.prototypes(a, labels, 3, b)

    assert torch.autograd.gradcheck(fn, (e, w))
    assert torch.autograd.gradgradcheck(fn, (e, w))
    assert torch.autograd.gradgradcheck(lambda a: ops.prototypes(a, labels, 3), (e,))


def test_known_values():
    e = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(
        ops.prototypes(e, labels, 2), torch.tensor([[[5.0, 5.0], [2.0, 1.0]]], dtype=torch.float64)
    )
    w = torch.tensor([[1.0, 3.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        ops.prototypes(e, labels, 2, w),
        torch.tensor([[[5.0, 5.0], [2.5, 1.5]]], dtype=torch.float64),
    )


def test_non_contiguous_inputs(gen):
    e = randn(gen, 3, 10, 6)
    labels = labels_covering(gen, 3, 10, 4)
    torch.testing.assert_close(
        ops.prototypes(strided(e), labels.t().contiguous().t(), 4), ops.prototypes(e, labels, 4)
    )


def test_class_without_support_names_episode_and_class(device):
    labels = torch.tensor([[0, 1, 2, 0], [0, 1, 1, 0]], device=device)
    with pytest.raises(ValueError, match=r"episode 1, class 2 has no support example"):
        ops.prototypes(torch.zeros(2, 4, 3, device=device), labels, 3)


def test_zero_total_weight_is_an_error():
    w = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"episode 0, class 1"):
        ops.prototypes(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), 2, w)


@pytest.fixture
def checks_off():
    ops.set_value_checks(False)
    yield
    ops.set_value_checks(True)


def _run(fn, backend, monkeypatch):
    """fn() under MEDMETA_BACKEND=backend."""
    monkeypatch.setenv("MEDMETA_BACKEND", backend)
    try:
        return fn()
    finally:
        monkeypatch.delenv("MEDMETA_BACKEND")


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
def test_checks_off_empty_class_is_nan_in_native_and_reference(
    device_dtype, gen, weighted, checks_off, monkeypatch
):
    """A class without support (or with zero total weight) is NaN, the mean of no examples,
    and passes no gradient: native kernels and the pure-torch reference agree."""
    device, dtype = device_dtype
    B, S, N, D = 2, 6, 4, 5
    labels = torch.tensor([[0, 1, 1, 0, 1, 0], [3, 3, 0, 1, 0, 1]], device=device)
    # empty: (0, 2), (0, 3), (1, 2); weighted, class 3 of episode 1 also has zero total weight
    e = randn(gen, B, S, D, device=device, dtype=dtype, requires_grad=True)
    w = None
    if weighted:
        w = (rand(gen, B, S, device=device, dtype=dtype) + 0.1).detach()
        w[1, :2] = 0
        w.requires_grad_()
    inputs = (e, w) if weighted else (e,)
    g = randn(gen, B, N, D, device=device, dtype=dtype)
    results = {}
    for backend in ("native", "reference"):
        out = _run(lambda: ops.prototypes(e, labels, N, w), backend, monkeypatch)
        results[backend] = (out, torch.autograd.grad(out, inputs, g))
    (out, grads), (ref, ref_grads) = results["native"], results["reference"]
    empty = torch.zeros(B, N, dtype=torch.bool, device=device)
    empty[0, 2] = empty[0, 3] = empty[1, 2] = True
    if weighted:
        empty[1, 3] = True
    assert torch.isnan(out[empty]).all() and torch.isnan(ref[empty]).all()
    assert not torch.isnan(out[~empty]).any()
    assert_close(out[~empty], ref[~empty], dtype)
    for a, b in zip(grads, ref_grads, strict=True):
        assert not torch.isnan(a).any() and not torch.isnan(b).any()
        assert_close(a, b, dtype)
    if dtype == torch.float64:  # the classes with examples keep exact gradients

        def present(*args):
            return ops.prototypes(args[0], labels, N, args[1] if weighted else None)[~empty]

        assert torch.autograd.gradcheck(present, inputs)


@pytest.mark.parametrize(
    ("labels", "n_way", "weights", "error", "match"),
    [
        (torch.tensor([[0, 5]]), 2, None, ValueError, r"'labels' must be in \[0, 2\), found 5"),
        (
            torch.tensor([[0.0, 1.0]]),
            2,
            None,
            TypeError,
            r"'labels' must hold integer class indices",
        ),
        (torch.tensor([[0, 1, 1]]), 2, None, ValueError, r"'labels' must have shape \[1,2\]"),
        (torch.tensor([[0, 1]]), 0, None, ValueError, r"'n_way' must be a positive int, got 0"),
        (
            torch.tensor([[0, 1]]),
            2,
            torch.tensor([[1.0, -1.0]]),
            ValueError,
            r"'weights' must be non-negative",
        ),
        (
            torch.tensor([[0, 1]]),
            2,
            torch.tensor([[1.0, float("nan")]]),
            ValueError,
            r"'weights' contains NaN",
        ),
        (
            torch.tensor([[0, 1]]),
            2,
            torch.ones(1, 3),
            ValueError,
            r"'weights' must have shape \[1, 2\]",
        ),
        (
            torch.tensor([[0, 1]]),
            2,
            torch.ones(1, 2, dtype=torch.float64),
            TypeError,
            r"'weights' has dtype torch.float64",
        ),
    ],
)
def test_bad_input_errors(labels, n_way, weights, error, match):
    with pytest.raises(error, match=match):
        ops.prototypes(torch.zeros(1, 2, 3), labels, n_way, weights)
