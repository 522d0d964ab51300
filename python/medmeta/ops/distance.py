"""Batched pairwise distances between the rows of episodes."""

from __future__ import annotations

import torch

from medmeta.ops import _autograd, _checks, _native, _reference

_OP = "pairwise_distance"
_METRICS = tuple(_native.METRIC_CODES)


def _forward_native(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    x, y = x.contiguous(), y.contiguous()
    B, Q, D = x.shape
    N = y.shape[1]
    out = x.new_empty((B, Q, N))
    ws = torch.empty(B * (Q + N), dtype=_native.acc_dtype(x.dtype), device=x.device)
    _native.launch(
        "distance_forward",
        x,
        x=x.data_ptr(),
        y=y.data_ptr(),
        out=out.data_ptr(),
        ws=ws.data_ptr(),
        B=B,
        Q=Q,
        N=N,
        D=D,
        metric=metric,
    )
    return out


def _backward_native(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor,
    metric: int,
    need_x: bool,
    need_y: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad, x, y, out = grad.contiguous(), x.contiguous(), y.contiguous(), out.contiguous()
    B, Q, D = x.shape
    N = y.shape[1]
    gx = torch.empty_like(x) if need_x else x.new_empty(0)
    gy = torch.empty_like(y) if need_y else y.new_empty(0)
    ws = torch.empty(B * (Q + N), dtype=_native.acc_dtype(x.dtype), device=x.device)
    _native.launch(
        "distance_backward",
        x,
        g=grad.data_ptr(),
        x=x.data_ptr(),
        y=y.data_ptr(),
        out=out.data_ptr(),
        gx=gx.data_ptr() if need_x else 0,
        gy=gy.data_ptr() if need_y else 0,
        ws=ws.data_ptr(),
        B=B,
        Q=Q,
        N=N,
        D=D,
        metric=metric,
    )
    return gx, gy


@torch.library.custom_op("medmeta::pairwise_distance", mutates_args=())
def _distance_op(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    return _forward_native(x, y, metric)


@_distance_op.register_fake
def _(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


@torch.library.custom_op("medmeta::pairwise_distance_backward", mutates_args=())
def _distance_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor,
    metric: int,
    need_x: bool,
    need_y: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_native(grad, x, y, out, metric, need_x, need_y)


@_distance_backward_op.register_fake
def _(grad, x, y, out, metric, need_x, need_y):
    return (
        torch.empty_like(x) if need_x else x.new_empty(0),
        torch.empty_like(y) if need_y else y.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, y, metric = inputs
    ctx.save_for_backward(x, y, output)
    ctx.metric = metric


def _backward(ctx, grad: torch.Tensor, native) -> tuple:
    x, y, out = ctx.saved_tensors
    need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if _autograd.higher_order():
        gx, gy = _autograd.reference_vjp(
            lambda a, b: _reference.pairwise_distance(a, b, _METRICS[ctx.metric]),
            (x, y),
            (need_x, need_y),
            (grad,),
        )
        return gx, gy, None
    gx, gy = native(grad, x, y, out, ctx.metric, need_x, need_y)
    return (gx if need_x else None), (gy if need_y else None), None


_distance_op.register_autograd(
    lambda ctx, grad: _backward(ctx, grad, _distance_backward_op), setup_context=_setup_context
)
_DistanceFunction = _autograd.native_function(
    "_DistanceFunction",
    _forward_native,
    _setup_context,
    lambda ctx, grad: _backward(ctx, grad, _backward_native),
)


def pairwise_distance(
    x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean"
) -> torch.Tensor:
    """Distances between every query row and every support/prototype row of each episode.

    Args:
        x: queries ``[B, Q, D]`` (B episodes).
        y: prototypes or support rows ``[B, N, D]``.
        metric: ``"sqeuclidean"`` (Snell et al. 2017), ``"euclidean"``, ``"cosine"``
            (``1 - cos``, Vinyals et al. 2016) or ``"dot"`` (the negative inner product, so
            that ``-distance`` is always a logit).

    Returns:
        ``[B, Q, N]`` distances, smaller is closer. Differentiable in x and y (to any order).
    """
    code = _checks.metric(_OP, metric)
    x = _checks.tensor(_OP, "x", x, 3, "[B,Q,D]")
    y = _checks.tensor(_OP, "y", y, 3, "[B,N,D]")
    x, y = _checks.autocast_float32(x, y)
    _checks.floating(_OP, ("x", "y"), (x, y))
    _checks.same_size(_OP, "batch size (dim 0) equal to x's", x.shape[0], "y", y.shape[0])
    _checks.same_size(_OP, "feature size (dim 2) equal to x's", x.shape[2], "y", y.shape[2])
    if _native.use_reference():
        return _reference.pairwise_distance(x, y, metric)
    x, y = x.contiguous(), y.contiguous()
    if torch.compiler.is_compiling():
        return _distance_op(x, y, code)
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        return _forward_native(x, y, code)  # nothing to differentiate: skip autograd
    return _DistanceFunction.apply(x, y, code)
