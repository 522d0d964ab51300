"""Masked average pooling of support feature maps into class prototypes (segmentation)."""

from __future__ import annotations

import torch

from medmeta.ops import _checks, _native, _reference
from medmeta.ops._register import NativeOp
from medmeta.ops.prototypes import check_nonempty, raise_empty_class

_OP = "masked_prototypes"


def _checked(features: object, masks: object) -> tuple[torch.Tensor, torch.Tensor]:
    features = _checks.tensor(_OP, "features", features, 5, "[B,S,D,H,W]")
    masks = _checks.tensor(_OP, "masks", masks, 5, "[B,S,C,H,W]")
    features, masks = _checks.autocast_float32(features, masks)
    _checks.floating(_OP, ("features", "masks"), (features, masks))
    B, S, _, H, W = features.shape
    mB, mS, _, mH, mW = masks.shape
    if mB != B or mS != S or mH != H or mW != W:
        raise ValueError(
            f"{_OP}: 'masks' must have shape [{B}, {S}, C, {H}, {W}] to match features "
            f"[B,S,D,H,W] = {list(features.shape)}, got {list(masks.shape)}"
        )
    return features.contiguous(), masks.contiguous()


def _forward(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mass = _native.workspace(features, features.shape[0], masks.shape[2])
    return _launch_forward(features, masks, mass), mass


def _inference(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward when no gradient is needed: the class masses go to scratch."""
    mass = _native.scratch(features, features.shape[0] * masks.shape[2])
    return _launch_forward(features, masks, mass), mass


def _launch_forward(f: torch.Tensor, m: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    B, S, D, H, W = f.shape
    C = m.shape[2]
    out = f.new_empty(B, C, D)
    empty_class = _native.kernel("masked_prototypes_forward")(
        f, feat=f.data_ptr(), masks=m.data_ptr(), out=out.data_ptr(),
        mass=mass.data_ptr(), B=B, S=S, C=C, D=D, HW=H * W, check=_checks.value_checks_enabled(),
    )  # fmt: skip
    if empty_class >= 0:
        raise_empty_class(_OP, mass, empty_class, C, "zero mask mass")
    return out


def _fake(features, masks) -> tuple[torch.Tensor, torch.Tensor]:
    B, _, D = features.shape[:3]
    C = masks.shape[2]
    return features.new_empty((B, C, D)), _native.workspace(features, B, C)


def _backward(upstream, args, outputs, needs) -> tuple[torch.Tensor | None, ...]:
    (grad, _), (f, m), (out, mass), (need_f, need_m) = upstream, args, outputs, needs
    grad = grad.contiguous()  # kept alive (bound) until the kernel has run
    B, S, D, H, W = f.shape
    gf = torch.empty_like(f) if need_f else None
    gm = torch.empty_like(m) if need_m else None
    _native.kernel("masked_prototypes_backward")(
        f, g=grad.data_ptr(), feat=f.data_ptr(), masks=m.data_ptr(),
        out=out.data_ptr(), mass=mass.data_ptr(), gfeat=_native.ptr(gf), gmasks=_native.ptr(gm),
        B=B, S=S, C=m.shape[2], D=D, HW=H * W,
    )  # fmt: skip
    return gf, gm


def _result(outputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    check_nonempty(_OP, outputs[0], outputs[1], "zero mask mass")
    return outputs[0]


_op = NativeOp(
    _OP,
    checks=_checked,
    forward=_forward,
    inference=_inference,
    fake=_fake,
    backward=_backward,
    reference=lambda f, m: (_reference.masked_prototypes(f, m), m.sum(dim=(1, 3, 4))),
    result=_result,
    differentiable=(0, 1),
    saved_outputs=(0, 1),
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
    return _op.call(features, masks)
