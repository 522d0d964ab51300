"""Class prototypes: per-class (weighted) means of support embeddings, and masked
average pooling of feature maps for few-shot segmentation."""

from __future__ import annotations

import torch

from medmeta.ops import _autograd, _checks, _native, _reference

_OP = "prototypes"
_MASKED_OP = "masked_prototypes"


# ----------------------------------------------------------------------------- prototypes


def _forward_native(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = embeddings.contiguous(), labels.contiguous()
    weights = weights.contiguous() if weights is not None else None
    B, S, D = embeddings.shape
    out = embeddings.new_empty((B, n_way, D))
    wsum = torch.empty(
        (B, n_way), dtype=_native.acc_dtype(embeddings.dtype), device=embeddings.device
    )
    _native.launch(
        "prototypes_forward",
        embeddings,
        emb=embeddings.data_ptr(),
        labels=labels.data_ptr(),
        w=_native.ptr(weights),
        out=out.data_ptr(),
        wsum=wsum.data_ptr(),
        B=B,
        S=S,
        N=n_way,
        D=D,
    )
    return out, wsum


def _backward_native(
    grad: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
    wsum: torch.Tensor,
    need_emb: bool,
    need_w: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad, embeddings, labels, out, wsum = (
        grad.contiguous(),
        embeddings.contiguous(),
        labels.contiguous(),
        out.contiguous(),
        wsum.contiguous(),
    )
    weights = weights.contiguous() if weights is not None else None
    B, S, D = embeddings.shape
    ge = torch.empty_like(embeddings) if need_emb else embeddings.new_empty(0)
    gw = embeddings.new_empty((B, S)) if need_w else embeddings.new_empty(0)
    _native.launch(
        "prototypes_backward",
        embeddings,
        g=grad.data_ptr(),
        emb=embeddings.data_ptr(),
        labels=labels.data_ptr(),
        w=_native.ptr(weights),
        out=out.data_ptr(),
        wsum=wsum.data_ptr(),
        gemb=ge.data_ptr() if need_emb else 0,
        gw=gw.data_ptr() if need_w else 0,
        B=B,
        S=S,
        N=out.shape[1],
        D=D,
    )
    return ge, gw


@torch.library.custom_op("medmeta::prototypes", mutates_args=())
def _prototypes_op(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_native(embeddings, labels, n_way, weights)


@_prototypes_op.register_fake
def _(embeddings, labels, n_way, weights):
    B, _, D = embeddings.shape
    return embeddings.new_empty((B, n_way, D)), embeddings.new_empty(
        (B, n_way), dtype=_native.acc_dtype(embeddings.dtype)
    )


@torch.library.custom_op("medmeta::prototypes_backward", mutates_args=())
def _prototypes_backward_op(
    grad: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
    wsum: torch.Tensor,
    need_emb: bool,
    need_w: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_native(grad, embeddings, labels, weights, out, wsum, need_emb, need_w)


@_prototypes_backward_op.register_fake
def _(grad, embeddings, labels, weights, out, wsum, need_emb, need_w):
    return (
        torch.empty_like(embeddings) if need_emb else embeddings.new_empty(0),
        embeddings.new_empty(embeddings.shape[:2]) if need_w else embeddings.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:
    embeddings, labels, n_way, weights = inputs
    out, wsum = output
    ctx.mark_non_differentiable(wsum)
    ctx.save_for_backward(embeddings, labels, weights, out, wsum)
    ctx.n_way = n_way


def _backward(ctx, grad, _grad_wsum, native) -> tuple:
    embeddings, labels, weights, out, wsum = ctx.saved_tensors
    need_emb, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
    if _autograd.higher_order():
        ge, gw = _autograd.reference_vjp(
            lambda e, w: _reference.prototypes(e, labels, ctx.n_way, w),
            (embeddings, weights),
            (need_emb, need_w),
            (grad,),
        )
        return ge, None, None, gw
    ge, gw = native(grad, embeddings, labels, weights, out, wsum, need_emb, need_w)
    return (ge if need_emb else None), None, None, (gw if need_w else None)


_prototypes_op.register_autograd(
    lambda ctx, *grads: _backward(ctx, *grads, _prototypes_backward_op),
    setup_context=_setup_context,
)
_PrototypesFunction = _autograd.native_function(
    "_PrototypesFunction",
    _forward_native,
    _setup_context,
    lambda ctx, *g: _backward(ctx, *g, _backward_native),
)


def _check_nonempty(op: str, mass: torch.Tensor, what: str) -> None:
    """Raise naming the first (episode, class) whose total support weight is not positive."""
    if not _checks.value_checks_enabled() or mass.numel() == 0:
        return
    i = _checks.first_not_positive(mass)
    if i >= 0:
        b, c = divmod(i, mass.shape[1])
        raise ValueError(
            f"{op}: episode {b}, class {c} has {what} (got {mass[b, c].item():g}); "
            "every class needs at least one support example"
        )


def _check_weights(weights: torch.Tensor) -> None:
    """Weights must be finite and non-negative: one native scan on CPU, torch reductions else."""
    if not _checks.value_checks_enabled() or weights.numel() == 0:
        return
    scan = _checks.native_cpu(weights)
    if scan is not None:
        i = scan.first_negative_or_nonfinite(
            v=weights.data_ptr(), n=weights.numel(), dt=_native.DTYPE_CODES[weights.dtype]
        )
        if i < 0:
            return
        bad = float(weights.view(-1)[i])
        finite = bad - bad == 0
    else:
        finite = bool(torch.isfinite(weights).all())
        if finite and not bool((weights < 0).any()):
            return
    if not finite:
        raise ValueError(f"{_OP}: 'weights' contains NaN or infinite values")
    raise ValueError(f"{_OP}: 'weights' must be non-negative")


def prototypes(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Class prototypes of each episode: the (weighted) mean of its support embeddings.

    Prototypical Networks (Snell et al. 2017) in one pass over the support set: each
    example is added into its class row, no ``[B,S,N]`` one-hot matrix is built.

    Args:
        embeddings: support embeddings ``[B, S, D]``.
        labels: support labels ``[B, S]``, integers in ``[0, n_way)``.
        n_way: number of classes N.
        weights: optional non-negative example weights ``[B, S]`` (e.g. soft labels or
            confidence); the prototype is then ``sum w_s e_s / sum w_s`` over the class.

    Returns:
        ``[B, n_way, D]`` prototypes, differentiable in embeddings and weights.

    Raises:
        ValueError: a class of some episode has no support example (or zero total weight);
            the message names the episode and the class. With value checks off
            (:func:`medmeta.ops.set_value_checks`) nothing is raised and such a class gets a
            NaN prototype (the mean of no examples; it passes no gradient), on every
            backend: CPU, CUDA and ``MEDMETA_BACKEND=reference``.
    """
    embeddings = _checks.tensor(_OP, "embeddings", embeddings, 3, "[B,S,D]")
    if isinstance(n_way, bool) or not isinstance(n_way, int) or n_way < 1:
        raise ValueError(f"{_OP}: 'n_way' must be a positive int, got {n_way!r}")
    embeddings, weights = _checks.autocast_float32(embeddings, weights)
    B, S, _D = embeddings.shape
    if weights is not None:
        weights = _checks.tensor(_OP, "weights", weights, 2, "[B,S]")
        _checks.floating(_OP, ("embeddings", "weights"), (embeddings, weights))
        if tuple(weights.shape) != (B, S):
            raise ValueError(
                f"{_OP}: 'weights' must have shape [{B}, {S}] like labels, got {list(weights.shape)}"
            )
        weights = weights.contiguous()
        _check_weights(weights)
    else:
        _checks.floating(_OP, ("embeddings",), (embeddings,))
    labels = _checks.labels(_OP, "labels", labels, (B, S), n_way, embeddings.device)
    if _native.use_reference():
        out = _reference.prototypes(embeddings, labels, n_way, weights)
        mass = torch.nn.functional.one_hot(labels, n_way).to(embeddings.dtype)
        mass = (mass * weights.unsqueeze(-1)).sum(1) if weights is not None else mass.sum(1)
        _check_nonempty(_OP, mass, "no support example")
        return out
    embeddings = embeddings.contiguous()
    if torch.compiler.is_compiling():
        out, wsum = _prototypes_op(embeddings, labels, n_way, weights)
    elif not (
        torch.is_grad_enabled()
        and (embeddings.requires_grad or (weights is not None and weights.requires_grad))
    ):
        out, wsum = _forward_native(embeddings, labels, n_way, weights)
    else:
        out, wsum = _PrototypesFunction.apply(embeddings, labels, n_way, weights)
    _check_nonempty(_OP, wsum, "no support example")
    return out


# ---------------------------------------------------------------------- masked prototypes


def _masked_forward_native(
    features: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    features, masks = features.contiguous(), masks.contiguous()
    B, S, D, H, W = features.shape
    C = masks.shape[2]
    out = features.new_empty((B, C, D))
    mass = torch.empty((B, C), dtype=_native.acc_dtype(features.dtype), device=features.device)
    _native.launch(
        "masked_prototypes_forward",
        features,
        feat=features.data_ptr(),
        masks=masks.data_ptr(),
        out=out.data_ptr(),
        mass=mass.data_ptr(),
        B=B,
        S=S,
        C=C,
        D=D,
        HW=H * W,
    )
    return out, mass


def _masked_backward_native(
    grad: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    out: torch.Tensor,
    mass: torch.Tensor,
    need_f: bool,
    need_m: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad, features, masks = grad.contiguous(), features.contiguous(), masks.contiguous()
    out, mass = out.contiguous(), mass.contiguous()
    B, S, D, H, W = features.shape
    C = masks.shape[2]
    gf = torch.empty_like(features) if need_f else features.new_empty(0)
    gm = torch.empty_like(masks) if need_m else masks.new_empty(0)
    _native.launch(
        "masked_prototypes_backward",
        features,
        g=grad.data_ptr(),
        feat=features.data_ptr(),
        masks=masks.data_ptr(),
        out=out.data_ptr(),
        mass=mass.data_ptr(),
        gfeat=gf.data_ptr() if need_f else 0,
        gmasks=gm.data_ptr() if need_m else 0,
        B=B,
        S=S,
        C=C,
        D=D,
        HW=H * W,
    )
    return gf, gm


@torch.library.custom_op("medmeta::masked_prototypes", mutates_args=())
def _masked_op(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _masked_forward_native(features, masks)


@_masked_op.register_fake
def _(features, masks):
    B, _, D = features.shape[:3]
    C = masks.shape[2]
    return features.new_empty((B, C, D)), features.new_empty(
        (B, C), dtype=_native.acc_dtype(features.dtype)
    )


@torch.library.custom_op("medmeta::masked_prototypes_backward", mutates_args=())
def _masked_backward_op(
    grad: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    out: torch.Tensor,
    mass: torch.Tensor,
    need_f: bool,
    need_m: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _masked_backward_native(grad, features, masks, out, mass, need_f, need_m)


@_masked_backward_op.register_fake
def _(grad, features, masks, out, mass, need_f, need_m):
    return (
        torch.empty_like(features) if need_f else features.new_empty(0),
        torch.empty_like(masks) if need_m else masks.new_empty(0),
    )


def _masked_setup_context(ctx, inputs, output) -> None:
    features, masks = inputs
    out, mass = output
    ctx.mark_non_differentiable(mass)
    ctx.save_for_backward(features, masks, out, mass)


def _masked_backward(ctx, grad, _grad_mass, native) -> tuple:
    features, masks, out, mass = ctx.saved_tensors
    need_f, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if _autograd.higher_order():
        gf, gm = _autograd.reference_vjp(
            _reference.masked_prototypes, (features, masks), (need_f, need_m), (grad,)
        )
        return gf, gm
    gf, gm = native(grad, features, masks, out, mass, need_f, need_m)
    return (gf if need_f else None), (gm if need_m else None)


_masked_op.register_autograd(
    lambda ctx, *grads: _masked_backward(ctx, *grads, _masked_backward_op),
    setup_context=_masked_setup_context,
)
_MaskedFunction = _autograd.native_function(
    "_MaskedFunction",
    _masked_forward_native,
    _masked_setup_context,
    lambda ctx, *grads: _masked_backward(ctx, *grads, _masked_backward_native),
)


def masked_prototypes(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling of support feature maps into class prototypes.

    The prototype of class c is ``sum_{s,h,w} f[s,:,h,w] m[s,c,h,w] / sum_{s,h,w} m[s,c,h,w]``
    (PANet, Wang et al. 2019; SG-One, Zhang et al. 2020), for few-shot segmentation.

    Args:
        features: support feature maps ``[B, S, D, H, W]``.
        masks: soft or binary class masks ``[B, S, C, H, W]`` at the feature resolution.

    Returns:
        ``[B, C, D]`` prototypes, differentiable in features and masks.

    Raises:
        ValueError: a class of some episode has zero mask mass (message names both). With
            value checks off (:func:`medmeta.ops.set_value_checks`) nothing is raised and
            such a class gets a NaN prototype (it passes no gradient), on every backend.
    """
    features = _checks.tensor(_MASKED_OP, "features", features, 5, "[B,S,D,H,W]")
    masks = _checks.tensor(_MASKED_OP, "masks", masks, 5, "[B,S,C,H,W]")
    features, masks = _checks.autocast_float32(features, masks)
    _checks.floating(_MASKED_OP, ("features", "masks"), (features, masks))
    B, S, _, H, W = features.shape
    if (masks.shape[0], masks.shape[1], masks.shape[3], masks.shape[4]) != (B, S, H, W):
        raise ValueError(
            f"{_MASKED_OP}: 'masks' must have shape [{B}, {S}, C, {H}, {W}] to match features "
            f"[B,S,D,H,W] = {list(features.shape)}, got {list(masks.shape)}"
        )
    if _native.use_reference():
        out = _reference.masked_prototypes(features, masks)
        _check_nonempty(_MASKED_OP, masks.sum(dim=(1, 3, 4)), "zero mask mass")
        return out
    features, masks = features.contiguous(), masks.contiguous()
    if torch.compiler.is_compiling():
        out, mass = _masked_op(features, masks)
    elif not (torch.is_grad_enabled() and (features.requires_grad or masks.requires_grad)):
        out, mass = _masked_forward_native(features, masks)
    else:
        out, mass = _MaskedFunction.apply(features, masks)
    _check_nonempty(_MASKED_OP, mass, "zero mask mass")
    return out
