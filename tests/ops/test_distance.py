"""pairwise_distance against its float64 reference, gradients, layouts and bad input."""

from __future__ import annotations

import pytest
import torch

from helpers import SHAPES, assert_close, randn, strided
from medmeta import ops
from medmeta.ops import _reference

METRICS = ["sqeuclidean", "euclidean", "cosine", "dot"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, gen, metric, shape):
    device, dtype = device_dtype
    B, Q, N, D = shape
    x = randn(gen, B, Q, D, device=device, requires_grad=True)
    y = randn(gen, B, N, D, device=device, requires_grad=True)
    xd, yd = (x.detach().to(dtype).requires_grad_(), y.detach().to(dtype).requires_grad_())
    out = ops.pairwise_distance(xd, yd, metric)
    ref = _reference.pairwise_distance(x, y, metric)
    assert out.shape == (B, Q, N) and out.dtype == dtype and out.device == x.device
    assert_close(out, ref, dtype)
    g = randn(gen, B, Q, N, device=device)
    got = torch.autograd.grad(out, (xd, yd), g.to(dtype))
    want = torch.autograd.grad(ref, (x, y), g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, dtype)


# Many prototypes (N >= 8: the CPU's matrix-product kernels): whole and partial vectors and
# panels of prototypes, query counts off the blocks, channels off the vectors and the
# channel blocks, one episode split over the threads (the segmentation score head's shape).
MANY_PROTOTYPES = [
    (1, 9, 8, 5),
    (2, 37, 22, 29),
    (3, 50, 42, 70),
    (1, 301, 57, 24),
    (1, 700, 42, 64),
]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", MANY_PROTOTYPES, ids=str)
def test_many_prototypes_match_reference(device_dtype, gen, metric, shape):
    device, dtype = device_dtype
    B, Q, N, D = shape
    x = randn(gen, B, Q, D, device=device, requires_grad=True)
    y = randn(gen, B, N, D, device=device, requires_grad=True)
    xd, yd = (x.detach().to(dtype).requires_grad_(), y.detach().to(dtype).requires_grad_())
    out = ops.pairwise_distance(xd, yd, metric)
    ref = _reference.pairwise_distance(x, y, metric)
    assert_close(out, ref, dtype)
    g = randn(gen, B, Q, N, device=device)
    got = torch.autograd.grad(out, (xd, yd), g.to(dtype))
    want = torch.autograd.grad(ref, (x, y), g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, dtype)
    # each input's gradient alone (the kernels skip the other one)
    for i, inp in enumerate((xd, yd)):
        (alone,) = torch.autograd.grad(ops.pairwise_distance(xd, yd, metric), (inp,), g.to(dtype))
        assert_close(alone, want[i], dtype)


@pytest.mark.parametrize("metric", METRICS)
def test_many_prototypes_edge_cases_as_few(gen, metric):
    """Zero rows (the cosine's norm floor) and coinciding rows (the euclidean clamp) get the
    same values and gradients from the kernels of many prototypes (N = 9) as from those of
    few (the same prototypes in two calls of N = 5 and 4)."""
    x = randn(gen, 2, 10, 6)
    y = randn(gen, 2, 9, 6)
    x[0, 3] = 0
    y[1, 2] = 0
    x[1, 4] = y[1, 5]
    x[1, 7] = y[1, 1]
    g = randn(gen, 2, 10, 9)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    many = ops.pairwise_distance(xa, ya, metric)
    many_grads = torch.autograd.grad(many, (xa, ya), g)
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    few = torch.cat([ops.pairwise_distance(xb, yb[:, :5], metric),
                     ops.pairwise_distance(xb, yb[:, 5:], metric)], 2)  # fmt: skip
    few_grads = torch.autograd.grad(few, (xb, yb), g)
    torch.testing.assert_close(many, few, rtol=1e-12, atol=1e-12)
    for a, b in zip(many_grads, few_grads, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_many_prototypes_empty_queries():
    y = torch.ones(2, 9, 6, dtype=torch.float64, requires_grad=True)
    out = ops.pairwise_distance(torch.zeros(2, 0, 6, dtype=torch.float64), y, "cosine")
    assert out.shape == (2, 0, 9)
    (gy,) = torch.autograd.grad(out.sum(), y)
    assert torch.equal(gy, torch.zeros_like(y))


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_and_gradgradcheck(device, gen, metric):
    x = randn(gen, 2, 4, 5, device=device, requires_grad=True)
    y = randn(gen, 2, 3, 5, device=device, requires_grad=True)

    def fn(a, b):
        return ops.pairwise_distance(a, b, metric)

    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


def test_gradient_of_one_input_only(gen):
    x = randn(gen, 2, 4, 5, requires_grad=True)
    y = randn(gen, 2, 3, 5)
    assert torch.autograd.gradcheck(lambda a: ops.pairwise_distance(a, y), (x,))


def test_identical_rows_have_zero_distance_and_finite_gradient(gen):
    x = randn(gen, 1, 3, 8, requires_grad=True)
    out = ops.pairwise_distance(x, x.detach().clone(), "euclidean")
    assert torch.allclose(out.diagonal(dim1=1, dim2=2), torch.zeros(1, 3, dtype=x.dtype), atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_non_contiguous_inputs(device, gen):
    x = randn(gen, 3, 6, 10, device=device)
    y = randn(gen, 3, 4, 10, device=device)
    xs, ys = strided(x), strided(y)
    assert not xs.is_contiguous()
    torch.testing.assert_close(ops.pairwise_distance(xs, ys), ops.pairwise_distance(x, y))
    # a transposed batch is another non-contiguous layout
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(
        ops.pairwise_distance(xt, y, "cosine"), ops.pairwise_distance(x, y, "cosine")
    )


@pytest.mark.parametrize("shape", [(0, 5, 3, 4), (2, 0, 3, 4), (2, 5, 0, 4)], ids=str)
def test_empty_inputs(device, shape):
    B, Q, N, D = shape
    x = torch.zeros(B, Q, D, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.zeros(B, N, D, dtype=torch.float64, device=device, requires_grad=True)
    out = ops.pairwise_distance(x, y)
    assert out.shape == (B, Q, N)
    out.sum().backward()
    assert x.grad.shape == x.shape and float(x.grad.abs().sum()) == 0.0


def test_zero_feature_dimension(gen):
    x = torch.zeros(2, 3, 0, dtype=torch.float64)
    y = torch.zeros(2, 4, 0, dtype=torch.float64)
    torch.testing.assert_close(
        ops.pairwise_distance(x, y), torch.zeros(2, 3, 4, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "match"),
    [
        (
            torch.zeros(3, 4),
            torch.zeros(1, 3, 4),
            {},
            ValueError,
            r"'x' must be a 3-D tensor \[B,Q,D\], got shape \[3, 4\]",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(3, 3, 4),
            {},
            ValueError,
            r"'y' must have batch size .* 2, got 3",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 5),
            {},
            ValueError,
            r"'y' must have feature size .* 4, got 5",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 4, dtype=torch.float64),
            {},
            TypeError,
            r"'y' has dtype torch.float64 but 'x' has torch.float32",
        ),
        (
            torch.zeros(2, 3, 4, dtype=torch.int64),
            torch.zeros(2, 3, 4, dtype=torch.int64),
            {},
            TypeError,
            r"'x' must have dtype float32, float64 on cpu, got torch.int64",
        ),
        (
            torch.zeros(2, 3, 4, dtype=torch.float16),
            torch.zeros(2, 3, 4, dtype=torch.float16),
            {},
            TypeError,
            r"on cpu, got torch.float16",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 4),
            {"metric": "manhattan"},
            ValueError,
            r"'metric' must be one of .*'manhattan'",
        ),
        (
            [[1.0]],
            torch.zeros(2, 3, 4),
            {},
            TypeError,
            r"'x' must be a torch.Tensor \[B,Q,D\], got list",
        ),
    ],
)
def test_bad_input_errors(x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.pairwise_distance(x, y, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_mixed_devices_error():
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        ops.pairwise_distance(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, device="cuda"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_runs_on_the_current_stream(gen):
    x = randn(gen, 8, 15, 64, device="cuda", dtype=torch.float32)
    y = randn(gen, 8, 5, 64, device="cuda", dtype=torch.float32)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = ops.pairwise_distance(x, y)
    side.synchronize()
    assert_close(out, _reference.pairwise_distance(x.double(), y.double()), torch.float32)
