"""The fused multi-tensor inner-loop update of the MAML family.

theta'_k = theta_k - alpha_k * g_k for every parameter tensor k of every task, in one
native pass (one CUDA launch per ~40 tensors) instead of one kernel per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmeta.ops import _checks, _native, _reference
from medmeta.ops._register import NativeOp

_OP = "inner_update"
LearningRate = float | Sequence[torch.Tensor]
Lists = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], float]


def _launch_forward(params, grads, lrs, lr: float, outs, op: str = _OP) -> None:
    """Run the forward kernel into ``outs``; raise if a rate tensor is not finite (checked
    by the CPU kernel; see :func:`_check_rates_finite` for the others)."""
    bad = _native.kernel("inner_update_forward")(
        params[0], params=[p.data_ptr() for p in params],
        grads=[g.data_ptr() for g in grads], lrs=[a.data_ptr() for a in lrs] if lrs else [0] * len(params),
        outs=[o.data_ptr() for o in outs], numels=[p.numel() for p in params],
        lr_numels=[a.numel() for a in lrs] if lrs else [1] * len(params), lr_scalar=lr,
        check=bool(lrs) and _checks.value_checks_enabled(),
    )  # fmt: skip
    if bad >= 0:
        raise ValueError(f"{op}: 'lr[{bad}]' contains NaN or infinite values")


def _forward(
    params: list[torch.Tensor], grads: list[torch.Tensor], lrs: list[torch.Tensor], lr: float
) -> list[torch.Tensor]:
    if not params:
        return []
    outs = [torch.empty_like(p) for p in params]
    _launch_forward(params, grads, lrs, lr, outs)
    return outs


def _fake(params, grads, lrs, lr) -> list[torch.Tensor]:
    return [torch.empty_like(p) for p in params]


def _backward(upstream, args, outputs, needs) -> tuple[list[torch.Tensor] | None, ...]:
    """d/d params is the upstream gradient; d/d grads = -lr * upstream; d/d lrs = -sum(g * up)."""
    (params, grads, lrs, lr), (need_p, need_g, need_lr) = args, needs
    up = [
        u.contiguous() if u is not None else torch.zeros_like(p)
        for u, p in zip(upstream, params, strict=True)
    ]
    acc = _native.acc_dtype(grads[0].dtype)
    gg = [torch.empty_like(g) for g in grads] if need_g else []
    ga = [torch.zeros(a.numel(), dtype=acc, device=a.device) for a in lrs] if need_lr else []
    n = len(grads)
    # kept alive until the launch: the CUDA kernels write per-block sums there
    scratch, partials = (
        _rate_partials(grads, lrs, acc) if need_lr and grads[0].is_cuda else (None, [])
    )
    _native.kernel("inner_update_backward")(
        grads[0], grad_outs=[u.data_ptr() for u in up],
        grads=[g.data_ptr() for g in grads], lrs=[a.data_ptr() for a in lrs] if lrs else [0] * n,
        grad_grads=[g.data_ptr() for g in gg] if need_g else [0] * n,
        grad_lrs=[g.data_ptr() for g in ga] if need_lr else [0] * n, numels=[g.numel() for g in grads],
        lr_numels=[a.numel() for a in lrs] if lrs else [1] * n, lr_scalar=lr, partials=partials,
    )  # fmt: skip
    del scratch  # the caching allocator orders its reuse after the kernels on this stream
    rates = [g.to(a.dtype).reshape(a.shape) for g, a in zip(ga, lrs, strict=True)]
    return (up if need_p else None), (gg if need_g else None), (rates if need_lr else None)


def rate_partials(numel: int, element_size: int) -> int:
    """Per-block partial sums the CUDA backward of one single learned rate needs (one per
    ``inner_update_chunk_bytes`` of the tensor; the C++ ``inner_update_partials``)."""
    chunk = _native.lib().inner_update_chunk_bytes
    return -(-numel * element_size // chunk)


def _rate_partials(
    grads: Sequence[torch.Tensor], lrs: Sequence[torch.Tensor], acc: torch.dtype
) -> tuple[torch.Tensor | None, list[int]]:
    """Scratch and its pointers for the single learned rates (0 elsewhere): their gradients
    are summed per block, then in block order, so they are bitwise reproducible (no atomics)."""
    sizes = [
        rate_partials(g.numel(), g.element_size()) if a.numel() == 1 else 0
        for g, a in zip(grads, lrs, strict=True)
    ]
    if not any(sizes):
        return None, []
    scratch = torch.empty(sum(sizes), dtype=acc, device=grads[0].device)
    base, step, ptrs, offset = scratch.data_ptr(), scratch.element_size(), [], 0
    for size in sizes:
        ptrs.append(base + offset * step if size else 0)
        offset += size
    return scratch, ptrs


def _reference_update(params, grads, lrs, lr) -> list[torch.Tensor]:
    return _reference.inner_update(params, grads, lrs if lrs else lr)


def _rates(op: str, lr: object, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """(rate tensors, scalar rate): ``([], lr)`` for a float, ``(lr, 0.0)`` for tensors."""
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        rate = float(lr)
        if rate - rate != 0:
            raise ValueError(f"{op}: 'lr' must be finite, got {lr!r}")
        return [], rate
    if type(lr) is not list and (not isinstance(lr, Sequence) or isinstance(lr, str)):
        raise TypeError(f"{op}: 'lr' must be a float or a list of tensors, got {type(lr).__name__}")
    lrs = list(lr)
    if len(lrs) != len(params):
        raise ValueError(
            f"{op}: 'lr' must be a float or one tensor per parameter ({len(params)}), got {len(lrs)}"
        )
    for k, (a, p) in enumerate(zip(lrs, params, strict=True)):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{op}: 'lr[{k}]' must be a torch.Tensor, got {type(a).__name__}")
        if a.numel() != 1 and a.shape != p.shape[1:] and a.shape != p.shape:
            raise ValueError(
                f"{op}: 'lr[{k}]' must have one element (per-layer rate), shape {list(p.shape[1:])} "
                f"(per-element, shared by tasks) or {list(p.shape)}, got {list(a.shape)}"
            )
    return lrs, 0.0


def _well_formed(
    params: list[torch.Tensor], grads: list[torch.Tensor], lrs: list[torch.Tensor]
) -> tuple[bool, bool]:
    """(valid, contiguous) in one pass. Valid: tensors of rank >= 1, grads shaped like params,
    one task count, one dtype the kernels support, one device."""
    first = params[0]
    dtype, device, tasks = first.dtype, first.get_device(), first.shape[0]
    if dtype not in (_native.CPU_DTYPES if device < 0 else _native.CUDA_DTYPES):
        return False, False
    dense = True
    for p, g in zip(params, grads, strict=True):
        if not (isinstance(p, torch.Tensor) and isinstance(g, torch.Tensor)):
            return False, False
        shape = p.shape
        if not shape or shape[0] != tasks or g.shape != shape:
            return False, False
        if (
            p.dtype != dtype
            or g.dtype != dtype
            or p.get_device() != device
            or g.get_device() != device
        ):
            return False, False
        dense = dense and p.is_contiguous() and g.is_contiguous()
    for a in lrs:
        if a.dtype != dtype or a.get_device() != device:
            return False, False
        dense = dense and a.is_contiguous()
    return True, dense


def _explain(op: str, params: list, grads: list, lrs: list[torch.Tensor]) -> None:
    """Raise the error naming the first tensor :func:`_well_formed` rejected."""
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        for name, t in ((f"params[{k}]", p), (f"grads[{k}]", g)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 1:
                raise ValueError(
                    f"{op}: '{name}' must be shaped [T, ...] (T tasks), got a 0-D tensor"
                )
        if g.shape != p.shape:
            raise ValueError(
                f"{op}: 'grads[{k}]' must have shape {list(p.shape)} like params[{k}], got {list(g.shape)}"
            )
        if p.shape[0] != params[0].shape[0]:
            raise ValueError(
                f"{op}: 'params[{k}]' has {p.shape[0]} tasks (dim 0) but params[0] has {params[0].shape[0]}"
            )
    names = [f"{kind}[{k}]" for kind in ("params", "grads") for k in range(len(params))]
    _checks.floating(op, [*names, *(f"lr[{k}]" for k in range(len(lrs)))], [*params, *grads, *lrs])
    raise ValueError(f"{op}: params, grads and lr must be tensors of one dtype on one device")


def _check_rates_finite(op: str, lrs: list[torch.Tensor]) -> None:
    """One reduction over all learning-rate tensors, where the native CPU kernel does not
    check them as it runs (CUDA, the reference backend)."""
    if not _checks.value_checks_enabled() or _checks.native_cpu(lrs[0]):
        return
    flags = torch.stack([torch.isfinite(a).all() for a in lrs]).tolist()
    bad = [k for k, ok in enumerate(flags) if not ok]
    if bad:
        raise ValueError(f"{op}: 'lr[{bad[0]}]' contains NaN or infinite values")


def _validate(params: object, grads: object, lr: object, op: str = _OP) -> Lists:
    """The checked, contiguous ``(params, grads, lrs, scalar rate)`` of a call."""
    if isinstance(params, torch.Tensor) or isinstance(grads, torch.Tensor):
        raise TypeError(f"{op}: 'params' and 'grads' must be lists of tensors, got a single tensor")
    params, grads = list(params), list(grads)
    if len(params) != len(grads):
        raise ValueError(
            f"{op}: 'grads' must have one tensor per parameter ({len(params)}), got {len(grads)}"
        )
    if not params:
        return [], [], [], 0.0
    if not (isinstance(params[0], torch.Tensor) and params[0].dim()):
        _explain(op, params, grads, [])
    lrs, rate = _rates(op, lr, params)
    valid, dense = _well_formed(params, grads, lrs)
    if not valid:
        _explain(op, params, grads, lrs)
    if lrs:
        _check_rates_finite(op, lrs)
    if not dense:
        params, grads, lrs = ([t.contiguous() for t in ts] for ts in (params, grads, lrs))
    return params, grads, lrs, rate


_op = NativeOp(
    _OP,
    checks=_validate,
    forward=_forward,
    fake=_fake,
    backward=_backward,
    reference=_reference_update,
    result=lambda outputs: outputs,
    differentiable=(0, 1, 2),
)


def inner_update(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: LearningRate
) -> list[torch.Tensor]:
    """One inner-loop gradient step for all tasks and tensors: ``theta' = theta - lr * g``.

    Args:
        params: P tensors shaped ``[T, ...]`` (the parameters of T tasks).
        grads: P gradients shaped like ``params``.
        lr: a float (MAML, Finn et al. 2017), or one tensor per parameter: one element
            (learned per-layer rates, MAML++, Antoniou et al. 2019), shaped
            ``param.shape[1:]`` (learned per-element rates shared by the tasks, Meta-SGD,
            Li et al. 2017) or shaped like the parameter.

    Returns:
        The P updated tensors. Differentiable in params, grads and lr, so second-order
        MAML differentiates through the step (grads built with ``create_graph=True``).
    """
    return _op.call(params, grads, lr)


def inner_update_(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: LearningRate
) -> list[torch.Tensor]:
    """In-place first-order form of :func:`inner_update` (no autograd): ``theta -= lr * g``.

    For first-order MAML / Reptile-style loops on tensors that do not require grad.
    ``params`` must be contiguous; they are updated in one fused pass and returned.
    """
    params = list(params)
    if torch.is_grad_enabled() and any(
        isinstance(p, torch.Tensor) and p.requires_grad for p in params
    ):
        raise RuntimeError(
            f"{_OP}_: params require grad; call it under torch.no_grad() or use inner_update"
        )
    if any(isinstance(p, torch.Tensor) and not p.is_contiguous() for p in params):
        raise ValueError(f"{_OP}_: params must be contiguous to be updated in place")
    checked, grads_, lrs, rate = _validate(params, grads, lr, f"{_OP}_")
    if not checked:
        return params
    if _native.use_reference():
        with torch.no_grad():
            for p, new in zip(params, _reference_update(checked, grads_, lrs, rate), strict=True):
                p.copy_(new)
    else:
        _launch_forward(checked, grads_, lrs, rate, params, f"{_OP}_")
    return params
