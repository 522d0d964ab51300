"""The fused prototypical loss: distances, log-softmax and NLL in one native pass."""

from __future__ import annotations

import torch

from medmeta.ops import _autograd, _checks, _native, _reference

_OP = "prototypical_loss"
_METRICS = tuple(_native.METRIC_CODES)


def _forward_native(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    metric: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    queries, prototypes, targets = (
        queries.contiguous(),
        prototypes.contiguous(),
        targets.contiguous(),
    )
    B, Q, D = queries.shape
    N = prototypes.shape[1]
    acc_dtype = _native.acc_dtype(queries.dtype)
    loss = queries.new_empty(B)
    accuracy = queries.new_empty(B)
    dist = torch.empty((B, Q, N), dtype=acc_dtype, device=queries.device)
    lse = torch.empty((B, Q), dtype=acc_dtype, device=queries.device)
    ws = torch.empty(B * (Q + N) + B * Q * N, dtype=acc_dtype, device=queries.device)
    _native.launch(
        "protoloss_forward",
        queries,
        q=queries.data_ptr(),
        p=prototypes.data_ptr(),
        t=targets.data_ptr(),
        loss=loss.data_ptr(),
        acc=accuracy.data_ptr(),
        dist=dist.data_ptr(),
        lse=lse.data_ptr(),
        ws=ws.data_ptr(),
        B=B,
        Q=Q,
        N=N,
        D=D,
        metric=metric,
        inv_t=1.0 / temperature,
    )
    return loss, accuracy, dist, lse


def _backward_native(
    grad_loss: torch.Tensor,
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    dist: torch.Tensor,
    lse: torch.Tensor,
    metric: int,
    temperature: float,
    need_q: bool,
    need_p: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    queries, prototypes, targets = (
        queries.contiguous(),
        prototypes.contiguous(),
        targets.contiguous(),
    )
    grad_loss, dist, lse = grad_loss.contiguous(), dist.contiguous(), lse.contiguous()
    B, Q, D = queries.shape
    N = prototypes.shape[1]
    gq = torch.empty_like(queries) if need_q else queries.new_empty(0)
    gp = torch.empty_like(prototypes) if need_p else prototypes.new_empty(0)
    ws = torch.empty(B * (Q + N) + B * Q * N, dtype=dist.dtype, device=queries.device)
    _native.launch(
        "protoloss_backward",
        queries,
        gl=grad_loss.data_ptr(),
        q=queries.data_ptr(),
        p=prototypes.data_ptr(),
        t=targets.data_ptr(),
        dist=dist.data_ptr(),
        lse=lse.data_ptr(),
        gq=gq.data_ptr() if need_q else 0,
        gp=gp.data_ptr() if need_p else 0,
        ws=ws.data_ptr(),
        B=B,
        Q=Q,
        N=N,
        D=D,
        metric=metric,
        inv_t=1.0 / temperature,
    )
    return gq, gp


@torch.library.custom_op("medmeta::prototypical_loss", mutates_args=())
def _loss_op(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    metric: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward_native(queries, prototypes, targets, metric, temperature)


@_loss_op.register_fake
def _(queries, prototypes, targets, metric, temperature):
    B, Q, _ = queries.shape
    N = prototypes.shape[1]
    acc_dtype = _native.acc_dtype(queries.dtype)
    return (
        queries.new_empty(B),
        queries.new_empty(B),
        queries.new_empty((B, Q, N), dtype=acc_dtype),
        queries.new_empty((B, Q), dtype=acc_dtype),
    )


@torch.library.custom_op("medmeta::prototypical_loss_backward", mutates_args=())
def _loss_backward_op(
    grad_loss: torch.Tensor,
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    dist: torch.Tensor,
    lse: torch.Tensor,
    metric: int,
    temperature: float,
    need_q: bool,
    need_p: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_native(
        grad_loss, queries, prototypes, targets, dist, lse, metric, temperature, need_q, need_p
    )


@_loss_backward_op.register_fake
def _(grad_loss, queries, prototypes, targets, dist, lse, metric, temperature, need_q, need_p):
    return (
        torch.empty_like(queries) if need_q else queries.new_empty(0),
        torch.empty_like(prototypes) if need_p else prototypes.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:
    queries, prototypes, targets, metric, temperature = inputs
    _, accuracy, dist, lse = output
    ctx.mark_non_differentiable(accuracy, dist, lse)
    ctx.save_for_backward(queries, prototypes, targets, dist, lse)
    ctx.metric, ctx.temperature = metric, temperature


def _backward(ctx, grad_loss, _grad_acc, _grad_dist, _grad_lse, native) -> tuple:
    queries, prototypes, targets, dist, lse = ctx.saved_tensors
    need_q, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if _autograd.higher_order():
        gq, gp = _autograd.reference_vjp(
            lambda q, p: _reference.prototypical_loss(
                q, p, targets, _METRICS[ctx.metric], ctx.temperature
            )[0],
            (queries, prototypes),
            (need_q, need_p),
            (grad_loss,),
        )
        return gq, gp, None, None, None
    gq, gp = native(
        grad_loss,
        queries,
        prototypes,
        targets,
        dist,
        lse,
        ctx.metric,
        ctx.temperature,
        need_q,
        need_p,
    )
    return (gq if need_q else None), (gp if need_p else None), None, None, None


_loss_op.register_autograd(
    lambda ctx, *grads: _backward(ctx, *grads, _loss_backward_op), setup_context=_setup_context
)
_LossFunction = _autograd.native_function(
    "_LossFunction",
    _forward_native,
    _setup_context,
    lambda ctx, *grads: _backward(ctx, *grads, _backward_native),
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
    code = _checks.metric(_OP, metric)
    temperature = _checks.positive_float(_OP, "temperature", temperature)
    queries = _checks.tensor(_OP, "queries", queries, 3, "[B,Q,D]")
    prototypes = _checks.tensor(_OP, "prototypes", prototypes, 3, "[B,N,D]")
    queries, prototypes = _checks.autocast_float32(queries, prototypes)
    _checks.floating(_OP, ("queries", "prototypes"), (queries, prototypes))
    B, Q, D = queries.shape
    _checks.same_size(
        _OP, "batch size (dim 0) equal to queries'", B, "prototypes", prototypes.shape[0]
    )
    _checks.same_size(
        _OP, "feature size (dim 2) equal to queries'", D, "prototypes", prototypes.shape[2]
    )
    N = prototypes.shape[1]
    if B > 0 and N == 0:
        raise ValueError(
            f"{_OP}: 'prototypes' must have at least one class (dim 1), got shape {list(prototypes.shape)}"
        )
    if B > 0 and Q == 0:
        raise ValueError(
            f"{_OP}: 'queries' must have at least one query per episode (dim 1), got shape {list(queries.shape)}"
        )
    targets = _checks.labels(_OP, "targets", targets, (B, Q), N, queries.device)
    if _native.use_reference():
        return _reference.prototypical_loss(queries, prototypes, targets, metric, temperature)
    queries, prototypes = queries.contiguous(), prototypes.contiguous()
    if torch.compiler.is_compiling():
        loss, accuracy, _, _ = _loss_op(queries, prototypes, targets, code, temperature)
    elif not (torch.is_grad_enabled() and (queries.requires_grad or prototypes.requires_grad)):
        loss, accuracy, _, _ = _forward_native(queries, prototypes, targets, code, temperature)
    else:
        loss, accuracy, _, _ = _LossFunction.apply(queries, prototypes, targets, code, temperature)
    return loss, accuracy
