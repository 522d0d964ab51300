"""Input validation at the Python boundary of the ops.

Messages name the op, the argument, what was expected and what came. Value checks
(label ranges, empty classes, NaN in small inputs) read data back; on CUDA that is a
device synchronisation, so :func:`set_value_checks` can turn them off for peak speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmeta.ops import _native

_value_checks = True
_INFINITY = float("inf")


def set_value_checks(enabled: bool) -> None:
    """Turn the data-reading checks (label ranges, empty classes, NaN) on or off.

    Unchecked, a class without support examples (zero total weight or mask mass) gets a NaN
    prototype from :func:`~medmeta.ops.prototypes` and :func:`~medmeta.ops.masked_prototypes`
    on every backend.
    """
    global _value_checks
    _value_checks = bool(enabled)


def value_checks_enabled() -> bool:
    return _value_checks and not torch.compiler.is_compiling()


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def tensor(op: str, name: str, value: object, ndim: int, layout: str) -> torch.Tensor:
    """``value`` is a tensor with ``ndim`` dimensions (``layout`` names them, e.g. "[B,Q,D]")."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{op}: argument '{name}' must be a torch.Tensor {layout}, got {type(value).__name__}"
        )
    if value.dim() != ndim:
        raise ValueError(
            f"{op}: argument '{name}' must be a {ndim}-D tensor {layout}, got shape {_shape(value)}"
        )
    return value


def floating(op: str, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """All tensors share one floating dtype that the kernels of their device support."""
    first = tensors[0]
    dtype = first.dtype
    if first.is_cpu:  # the common case first: attribute reads only, no device objects
        if dtype is torch.float32 or dtype is torch.float64:
            for t in tensors:
                if t.dtype is not dtype or not t.is_cpu:
                    break
            else:
                return dtype
    elif first.is_cuda and dtype in _native.CUDA_DTYPES:
        index = first.get_device()
        for t in tensors:
            if t.dtype is not dtype or t.get_device() != index or not t.is_cuda:
                break
        else:
            return dtype
    _explain_floating(op, names, tensors)
    return dtype


def _explain_floating(op: str, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raise the error that names the tensor :func:`floating` rejected."""
    first, dtype, device = names[0], tensors[0].dtype, tensors[0].device
    for name, t in zip(names, tensors, strict=True):
        if t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device; '{first}' is on {device} "
                f"but '{name}' is on {t.device}"
            )
        if t.dtype != dtype:
            raise TypeError(
                f"{op}: '{name}' has dtype {t.dtype} but '{first}' has {dtype}; they must match"
            )
    if device.type == "cpu":
        allowed = _native.CPU_DTYPES
    elif device.type == "cuda":
        allowed = _native.CUDA_DTYPES
    else:
        raise ValueError(f"{op}: tensors must be on a CPU or CUDA device, got {device}")
    names_ = ", ".join(str(d).removeprefix("torch.") for d in allowed)
    raise TypeError(f"{op}: '{first}' must have dtype {names_} on {device.type}, got {dtype}")


def autocast_float32(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Under CUDA autocast, half-precision inputs are promoted to float32, as torch does for
    losses and soft-max; otherwise the tensors are returned unchanged."""
    first = tensors[0]
    if first is None or not first.is_cuda or not torch.is_autocast_enabled("cuda"):
        return tensors
    low = (torch.float16, torch.bfloat16)
    return tuple(t.float() if t is not None and t.dtype in low else t for t in tensors)


def same_size(op: str, what: str, expected: int, name: str, got: int) -> None:
    if expected != got:
        raise ValueError(f"{op}: '{name}' must have {what} {expected}, got {got}")


def labels(
    op: str, name: str, value: object, shape: tuple[int, ...], n: int, like: torch.Tensor
) -> torch.Tensor:
    """Integer class labels of ``shape`` with values in [0, n) on ``like``'s device, as a
    contiguous int64 tensor.

    The range is checked here for CUDA data and under the reference backend; native CPU
    kernels check it as they run (their forward binding returns the first bad index, see
    :func:`raise_bad_label`), which saves a crossing into C++ per call."""
    if (  # the common case, a contiguous int64 CPU tensor of the right shape: metadata only
        type(value) is torch.Tensor
        and value.dtype is torch.int64
        and value.is_cpu
        and like.is_cpu
        and value.shape == shape
        and value.is_contiguous()
        and not _native.use_reference()
    ):
        return value
    return _labels(op, name, value, shape, n, like.device)


def _labels(
    op: str, name: str, value: object, shape: tuple[int, ...], n: int, device: torch.device
) -> torch.Tensor:
    """:func:`labels` for any other input: converted, or refused with the reason."""
    layout = "[" + ",".join(str(s) for s in shape) + "]"
    t = tensor(op, name, value, len(shape), layout)
    if t.dtype is not torch.int64:
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(
                f"{op}: '{name}' must hold integer class indices (int64), got dtype {t.dtype}"
            )
        t = t.to(torch.int64)
    if t.shape != shape:
        raise ValueError(f"{op}: '{name}' must have shape {layout}, got {_shape(t)}")
    if t.device != device:
        raise ValueError(f"{op}: '{name}' is on {t.device} but the data is on {device}")
    t = t.contiguous()
    if value_checks_enabled() and t.numel() > 0 and not native_cpu(t):
        lo, hi = torch.aminmax(t)
        if lo.item() < 0 or hi.item() >= n:
            raise_bad_label(op, name, t, int(((t < 0) | (t >= n)).view(-1).nonzero()[0]), n)
    return t


def raise_bad_label(op: str, name: str, labels: torch.Tensor, index: int, n: int) -> None:
    """Raise for the label at flat ``index`` of ``labels``, which is outside [0, n)."""
    bad = int(labels.reshape(-1)[index])
    raise ValueError(f"{op}: '{name}' must be in [0, {n}), found {bad}")


def native_cpu(t: torch.Tensor) -> bool:
    """Whether native CPU kernels read ``t`` (and so check its values as they run)."""
    return t.is_cpu and not _native.use_reference()


def first_not_positive(values: torch.Tensor, n: int) -> int:
    """Flat index of the first of the first ``n`` values that is not > 0 (zero, negative,
    NaN), or -1 (torch reductions: native CPU kernels check as they run)."""
    bad = (~(values.reshape(-1)[:n] > 0)).nonzero()
    return int(bad[0]) if len(bad) else -1


def positive_float(op: str, name: str, value: object) -> float:
    if type(value) is float and 0 < value < _INFINITY:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: '{name}' must be a float, got {type(value).__name__}")
    v = float(value)
    if not v > 0 or v == _INFINITY:
        raise ValueError(f"{op}: '{name}' must be a positive finite float, got {value!r}")
    return v


def metric(op: str, value: object) -> int:
    code = _native.METRIC_CODES.get(value) if isinstance(value, str) else None
    if code is None:
        raise ValueError(
            f"{op}: 'metric' must be one of {tuple(_native.METRIC_CODES)}, got {value!r}"
        )
    return code
