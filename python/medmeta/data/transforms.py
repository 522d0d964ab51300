"""Batched image transforms in plain torch (no torchvision).

Every transform takes a float tensor ``[N, C, H, W]`` (a single ``[C, H, W]`` image is accepted
and returned unbatched) and returns a new tensor of the same layout. Random transforms draw
one set of parameters per example from an explicit ``torch.Generator`` (CPU) passed as
``generator=``; the same seed gives the same output. Without a generator they use torch's
global generator.

    >>> g = torch.Generator().manual_seed(0)
    >>> aug = Compose([RandomFlip(), RandomRot90(), RandomRotate(10.0)])
    >>> y = aug(to_tensor(images), generator=g)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmeta.edge.windowing import resolve_window

from .errors import DataError

__all__ = [
    "Compose",
    "Normalize",
    "RandomFlip",
    "RandomIntensity",
    "RandomRot90",
    "RandomRotate",
    "Resize",
    "Transform",
    "Window",
    "to_tensor",
]


def to_tensor(images: Any, *, channels_last: bool | None = None) -> torch.Tensor:
    """Images as stored (numpy/torch) -> float32 ``[N, C, H, W]``.

    Accepts ``[N, H, W]`` (gray), ``[N, H, W, C]`` (channels last, C in 1/3/4) or
    ``[N, C, H, W]``; pass ``channels_last`` to disambiguate. Unsigned 8/16-bit data are
    divided by 255/65535; other dtypes are cast unchanged.
    """
    if isinstance(images, torch.Tensor):
        t = images
    else:
        arr = np.asarray(images)
        if arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / np.float32(65535.0)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.uint16:
        t = t.float() / 65535.0
    else:
        t = t.float()
    if t.ndim == 3:
        return t[:, None]
    if t.ndim != 4:
        raise DataError(
            f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got {tuple(t.shape)}",
            "images",
        )
    if channels_last is None:
        channels_last = t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4)
    return t.permute(0, 3, 1, 2).contiguous() if channels_last else t


def _batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"expected a torch tensor, got {type(x).__name__}", "x")
    if not x.is_floating_point():
        raise DataError(f"expected a floating-point tensor, got {x.dtype}; use to_tensor()", "x")
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise DataError(f"expected [N, C, H, W] or [C, H, W], got {tuple(x.shape)}", "x")
    return x, False


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


class Transform:
    """Base class: ``transform(x, generator=None)``."""

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batch(x)
        out = self.apply(xb, generator)
        return out[0] if single else out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator=generator)
        return x


class Resize(Transform):
    """Resize to ``size`` = ``(H, W)`` or an int (square), bilinear with antialiasing."""

    def __init__(
        self, size: int | tuple[int, int], mode: str = "bilinear", antialias: bool = True
    ) -> None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or min(hw) < 1:
            raise DataError(f"size must be a positive int or (H, W), got {size!r}", "size")
        self.size = (int(hw[0]), int(hw[1]))
        self.mode = mode
        self.antialias = antialias

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x.clone()
        aa = self.antialias and self.mode in ("bilinear", "bicubic")
        kw: dict[str, Any] = {"antialias": aa} if self.mode in ("bilinear", "bicubic") else {}
        if self.mode in ("bilinear", "bicubic"):
            kw["align_corners"] = False
        return F.interpolate(x, size=self.size, mode=self.mode, **kw)


class Normalize(Transform):
    """``(x - mean) / std`` per channel (scalars or one value per channel)."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if (self.std <= 0).any():
            raise DataError(f"std must be > 0, got {self.std.tolist()}", "std")

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = x.shape[1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v.numel() not in (1, c):
                raise DataError(f"{name} has {v.numel()} values for {c} channels", name)
        shape = (1, -1, 1, 1)
        mean = self.mean.to(x.device, x.dtype).reshape(shape)
        std = self.std.to(x.device, x.dtype).reshape(shape)
        return (x - mean) / std


class Window(Transform):
    """Intensity window: ``[center - width/2, center + width/2]`` -> ``[0, 1]``, clipped.

    ``window`` is a preset (``"lung"``, ``"soft_tissue"``, ``"bone"``, ``"brain"``, ... from
    :data:`~medmeta.edge.windowing.WINDOW_PRESETS`, in HU) or ``(center, width)``.
    """

    def __init__(
        self,
        window: str | tuple[float, float] | None = None,
        *,
        center: float | None = None,
        width: float | None = None,
    ) -> None:
        self.center, self.width = resolve_window(window, center, width)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        lo = self.center - self.width / 2.0
        return ((x - lo) / self.width).clamp_(0.0, 1.0)


class RandomFlip(Transform):
    """Flip each example with probability ``p`` along ``"horizontal"`` (W), ``"vertical"`` (H)
    or ``"both"`` (each axis drawn independently)."""

    def __init__(self, p: float = 0.5, axis: str = "horizontal") -> None:
        if not 0.0 <= p <= 1.0:
            raise DataError(f"p must lie in [0, 1], got {p}", "p")
        if axis not in ("horizontal", "vertical", "both"):
            raise DataError(
                f"axis must be 'horizontal', 'vertical' or 'both', got {axis!r}", "axis"
            )
        self.p = p
        self.axis = axis

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        out = x.clone()
        dims = {"horizontal": [3], "vertical": [2], "both": [3, 2]}[self.axis]
        for d in dims:
            flip = _rand(x.shape[0], generator, x.device) < self.p
            if flip.any():
                out[flip] = out[flip].flip(d)
        return out


class RandomRot90(Transform):
    """Rotate each example by ``k * 90`` degrees, ``k`` uniform in 0..3 (0 or 2 for non-square
    images), with probability ``p``."""

    def __init__(self, p: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise DataError(f"p must lie in [0, 1], got {p}", "p")
        self.p = p

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]
        square = x.shape[2] == x.shape[3]
        k = torch.randint(0, 4 if square else 2, (n,), generator=generator)
        if not square:
            k = k * 2
        k = torch.where(torch.rand(n, generator=generator) < self.p, k, torch.zeros_like(k))
        out = x.clone()
        for kk in (1, 2, 3):
            sel = (k == kk).to(x.device)
            if sel.any():
                out[sel] = torch.rot90(x[sel], kk, dims=(2, 3))
        return out


class RandomRotate(Transform):
    """Small rotation by an angle uniform in ``[-degrees, degrees]`` per example
    (``affine_grid`` + ``grid_sample``, border padding), with probability ``p``."""

    def __init__(
        self,
        degrees: float = 10.0,
        p: float = 1.0,
        mode: str = "bilinear",
        padding_mode: str = "border",
    ) -> None:
        if degrees < 0 or not 0.0 <= p <= 1.0:
            raise DataError(f"need degrees >= 0 and p in [0, 1], got {degrees}, {p}", "degrees")
        self.degrees = float(degrees)
        self.p = p
        self.mode = mode
        self.padding_mode = padding_mode

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = (torch.rand(n, generator=generator) * 2.0 - 1.0) * self.degrees
        angle = torch.where(
            torch.rand(n, generator=generator) < self.p, angle, torch.zeros_like(angle)
        )
        theta_rad = angle * (math.pi / 180.0)
        cos, sin = torch.cos(theta_rad), torch.sin(theta_rad)
        # normalised coordinates: correct for the aspect ratio so that rotations stay rigid
        ar = w / h
        mat = torch.zeros(n, 2, 3)
        mat[:, 0, 0] = cos
        mat[:, 0, 1] = -sin / ar
        mat[:, 1, 0] = sin * ar
        mat[:, 1, 1] = cos
        mat = mat.to(x.device, x.dtype)
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=False
        )


class RandomIntensity(Transform):
    """Light intensity jitter per example: ``x * (1 + c) + b`` with ``c`` uniform in
    ``[-contrast, contrast]`` and ``b`` uniform in ``[-brightness, brightness]``."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1) -> None:
        if brightness < 0 or contrast < 0:
            raise DataError("brightness and contrast must be >= 0", "brightness")
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]
        c = (torch.rand(n, generator=generator) * 2.0 - 1.0) * self.contrast
        b = (torch.rand(n, generator=generator) * 2.0 - 1.0) * self.brightness
        shape = (n, 1, 1, 1)
        return x * (1.0 + c.to(x.device, x.dtype).reshape(shape)) + b.to(x.device, x.dtype).reshape(
            shape
        )
