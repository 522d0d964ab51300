"""inner_update: the fused multi-tensor step, its gradients and second-order MAML."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, rand, randn
from medmeta import ops
from medmeta.ops import _reference

T = 3
SHAPES = [
    (T, 4, 5),
    (T, 5),
    (T, 1),
    (T, 2, 3, 3, 3),
    (T, 70000),
]  # the last spans several work items


def make(gen, device, dtype, kind):
    params = [randn(gen, *s, device=device, requires_grad=True) for s in SHAPES]
    grads = [randn(gen, *s, device=device, requires_grad=True) for s in SHAPES]
    if kind == "float":
        lr = 0.05
    elif kind == "per-layer":
        lr = [(rand(gen, device=device) + 0.01).reshape(()).requires_grad_() for _ in SHAPES]
    elif kind == "per-element":
        lr = [rand(gen, *s[1:], device=device).requires_grad_() for s in SHAPES]
    else:  # per task and element
        lr = [rand(gen, *s, device=device).requires_grad_() for s in SHAPES]
    cast = [t.detach().to(dtype).requires_grad_() for t in params + grads]
    lr_cast = lr if isinstance(lr, float) else [a.detach().to(dtype).requires_grad_() for a in lr]
    return params, grads, lr, cast[: len(SHAPES)], cast[len(SHAPES) :], lr_cast


KINDS = ["float", "per-layer", "per-element", "full"]


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(device_dtype, gen, kind):
    device, dtype = device_dtype
    params, grads, lr, p_d, g_d, lr_d = make(gen, device, dtype, kind)
    out = ops.inner_update(p_d, g_d, lr_d)
    ref = _reference.inner_update(params, grads, lr)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        assert_close(a, b, dtype)
    ups = [randn(gen, *s, device=device) for s in SHAPES]
    inputs = p_d + g_d + ([] if isinstance(lr_d, float) else lr_d)
    ref_inputs = params + grads + ([] if isinstance(lr, float) else lr)
    got = torch.autograd.grad(out, inputs, [u.to(dtype) for u in ups])
    want = torch.autograd.grad(ref, ref_inputs, ups)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_beyond_the_caches_take_streaming_stores_and_match(gen, kind, dtype):
    """More output bytes than kStreamingStoreBytes (8 MiB): the CPU kernel writes around
    the caches, from rows whose starts are not 16-byte aligned (rows of 33333 elements),
    with tails shorter than a vector; the values are the reference's to rounding."""
    shapes = [(3, 7, 33333), (3, 5), (3, 1_100_001)]
    params = [randn(gen, *s, dtype=dtype) for s in shapes]
    grads = [randn(gen, *s, dtype=dtype) for s in shapes]
    if kind == "float":
        lr: float | list[torch.Tensor] = 0.05
    elif kind == "per-layer":
        lr = [rand(gen, dtype=dtype).reshape(()) for _ in shapes]
    elif kind == "per-element":
        lr = [rand(gen, *s[1:], dtype=dtype) for s in shapes]
    else:
        lr = [rand(gen, *s, dtype=dtype) for s in shapes]
    assert sum(p.numel() for p in params) * params[0].element_size() > 8 << 20
    out = ops.inner_update(params, grads, lr)
    for a, b in zip(out, _reference.inner_update(params, grads, lr), strict=True):
        assert_close(a, b, dtype)
    in_place = [p.clone() for p in params]
    ops.inner_update_(in_place, grads, lr)  # in place: normal stores, same values
    for a, b in zip(in_place, out, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_gradgradcheck(device, gen, kind):
    shapes = [(2, 3, 2), (2, 4)]
    ps = [randn(gen, *s, device=device, requires_grad=True) for s in shapes]
    gs = [randn(gen, *s, device=device, requires_grad=True) for s in shapes]
    if kind == "float":
        lrs = []
    elif kind == "per-layer":
        lrs = [randn(gen, 1, device=device, requires_grad=True) for _ in shapes]
    elif kind == "per-element":
        lrs = [randn(gen, *s[1:], device=device, requires_grad=True) for s in shapes]
    else:
        lrs = [randn(gen, *s, device=device, requires_grad=True) for s in shapes]

    def fn(*flat):
        return tuple(
            ops.inner_update(list(flat[:2]), list(flat[2:4]), list(flat[4:]) if lrs else 0.3)
        )

    assert torch.autograd.gradcheck(fn, (*ps, *gs, *lrs))
    assert torch.autograd.gradgradcheck(fn, (*ps, *gs, *lrs))


def test_in_place_form(gen):
    params = [randn(gen, *s) for s in SHAPES]
    grads = [randn(gen, *s) for s in SHAPES]
    lr = [rand(gen, *s[1:]) for s in SHAPES]
    want = _reference.inner_update(params, grads, lr)
    ptrs = [p.data_ptr() for p in params]
    with torch.no_grad():
        out = ops.inner_update_(params, grads, lr)
    assert [p.data_ptr() for p in out] == ptrs
    for a, b in zip(params, want, strict=True):
        torch.testing.assert_close(a, b)


def test_in_place_form_refuses_tracked_params(gen):
    p = randn(gen, 2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"under torch\.no_grad"):
        ops.inner_update_([p], [torch.zeros(2, 3, dtype=p.dtype)], 0.1)


def _maml_meta_grads(theta, alpha, xs, ys, xq, yq, steps, update):
    """Second-order MAML meta-gradients of a linear model for T tasks batched as [T, ...]."""
    tasks = xs.shape[0]
    params = [theta[0].expand(tasks, *theta[0].shape), theta[1].expand(tasks, *theta[1].shape)]
    for _ in range(steps):
        inner = (
            ((torch.baddbmm(params[1].unsqueeze(1), xs, params[0]) - ys) ** 2)
            .mean(dim=(1, 2))
            .sum()
        )
        grads = torch.autograd.grad(inner, params, create_graph=True)
        params = update(params, list(grads), alpha)
    outer = ((torch.baddbmm(params[1].unsqueeze(1), xq, params[0]) - yq) ** 2).mean()
    return torch.autograd.grad(outer, [*theta, *alpha])


def test_second_order_maml_matches_a_per_task_loop(gen):
    tasks, d_in, d_out = 4, 5, 3
    theta = [randn(gen, d_in, d_out, requires_grad=True), randn(gen, d_out, requires_grad=True)]
    alpha = [
        torch.tensor(0.1, dtype=torch.float64, requires_grad=True),
        rand(gen, d_out).requires_grad_(),
    ]
    xs, ys = randn(gen, tasks, 6, d_in), randn(gen, tasks, 6, d_out)
    xq, yq = randn(gen, tasks, 7, d_in), randn(gen, tasks, 7, d_out)
    fused = _maml_meta_grads(theta, alpha, xs, ys, xq, yq, 2, ops.inner_update)

    # plain autograd, one task at a time
    total = [torch.zeros_like(t) for t in (*theta, *alpha)]
    for i in range(tasks):
        w, b = theta
        for _ in range(2):
            inner = ((xs[i] @ w + b - ys[i]) ** 2).mean()
            gw, gb = torch.autograd.grad(inner, (w, b), create_graph=True)
            w, b = w - alpha[0] * gw, b - alpha[1] * gb
        outer = ((xq[i] @ w + b - yq[i]) ** 2).mean() / tasks
        for acc, g in zip(total, torch.autograd.grad(outer, [*theta, *alpha]), strict=True):
            acc += g
    for a, b in zip(fused, total, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_empty_list_and_zero_tasks():
    assert ops.inner_update([], [], 0.1) == []
    out = ops.inner_update([torch.zeros(0, 3)], [torch.zeros(0, 3)], 0.1)
    assert out[0].shape == (0, 3)


@pytest.mark.parametrize("rate", ["per-element", "per-layer", "full"])
def test_empty_parameter_with_learned_rates(device, rate):
    """A [4, 0] parameter is accepted on every device (CUDA used to check the rate's size,
    0 elements per-element, before skipping the empty tensor)."""
    p = torch.zeros(4, 0, device=device, requires_grad=True)
    q = torch.randn(4, 3, device=device, dtype=torch.float64, requires_grad=True)
    shape = {"per-element": (0,), "per-layer": (1,), "full": (4, 0)}[rate]
    lrs = [
        torch.full(shape, 0.5, device=device, requires_grad=True),
        torch.full((1,), 0.5, device=device, dtype=torch.float64, requires_grad=True),
    ]
    out = ops.inner_update([p], [torch.ones(4, 0, device=device)], lrs[:1])
    assert out[0].shape == (4, 0)
    (g,) = torch.autograd.grad(out[0].sum(), lrs[0])
    assert g.shape == shape and not g.any()
    qlr = [lrs[1]]
    with torch.no_grad():
        ops.inner_update_(
            [torch.zeros(4, 0, device=device)], [torch.ones(4, 0, device=device)], 0.1
        )
    (gq,) = torch.autograd.grad(ops.inner_update([q], [q * 2], qlr)[0].sum(), qlr)
    torch.testing.assert_close(gq, -(2 * q).sum().reshape(1))


def test_rate_partials_match_the_cuda_chunks():
    """One partial sum per 16 KiB of a tensor with a single learned rate (the CUDA blocks)."""
    from medmeta.ops.inner_update import rate_partials

    assert rate_partials(0, 4) == 0
    assert rate_partials(1, 4) == 1
    assert rate_partials(4096, 4) == 1
    assert rate_partials(4097, 4) == 2
    assert rate_partials(60000, 4) == 15
    assert rate_partials(8192, 2) == 1 and rate_partials(2049, 8) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_single_learned_rate_gradient_is_deterministic_on_cuda(gen, dtype):
    """A MAML++ per-layer rate over a large tensor: bitwise the same gradient every run, in
    deterministic mode too (the per-block sums are added in block order, no atomics)."""
    shapes = [(4, 300_000), (4, 7), (2, 50_001)]
    ps = [randn(gen, *s, device="cuda", dtype=dtype) for s in shapes]
    gs = [randn(gen, *s, device="cuda", dtype=dtype, requires_grad=True) for s in shapes]
    lrs = [torch.full((1,), 0.1, device="cuda", dtype=dtype, requires_grad=True) for _ in shapes]
    ups = [randn(gen, *s, device="cuda", dtype=dtype) for s in shapes]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(ops.inner_update(ps, gs, lrs), lrs, ups) for _ in range(5)]
    finally:
        torch.use_deterministic_algorithms(before)
    for run in runs[1:]:
        for a, b in zip(run, runs[0], strict=True):
            assert torch.equal(a, b)
    for a, g, u in zip(runs[0], gs, ups, strict=True):
        want = -(g.detach().double() * u.double()).sum()
        assert_close(a.reshape(()), want, dtype)


@pytest.mark.parametrize(
    ("params", "grads", "lr", "error", "match"),
    [
        (
            [torch.zeros(2, 3)],
            [],
            0.1,
            ValueError,
            r"'grads' must have one tensor per parameter \(1\), got 0",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 4)],
            0.1,
            ValueError,
            r"'grads\[0\]' must have shape \[2, 3\]",
        ),
        (
            [torch.zeros(2, 3), torch.zeros(3, 3)],
            [torch.zeros(2, 3), torch.zeros(3, 3)],
            0.1,
            ValueError,
            r"'params\[1\]' has 3 tasks",
        ),
        (
            [torch.zeros(())],
            [torch.zeros(())],
            0.1,
            ValueError,
            r"'params\[0\]' must be shaped \[T, ...\]",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3)],
            [torch.zeros(2)],
            ValueError,
            r"'lr\[0\]' must have one element",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3)],
            [torch.tensor(float("nan"))],
            ValueError,
            r"'lr\[0\]' contains NaN",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3)],
            float("inf"),
            ValueError,
            r"'lr' must be finite",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3)],
            "fast",
            TypeError,
            r"'lr' must be a float or a list of tensors",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3, dtype=torch.float64)],
            0.1,
            TypeError,
            r"'grads\[0\]' has dtype torch.float64",
        ),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.1, TypeError, r"must be lists of tensors"),
        (
            [torch.zeros(2, 3), [[0.0] * 3] * 2],
            [torch.zeros(2, 3), torch.zeros(2, 3)],
            0.1,
            TypeError,
            r"'params\[1\]' must be a torch.Tensor, got list",
        ),
    ],
)
def test_bad_input_errors(params, grads, lr, error, match):
    with pytest.raises(error, match=match):
        ops.inner_update(params, grads, lr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_rate_is_named_wherever_it_is(dtype, bad):
    """The rates are screened in blocks of 4096 values: a bad value is found in any block
    of any tensor of the list, and the tensor is named."""
    params = [torch.zeros(2, n, dtype=dtype) for n in (3, 5000, 9000)]
    grads = [torch.zeros_like(p) for p in params]
    for k, position in ((2, 8191), (2, 8192), (1, 4095), (1, 0), (0, 2)):
        lrs = [torch.full(p.shape[1:], 0.1, dtype=dtype) for p in params]
        lrs[k][position] = bad
        with pytest.raises(ValueError, match=rf"'lr\[{k}\]' contains NaN or infinite"):
            ops.inner_update(params, grads, lrs)
    lrs = [torch.full(p.shape[1:], 1e30, dtype=dtype) for p in params]  # large is finite
    assert len(ops.inner_update(params, grads, lrs)) == 3
