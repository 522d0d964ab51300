"""The one registration path (medmeta.ops._register): what it registers and how a call is
dispatched. The ops' values, gradients and opcheck are tested in each op's own file."""

from __future__ import annotations

import pytest
import torch

from medmeta import ops
from medmeta.ops import _register
from medmeta.ops.distance import _op as distance_op
from medmeta.ops.inner_update import _op as update_op

OPS = ("pairwise_distance", "prototypical_loss", "prototypes", "masked_prototypes", "inner_update")


@pytest.mark.parametrize("name", OPS)
def test_every_op_registers_a_forward_and_a_backward_custom_op(name):
    forward = getattr(torch.ops.medmeta, name).default
    backward = getattr(torch.ops.medmeta, f"{name}_backward").default
    arguments = [a.name for a in backward._schema.arguments]
    assert arguments[0] == "upstream" and arguments[-2:] == ["results", "needs"]
    assert arguments[1:-2] == [a.name for a in forward._schema.arguments]


def test_argument_kinds_parse_a_schema():
    schema = "(Tensor x, Tensor? w, SymInt n, float t, Tensor[] ps) -> Tensor[]"
    assert _register.argument_kinds(schema) == ("Tensor", "Tensor?", "value", "value", "Tensor[]")


def _count_native_calls(monkeypatch, op):
    calls = []
    for path in ("_forward", "_inference"):
        native = getattr(op, path)
        monkeypatch.setattr(op, path, lambda *a, native=native: calls.append(1) or native(*a))
    monkeypatch.setattr(op, "call", op._dispatcher())  # the dispatcher binds them when made
    return calls


def test_a_call_without_gradients_skips_autograd(gen, monkeypatch):
    calls = _count_native_calls(monkeypatch, distance_op)
    x, y = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    out = ops.pairwise_distance(x, y)
    assert out.grad_fn is None and calls == [1]
    with torch.no_grad():
        assert ops.pairwise_distance(x.requires_grad_(), y).grad_fn is None


def test_a_call_with_gradients_runs_the_eager_function(gen):
    x = torch.randn(2, 3, 4, generator=gen, requires_grad=True)
    out = ops.pairwise_distance(x, torch.randn(2, 5, 4, generator=gen))
    assert type(out.grad_fn).__name__ == "_pairwise_distance_functionBackward"


def test_the_reference_backend_never_calls_the_native_kernels(gen, monkeypatch):
    monkeypatch.setenv("MEDMETA_BACKEND", "reference")
    calls = _count_native_calls(monkeypatch, distance_op)
    x, y = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    torch.testing.assert_close(ops.pairwise_distance(x, y), torch.cdist(x, y) ** 2)
    assert calls == []


def test_list_arguments_get_one_gradient_each_and_none_where_not_needed(gen):
    params = [
        torch.randn(2, 3, generator=gen, requires_grad=True),
        torch.randn(2, 4, generator=gen),
    ]
    grads = [torch.randn(2, 3, generator=gen), torch.randn(2, 4, generator=gen, requires_grad=True)]
    new = update_op(params, grads, 0.5)
    g_p0, g_g1 = torch.autograd.grad(sum(t.sum() for t in new), [params[0], grads[1]])
    torch.testing.assert_close(g_p0, torch.ones(2, 3))
    torch.testing.assert_close(g_g1, torch.full((2, 4), -0.5))


def test_the_backward_op_never_returns_an_input(gen):
    """The gradient of params is the upstream gradient itself; the custom backward op must
    return a copy (custom-op outputs may not alias inputs)."""
    up = [torch.randn(2, 3, generator=gen)]
    params, grads = [torch.randn(2, 3, generator=gen)], [torch.randn(2, 3, generator=gen)]
    (g_params,) = torch.ops.medmeta.inner_update_backward(
        up, params, grads, [], 0.1, [None], [True, False, False]
    )
    torch.testing.assert_close(g_params, up[0])
    assert g_params.data_ptr() != up[0].data_ptr()


def test_a_kernel_call_must_name_exactly_the_bindings_arguments():
    """Kernels are called by name (the order is the binding's own), so a swapped pair of
    sizes cannot reach the kernel; a misspelt, missing or extra name is an error."""
    from medmeta.ops import _native

    x, out = torch.tensor([[[1.0, 2.0]]]), torch.zeros(1, 1, 2)
    y = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    sizes = dict(B=1, Q=1, N=2, D=2)
    distance = _native.kernel("distance_forward")
    distance(x, x=x.data_ptr(), y=y.data_ptr(), out=out.data_ptr(), ws=0, metric=0, **sizes)
    torch.testing.assert_close(out, torch.tensor([[[5.0, 4.0]]]))
    pointers = dict(x=x.data_ptr(), y=y.data_ptr(), out=out.data_ptr(), ws=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'metrik'"):
        distance(x, **pointers, **sizes, metrik=0)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'metric'"):
        distance(x, **pointers, **sizes)
    with pytest.raises(TypeError, match="positional"):
        distance(x, x.data_ptr(), y.data_ptr(), out.data_ptr(), 0, 1, 1, 2, 2, 0)
    scan = _native.kernel("first_negative_or_nonfinite")
    negative = torch.tensor([1.0, -2.0])
    assert scan(v=negative.data_ptr(), n=2, dt=0) == 1 and scan(v=x.data_ptr(), n=2, dt=0) == -1
