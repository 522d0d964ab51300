"""Batched pairwise distances between the rows of episodes."""

from __future__ import annotations

import torch

from medmeta.ops import _checks, _native, _reference
from medmeta.ops._register import NativeOp

_OP = "pairwise_distance"
_METRICS = tuple(_native.METRIC_CODES)
_COSINE = _native.METRIC_CODES["cosine"]


def _checked(x: object, y: object, metric: object) -> tuple[torch.Tensor, torch.Tensor, int]:
    code = _checks.metric(_OP, metric)
    x = _checks.tensor(_OP, "x", x, 3, "[B,Q,D]")
    y = _checks.tensor(_OP, "y", y, 3, "[B,N,D]")
    x, y = _checks.autocast_float32(x, y)
    _checks.floating(_OP, ("x", "y"), (x, y))
    _checks.same_size(_OP, "batch size (dim 0) equal to x's", x.shape[0], "y", y.shape[0])
    _checks.same_size(_OP, "feature size (dim 2) equal to x's", x.shape[2], "y", y.shape[2])
    return x.contiguous(), y.contiguous(), code


def _forward(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    B, Q, D = x.shape
    N = y.shape[1]
    out = x.new_empty((B, Q, N))
    _native.kernel("distance_forward")(
        x, x=x.data_ptr(), y=y.data_ptr(), out=out.data_ptr(), ws=0,
        B=B, Q=Q, N=N, D=D, metric=metric,
    )  # fmt: skip
    return out


def _fake(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


def _backward(upstream, args, outputs, needs) -> tuple[torch.Tensor | None, ...]:
    (grad,), (x, y, metric), (out,), (need_x, need_y) = upstream, args, outputs, needs
    grad = grad.contiguous()  # kept alive (bound) until the kernel has run
    B, Q, D = x.shape
    N = y.shape[1]
    gx = torch.empty_like(x) if need_x else None
    gy = torch.empty_like(y) if need_y else None
    # the CUDA kernels keep the cosine's row norms there; the CPU kernels need nothing
    ws = _native.workspace(x, B * (Q + N)) if metric == _COSINE and x.is_cuda else None
    _native.kernel("distance_backward")(
        x, g=grad.data_ptr(), x=x.data_ptr(),
        y=y.data_ptr(), out=out.data_ptr(), gx=_native.ptr(gx), gy=_native.ptr(gy),
        ws=_native.ptr(ws), B=B, Q=Q, N=N, D=D, metric=metric,
    )  # fmt: skip
    return gx, gy


_op = NativeOp(
    _OP,
    checks=_checked,
    forward=_forward,
    fake=_fake,
    backward=_backward,
    reference=lambda x, y, metric: _reference.pairwise_distance(x, y, _METRICS[metric]),
    result=lambda out: out,
    differentiable=(0, 1),
    saved_outputs=(0,),
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
    return _op.call(x, y, metric)
