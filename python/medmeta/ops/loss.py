"""The fused prototypical loss: distances, log-softmax and NLL in one native pass."""

from __future__ import annotations

import torch

from medmeta.ops import _checks, _native, _reference
from medmeta.ops._register import NativeOp

_OP = "prototypical_loss"
_METRICS = tuple(_native.METRIC_CODES)
_COSINE = _native.METRIC_CODES["cosine"]
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _checked(
    queries: object, prototypes: object, targets: object, metric: object, temperature: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float]:
    code = _checks.metric(_OP, metric)
    temperature = _checks.positive_float(_OP, "temperature", temperature)
    queries = _checks.tensor(_OP, "queries", queries, 3, "[B,Q,D]")
    prototypes = _checks.tensor(_OP, "prototypes", prototypes, 3, "[B,N,D]")
    if queries.is_cuda:
        queries, prototypes = _checks.autocast_float32(queries, prototypes)
    _checks.floating(_OP, ("queries", "prototypes"), (queries, prototypes))
    B, Q, D = queries.shape
    Bp, N, Dp = prototypes.shape
    if Bp != B or Dp != D or (B > 0 and (N == 0 or Q == 0)):
        _explain_shapes(queries, prototypes)
    targets = _checks.labels(_OP, "targets", targets, (B, Q), N, queries)
    return queries.contiguous(), prototypes.contiguous(), targets, code, temperature


def _explain_shapes(queries: torch.Tensor, prototypes: torch.Tensor) -> None:
    """Raise the error that names what :func:`_checked` found wrong in the shapes."""
    (B, Q, D), N = queries.shape, prototypes.shape[1]
    _checks.same_size(
        _OP, "batch size (dim 0) equal to queries'", B, "prototypes", prototypes.shape[0]
    )
    _checks.same_size(
        _OP, "feature size (dim 2) equal to queries'", D, "prototypes", prototypes.shape[2]
    )
    for name, t, size, what in (
        ("prototypes", prototypes, N, "class"),
        ("queries", queries, Q, "query per episode"),
    ):
        if size == 0:
            raise ValueError(
                f"{_OP}: '{name}' must have at least one {what} (dim 1), got shape {list(t.shape)}"
            )


def _forward(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    metric: int,
    temperature: float,
) -> Outputs:
    (B, Q, D), N = queries.shape, prototypes.shape[1]
    dist, lse = _native.workspace(queries, B, Q, N), _native.workspace(queries, B, Q)
    ws = _native.scratch(queries, 2 * B * Q)  # per-query NLL and hits (CPU), tile sums (CUDA)
    args = (queries, prototypes, targets, metric, temperature, B, Q, N, D)
    loss, accuracy = _launch_forward(*args, dist.data_ptr(), lse.data_ptr(), ws.data_ptr())
    return loss, accuracy, dist, lse


def _inference(queries, prototypes, targets, metric, temperature) -> tuple[torch.Tensor, ...]:
    """The forward when no gradient is needed: dist, lse and the per-query values in one
    scratch buffer (on the CPU, reused across calls)."""
    (B, Q, D), N = queries.shape, prototypes.shape[1]
    scratch = _native.scratch(queries, B * Q * (N + 3))
    dist, step = scratch.data_ptr(), scratch.element_size()
    lse, ws = dist + B * Q * N * step, dist + B * Q * (N + 1) * step
    args = (queries, prototypes, targets, metric, temperature, B, Q, N, D)
    return _launch_forward(*args, dist, lse, ws)


def _launch_forward(
    q, p, t, metric, temperature, B, Q, N, D, dist, lse, ws
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel into new ``loss`` and ``accuracy`` ``[B]`` and the given
    buffers (addresses); raise if a target is out of range (checked by the CPU kernel)."""
    loss, accuracy = q.new_empty(B), q.new_empty(B)
    bad = _native.kernel("protoloss_forward")(
        q, q=q.data_ptr(), p=p.data_ptr(), t=t.data_ptr(), loss=loss.data_ptr(),
        acc=accuracy.data_ptr(), dist=dist, lse=lse, ws=ws, B=B, Q=Q, N=N, D=D, metric=metric,
        inv_t=1.0 / temperature, check=_checks.value_checks_enabled(),
    )  # fmt: skip
    if bad >= 0:
        _checks.raise_bad_label(_OP, "targets", t, bad, N)
    return loss, accuracy


def _fake(queries, prototypes, targets, metric, temperature) -> Outputs:
    (B, Q, _), N = queries.shape, prototypes.shape[1]
    dist, lse = _native.workspace(queries, B, Q, N), _native.workspace(queries, B, Q)
    return queries.new_empty(B), queries.new_empty(B), dist, lse


def _backward(upstream, args, outputs, needs) -> tuple[torch.Tensor | None, ...]:
    (grad, *_), (q, p, t, metric, temperature) = upstream, args
    (_, _, dist, lse), (need_q, need_p) = outputs, needs
    grad = grad.contiguous()  # kept alive (bound) until the kernel has run
    (B, Q, D), N = q.shape, p.shape[1]
    gq = torch.empty_like(q) if need_q else None
    gp = torch.empty_like(p) if need_p else None
    # the CUDA kernels keep the cosine's row norms there; the CPU kernels need nothing
    ws = _native.workspace(q, B * (Q + N)) if metric == _COSINE and q.is_cuda else None
    _native.kernel("protoloss_backward")(
        q, gl=grad.data_ptr(), q=q.data_ptr(), p=p.data_ptr(), t=t.data_ptr(),
        dist=dist.data_ptr(), lse=lse.data_ptr(), gq=_native.ptr(gq), gp=_native.ptr(gp),
        ws=_native.ptr(ws), B=B, Q=Q, N=N, D=D, metric=metric, inv_t=1.0 / temperature,
    )  # fmt: skip
    return gq, gp


_op = NativeOp(
    _OP,
    checks=_checked,
    forward=_forward,
    inference=_inference,
    fake=_fake,
    backward=_backward,
    reference=lambda q, p, t, metric, temperature: _reference.prototypical_loss(
        q, p, t, _METRICS[metric], temperature
    ),
    result=lambda outputs: (outputs[0], outputs[1]),
    differentiable=(0, 1),
    saved_outputs=(2, 3),
)


def prototypical_loss(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    metric: str = "sqeuclidean",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypical-network loss of each episode (Snell et al. 2017), fused.

    logits = -distance(query, prototype) / temperature; the loss is the mean negative
    log-likelihood of the target class over the episode's queries. Distances,
    log-softmax and the NLL are computed in one native pass, so the ``[B,Q,N]`` logits
    are not materialised and re-read by separate kernels.

    Args:
        queries: query embeddings ``[B, Q, D]``.
        prototypes: class prototypes ``[B, N, D]``.
        targets: query labels ``[B, Q]``, integers in ``[0, N)``.
        metric: ``"sqeuclidean"``, ``"euclidean"``, ``"cosine"`` or ``"dot"``.
        temperature: positive float dividing the negative distances.

    Returns:
        ``(loss [B], accuracy [B])``; the loss is differentiable in queries and prototypes,
        the accuracy (top-1, first index on ties) is not.
    """
    return _op.call(queries, prototypes, targets, metric, temperature)
