"""Class prototypes: per-class (weighted) means of support embeddings."""

from __future__ import annotations

import torch

from medmeta.ops import _checks, _native, _reference
from medmeta.ops._register import NativeOp

_OP = "prototypes"


def check_nonempty(op: str, prototypes: torch.Tensor, mass: torch.Tensor, what: str) -> None:
    """Raise naming the first (episode, class) whose total support weight is not positive.

    ``prototypes`` is ``[B, C, D]``; ``mass`` holds the ``B * C`` class masses first (flat,
    or ``[B, C]``). Native CPU kernels check this as they run (:func:`raise_empty_class`)."""
    B, C = prototypes.shape[0], prototypes.shape[1]
    if not B * C or not _checks.value_checks_enabled() or _checks.native_cpu(mass):
        return
    i = _checks.first_not_positive(mass, B * C)
    if i >= 0:
        raise_empty_class(op, mass, i, C, what)


def raise_empty_class(op: str, mass: torch.Tensor, index: int, classes: int, what: str) -> None:
    """Raise for the class at flat ``index`` (episode * classes + class) of ``mass``."""
    b, c = divmod(index, classes)
    raise ValueError(
        f"{op}: episode {b}, class {c} has {what} (got {mass.reshape(-1)[index].item():g}); "
        "every class needs at least one support example"
    )


def _check_weights(weights: torch.Tensor) -> None:
    """Weights must be finite and non-negative: one native scan on CPU, torch reductions else."""
    if not _checks.value_checks_enabled() or weights.numel() == 0:
        return
    if _checks.native_cpu(weights):
        i = _native.kernel("first_negative_or_nonfinite")(
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


def _checked(
    embeddings: object, labels: object, n_way: object, weights: object
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    embeddings = _checks.tensor(_OP, "embeddings", embeddings, 3, "[B,S,D]")
    if isinstance(n_way, bool) or not isinstance(n_way, int) or n_way < 1:
        raise ValueError(f"{_OP}: 'n_way' must be a positive int, got {n_way!r}")
    embeddings, weights = _checks.autocast_float32(embeddings, weights)
    B, S, _ = embeddings.shape
    if weights is None:
        _checks.floating(_OP, ("embeddings",), (embeddings,))
    else:
        weights = _checks.tensor(_OP, "weights", weights, 2, "[B,S]")
        _checks.floating(_OP, ("embeddings", "weights"), (embeddings, weights))
        if tuple(weights.shape) != (B, S):
            raise ValueError(
                f"{_OP}: 'weights' must have shape [{B}, {S}] like labels, got {list(weights.shape)}"
            )
        weights = weights.contiguous()
        _check_weights(weights)
    labels = _checks.labels(_OP, "labels", labels, (B, S), n_way, embeddings)
    return embeddings.contiguous(), labels, n_way, weights


def _forward(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    wsum = _native.workspace(embeddings, embeddings.shape[0], n_way)
    return _launch_forward(embeddings, labels, n_way, weights, wsum), wsum


def _inference(embeddings, labels, n_way, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward when no gradient is needed: the class masses go to scratch."""
    wsum = _native.scratch(embeddings, embeddings.shape[0] * n_way)
    return _launch_forward(embeddings, labels, n_way, weights, wsum), wsum


def _launch_forward(e, labels, n_way, w, wsum) -> torch.Tensor:
    B, S, D = e.shape
    out = e.new_empty(B, n_way, D)
    bad_label, empty_class = _native.kernel("prototypes_forward")(
        e, emb=e.data_ptr(), labels=labels.data_ptr(), w=0 if w is None else w.data_ptr(),
        out=out.data_ptr(), wsum=wsum.data_ptr(), B=B, S=S, N=n_way, D=D,
        check=_checks.value_checks_enabled(),
    )  # fmt: skip
    if bad_label >= 0:
        _checks.raise_bad_label(_OP, "labels", labels, bad_label, n_way)
    if empty_class >= 0:
        raise_empty_class(_OP, wsum, empty_class, n_way, "no support example")
    return out


def _fake(embeddings, labels, n_way, weights) -> tuple[torch.Tensor, torch.Tensor]:
    B, _, D = embeddings.shape
    return embeddings.new_empty((B, n_way, D)), _native.workspace(embeddings, B, n_way)


def _backward(upstream, args, outputs, needs) -> tuple[torch.Tensor | None, ...]:
    (grad, _), (e, labels, n_way, w), (out, wsum), (need_e, need_w) = upstream, args, outputs, needs
    grad = grad.contiguous()  # kept alive (bound) until the kernel has run
    B, S, D = e.shape
    ge = torch.empty_like(e) if need_e else None
    gw = e.new_empty((B, S)) if need_w else None
    _native.kernel("prototypes_backward")(
        e, g=grad.data_ptr(), emb=e.data_ptr(), labels=labels.data_ptr(),
        w=_native.ptr(w), out=out.data_ptr(), wsum=wsum.data_ptr(), gemb=_native.ptr(ge),
        gw=_native.ptr(gw), B=B, S=S, N=n_way, D=D,
    )  # fmt: skip
    return ge, gw


def _result(outputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    check_nonempty(_OP, outputs[0], outputs[1], "no support example")
    return outputs[0]


_op = NativeOp(
    _OP,
    checks=_checked,
    forward=_forward,
    inference=_inference,
    fake=_fake,
    backward=_backward,
    reference=_reference.prototypes_with_mass,
    result=_result,
    differentiable=(0, 3),
    saved_outputs=(0, 1),
)


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
    return _op.call(embeddings, labels, n_way, weights)
