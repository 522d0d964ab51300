"""The fused multi-tensor inner-loop update of the MAML family.

theta'_k = theta_k - alpha_k * g_k for every parameter tensor k of every task, in one
native pass (one CUDA launch per ~40 tensors) instead of one kernel per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmeta.ops import _autograd, _checks, _native, _reference

_OP = "inner_update"
LearningRate = float | Sequence[torch.Tensor]


def _lr_numels(params: Sequence[torch.Tensor], lrs: Sequence[torch.Tensor]) -> list[int]:
    return [a.numel() for a in lrs] if lrs else [1] * len(params)


def _forward_into(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lrs: Sequence[torch.Tensor],
    lr: float,
    outs: Sequence[torch.Tensor],
) -> None:
    if not params:
        return
    _native.launch(
        "inner_update_forward",
        params[0],  # callers pass contiguous tensors
        params=[p.data_ptr() for p in params],
        grads=[g.data_ptr() for g in grads],
        lrs=[a.data_ptr() for a in lrs] if lrs else [0] * len(params),
        outs=[o.data_ptr() for o in outs],
        numels=[p.numel() for p in params],
        lr_numels=_lr_numels(params, lrs),
        lr_scalar=lr,
    )


def _forward_native(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lrs: Sequence[torch.Tensor],
    lr: float,
) -> list[torch.Tensor]:
    outs = [torch.empty_like(p) for p in params]
    _forward_into(params, grads, lrs, lr, outs)
    return outs


def _backward_native(
    grad_outs: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lrs: Sequence[torch.Tensor],
    lr: float,
    need_g: bool,
    need_lr: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(d/d grads, d/d lrs) for upstream ``grad_outs``; empty lists for what is not needed."""
    grad_outs = [g.contiguous() for g in grad_outs]
    grads, lrs = [g.contiguous() for g in grads], [a.contiguous() for a in lrs]
    if not grad_outs:
        return [], []
    acc = _native.acc_dtype(grads[0].dtype)
    gg = [torch.empty_like(g) for g in grads] if need_g else []
    ga = [torch.zeros(a.numel(), dtype=acc, device=a.device) for a in lrs] if need_lr else []
    dev, stream = _native.device_args(grads[0])
    n = len(grads)
    # kept alive until the launch: the kernels write the per-block sums there
    scratch, partials = _rate_partials(grads, lrs, acc) if need_lr and dev >= 0 else (None, [])
    _native.lib().inner_update_backward(
        dev=dev,
        stream=stream,
        dt=_native.DTYPE_CODES[grads[0].dtype],
        grad_outs=[g.data_ptr() for g in grad_outs],
        grads=[g.data_ptr() for g in grads],
        lrs=[a.data_ptr() for a in lrs] if lrs else [0] * n,
        grad_grads=[g.data_ptr() for g in gg] if need_g else [0] * n,
        grad_lrs=[g.data_ptr() for g in ga] if need_lr else [0] * n,
        numels=[g.numel() for g in grads],
        lr_numels=_lr_numels(grads, lrs),
        lr_scalar=lr,
        partials=partials,
    )
    del scratch  # the caching allocator orders its reuse after the kernels on this stream
    return gg, [g.to(a.dtype).reshape(a.shape) for g, a in zip(ga, lrs, strict=True)]


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


@torch.library.custom_op("medmeta::inner_update", mutates_args=())
def _update_op(
    params: list[torch.Tensor], grads: list[torch.Tensor], lrs: list[torch.Tensor], lr: float
) -> list[torch.Tensor]:
    # a compiled graph may hand the op other strides than the validated eager tensors
    dense = [[t.contiguous() for t in ts] for ts in (params, grads, lrs)]
    return _forward_native(*dense, lr)


@_update_op.register_fake
def _(params, grads, lrs, lr):
    return [torch.empty_like(p) for p in params]


@torch.library.custom_op("medmeta::inner_update_backward", mutates_args=())
def _update_backward_op(
    grad_outs: list[torch.Tensor],
    grads: list[torch.Tensor],
    lrs: list[torch.Tensor],
    lr: float,
    need_g: bool,
    need_lr: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return _backward_native(grad_outs, grads, lrs, lr, need_g, need_lr)


@_update_backward_op.register_fake
def _(grad_outs, grads, lrs, lr, need_g, need_lr):
    return (
        [torch.empty_like(g) for g in grads] if need_g else [],
        [torch.empty_like(a) for a in lrs] if need_lr else [],
    )


def _grads(saved_grads, saved_lrs, lr, grad_outs, need_p, need_g, need_lr, native):
    """Gradients for (params, grads, lrs) as three lists (or None where not needed)."""
    grad_outs = [
        g if g is not None else torch.zeros_like(x)
        for g, x in zip(grad_outs, saved_grads, strict=True)
    ]
    if _autograd.higher_order():
        n = len(saved_grads)

        def update(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            gs, lrs_ = flat[:n], flat[n:]
            rates = list(lrs_) if lrs_ else lr
            return tuple(_reference.inner_update([torch.zeros_like(g) for g in gs], gs, rates))

        flat = (*saved_grads, *saved_lrs)
        vjp = _autograd.reference_vjp(
            update, flat, [need_g] * n + [need_lr] * len(saved_lrs), grad_outs
        )
        gg, ga = vjp[:n], vjp[n:]
    else:
        gg, ga = native(grad_outs, saved_grads, saved_lrs, lr, need_g, need_lr)
    return (
        (list(grad_outs) if need_p else None),
        (list(gg) if need_g else None),
        (list(ga) if need_lr else None),
    )


def _setup_context(ctx, inputs, output) -> None:
    params, grads, lrs, lr = inputs
    ctx.save_for_backward(*grads, *lrs)
    ctx.n, ctx.lr = len(params), lr


def _op_backward(ctx, grad_outs):
    saved = ctx.saved_tensors
    # For a list argument, needs_input_grad holds one flag per tensor.
    need = [any(f) if isinstance(f, (list, tuple)) else bool(f) for f in ctx.needs_input_grad]
    gp, gg, ga = _grads(
        saved[: ctx.n],
        saved[ctx.n :],
        ctx.lr,
        grad_outs,
        need[0],
        need[1],
        need[2],
        _update_backward_op,
    )
    n_lr = len(saved) - ctx.n
    # A list argument gets a list of the same length back, None where no gradient.
    return gp or [None] * ctx.n, gg or [None] * ctx.n, ga or [None] * n_lr, None


_update_op.register_autograd(_op_backward, setup_context=_setup_context)


def _flat_forward(lr: float, n: int, n_lr: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(_forward_native(tensors[:n], tensors[n : 2 * n], tensors[2 * n :], lr))


def _flat_setup_context(ctx, inputs, output) -> None:
    lr, n, _n_lr, *tensors = inputs
    ctx.save_for_backward(*tensors[n:])
    ctx.n, ctx.lr = n, lr


def _flat_backward(ctx, *grad_outs):
    saved = ctx.saved_tensors
    n, need = ctx.n, ctx.needs_input_grad[3:]
    need_p, need_g, need_lr = any(need[:n]), any(need[n : 2 * n]), any(need[2 * n :])
    gp, gg, ga = _grads(
        saved[:n], saved[n:], ctx.lr, grad_outs, need_p, need_g, need_lr, _backward_native
    )
    per = [*(gp or [None] * n), *(gg or [None] * n), *(ga or [None] * len(saved[n:]))]
    return (None, None, None, *(g if nd else None for g, nd in zip(per, need, strict=True)))


_UpdateFunction = _autograd.native_function(
    "_UpdateFunction", _flat_forward, _flat_setup_context, _flat_backward
)


def _validate(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: LearningRate, op: str
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], float]:
    if isinstance(params, torch.Tensor) or isinstance(grads, torch.Tensor):
        raise TypeError(f"{op}: 'params' and 'grads' must be lists of tensors, got a single tensor")
    params, grads = list(params), list(grads)
    if len(params) != len(grads):
        raise ValueError(
            f"{op}: 'grads' must have one tensor per parameter ({len(params)}), got {len(grads)}"
        )
    if not params:
        return [], [], [], 0.0
    if not _well_shaped(params, grads):
        _explain_shapes(op, params, grads)
    lrs: list[torch.Tensor] = []
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        rate = float(lr)
        if rate != rate or rate in (float("inf"), float("-inf")):
            raise ValueError(f"{op}: 'lr' must be finite, got {lr!r}")
    elif isinstance(lr, Sequence) and not isinstance(lr, str):
        rate, lrs = 0.0, list(lr)
        if len(lrs) != len(params):
            raise ValueError(
                f"{op}: 'lr' must be a float or one tensor per parameter ({len(params)}), got {len(lrs)}"
            )
        for k, (a, p) in enumerate(zip(lrs, params, strict=True)):
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"{op}: 'lr[{k}]' must be a torch.Tensor, got {type(a).__name__}")
            shape = a.shape
            if not (shape == p.shape[1:] or shape == p.shape or a.numel() == 1):
                raise ValueError(
                    f"{op}: 'lr[{k}]' must have one element (per-layer rate), shape {list(p.shape[1:])} "
                    f"(per-element, shared by tasks) or {list(p.shape)}, got {list(a.shape)}"
                )
    else:
        raise TypeError(f"{op}: 'lr' must be a float or a list of tensors, got {type(lr).__name__}")
    tensors = [*params, *grads, *lrs]
    allowed = _native.CPU_DTYPES if params[0].device.type == "cpu" else _native.CUDA_DTYPES
    dtypes, devices = {t.dtype for t in tensors}, {t.device for t in tensors}
    if len(dtypes) != 1 or len(devices) != 1 or params[0].dtype not in allowed:
        # the slow path only runs to name the offending tensor
        names = [f"params[{k}]" for k in range(len(params))] + [
            f"grads[{k}]" for k in range(len(grads))
        ]
        _checks.floating(op, [*names, *(f"lr[{k}]" for k in range(len(lrs)))], tensors)
    if lrs:
        _check_rates_finite(op, lrs)
    n = len(params)
    tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    return tensors[:n], tensors[n : 2 * n], tensors[2 * n :], rate


def _well_shaped(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """Every entry a tensor of rank >= 1, grads shaped like params, one task count."""
    if not all(isinstance(t, torch.Tensor) for t in (*params, *grads)):
        return False
    shapes = [p.shape for p in params]
    return (
        shapes == [g.shape for g in grads]
        and all(shape for shape in shapes)
        and len({shape[0] for shape in shapes}) == 1
    )


def _explain_shapes(op: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Raise the error that names the first tensor :func:`_well_shaped` rejected."""
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


def _check_rates_finite(op: str, lrs: list[torch.Tensor]) -> None:
    """One scan over all learning-rate tensors (a native loop on CPU, one reduction on CUDA)."""
    if not _checks.value_checks_enabled():
        return
    scan = _checks.native_cpu(lrs[0])
    if scan is not None:
        code = _native.DTYPE_CODES[lrs[0].dtype]
        first = scan.first_nonfinite_buffer(
            v=[a.data_ptr() for a in lrs], n=[a.numel() for a in lrs], dt=code
        )
        bad = [first] if first >= 0 else []
    else:
        flags = torch.stack([torch.isfinite(a).all() for a in lrs]).tolist()
        bad = [k for k, ok in enumerate(flags) if not ok]
    if bad:
        raise ValueError(f"{op}: 'lr[{bad[0]}]' contains NaN or infinite values")


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
    params, grads, lrs, rate = _validate(params, grads, lr, _OP)
    if not params:
        return []
    if _native.use_reference():
        return _reference.inner_update(params, grads, lrs if lrs else rate)
    if torch.compiler.is_compiling():
        return _update_op(params, grads, lrs, rate)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *grads, *lrs))):
        return _forward_native(params, grads, lrs, rate)  # nothing to differentiate
    return list(_UpdateFunction.apply(rate, len(params), len(lrs), *params, *grads, *lrs))


def inner_update_(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: LearningRate
) -> list[torch.Tensor]:
    """In-place first-order form of :func:`inner_update` (no autograd): ``theta -= lr * g``.

    For first-order MAML / Reptile-style loops on tensors that do not require grad.
    ``params`` must be contiguous; they are updated in one fused pass and returned.
    """
    params = list(params)
    if (
        any(p.requires_grad for p in params if isinstance(p, torch.Tensor))
        and torch.is_grad_enabled()
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
            for p, new in zip(
                params, _reference.inner_update(checked, grads_, lrs if lrs else rate), strict=True
            ):
                p.copy_(new)
        return params
    _forward_into(checked, grads_, lrs, rate, params)
    return params
