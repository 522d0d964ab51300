"""Dense encoder for few-shot medical image segmentation.

:class:`SegEncoder` maps images ``[n, C, H, W]`` to feature maps
``[n, out_channels, ceil(H / 8), ceil(W / 8)]``: a small dilated ResNet with output
stride 8, the kind of backbone prototype segmenters pool support features from with the
support mask and compare, location by location, with query features:

* PANet -- K. Wang, J. H. Liew, Y. Zou, D. Zhou, J. Feng. "PANet: Few-Shot Image Semantic
  Segmentation with Prototype Alignment". ICCV 2019.
* SSL-ALPNet -- C. Ouyang, C. Biffi, C. Chen, T. Kart, H. Qiu, D. Rueckert.
  "Self-supervision with superpixels: training few-shot medical image segmentation without
  annotation". ECCV 2020.
* Dilated ("atrous") convolutions that keep the resolution while growing the receptive
  field -- L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. "DeepLab:
  Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
  Connected CRFs". TPAMI 2018 (and "Rethinking Atrous Convolution", arXiv:1706.05587).

:func:`upsample_to` brings per-pixel logits ``[n, K, h, w]`` computed on the feature grid
back to the image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegEncoder", "upsample_to"]

_MIN_SIZE = 8


def _groups(channels: int) -> int:
    """Number of GroupNorm groups: the largest of 8, 4, 2, 1 that divides ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


class _ResBlock(nn.Module):
    """Basic residual block (He et al. 2016): two 3x3 conv-GroupNorm layers, ReLU, and a
    1x1 conv-GroupNorm shortcut when the width or resolution changes. ``stride`` 2
    halves the size (``ceil``); ``dilation`` d keeps it (padding d)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, dilation, dilation, bias=False)
        self.norm1 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, dilation, dilation, bias=False)
        self.norm2 = _norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _norm(out_ch)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class SegEncoder(nn.Module):
    """Small dilated ResNet encoder with output stride 8 for few-shot segmentation.

    Input ``x``: ``[n, in_channels, H, W]`` floating point, ``H, W >= 8``.
    Output: ``[n, out_channels, ceil(H / 8), ceil(W / 8)]``.

    Every stride-2 layer is a 3x3 convolution with padding 1 (or a 1x1 one, padding 0, on
    the shortcut), which maps a size ``s`` to ``floor((s - 1) / 2) + 1 = ceil(s / 2)``;
    three of them give ``ceil(ceil(ceil(s / 2) / 2) / 2) = ceil(s / 8)``, so sizes not
    divisible by 8 are fine (the last row/column of cells sees a partly padded window).
    Output cell ``(i, j)`` is centred on input pixel ``(8 i, 8 j)``.

    Layout, for ``channels = (c0, c1, c2, c3, ...)``:

    * stem: 3x3 conv, stride 2, ``in_channels -> c0``, GroupNorm, ReLU (stride 2);
    * stage 1: residual block ``c0 -> c0``, stride 2 (stride 4);
    * stage 2: residual block ``c0 -> c1``, stride 2 (stride 8);
    * stages 3, 4, ...: residual blocks ``c1 -> c2 -> c3 ...`` at stride 8 with dilated
      3x3 convolutions, dilation 2, 4, 8, ... (DeepLab; Chen et al.). They grow the
      receptive field from 39 px (after stage 2) to 103 px (dilation 2) and 231 px
      (dilation 4) without losing resolution, so a query location can use context well
      beyond its own organ boundary;
    * projection: 1x1 conv ``c_last -> out_channels`` (with bias, no norm or ReLU), the
      feature space prototypes and cosine similarities are computed in (PANet; SSL-ALPNet).

    Normalisation is GroupNorm (Wu & He 2018; 8 groups, fewer if the width is not a
    multiple of 8), not BatchNorm: 1-shot episodes feed one or two highly correlated
    slices, for which batch statistics are noisy, differ between support and query
    batches, and differ between training and evaluation; GroupNorm normalises each image
    on its own, so the features of an image do not depend on what else is in the batch
    and ``train()`` / ``eval()`` compute the same function.

    Convolutions use Kaiming-normal initialisation (fan-out, ReLU); the defaults (about
    0.62 M parameters) train from scratch on a CPU on 128x128 slices.

    Attributes: ``in_channels``, ``out_channels``, ``channels``, ``output_stride = 8``,
    and the submodules ``stem``, ``stages`` (a ``ModuleList``) and ``proj``.
    """

    output_stride: int = 8

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 128),
        out_channels: int = 128,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        self.out_channels = _check_positive_int("out_channels", out_channels)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise TypeError(f"channels: expected a sequence of ints, got {channels!r}")
        if len(channels) < 2:
            raise ValueError(
                f"channels: expected at least 2 widths (stem/stage 1 and stage 2), got {channels!r}"
            )
        widths = tuple(_check_positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        self.channels = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            _norm(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = [
            _ResBlock(widths[0], widths[0], stride=2),
            _ResBlock(widths[0], widths[1], stride=2),
        ]
        for i in range(2, len(widths)):
            blocks.append(_ResBlock(widths[i - 1], widths[i], dilation=2 ** (i - 1)))
        self.stages = nn.ModuleList(blocks)
        self.proj = nn.Conv2d(widths[-1], out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor [n, C, H, W], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(
                f"x: expected a 4-D tensor [n, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: expected {self.in_channels} channel(s) (dim 1 of [n, C, H, W]), "
                f"got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if x.shape[2] < _MIN_SIZE or x.shape[3] < _MIN_SIZE:
            raise ValueError(
                f"x: expected spatial size H, W >= {_MIN_SIZE}, got {x.shape[2]}x{x.shape[3]}"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, in_channels, H, W]`` -> ``[n, out_channels, ceil(H / 8), ceil(W / 8)]``."""
        y = self.stem(self._check_input(x))
        for stage in self.stages:
            y = stage(y)
        return self.proj(y)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature-map size for an ``height x width`` input: ``(ceil(H/8), ceil(W/8))``."""
        s = self.output_stride
        return -(-height // s), -(-width // s)


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize per-pixel logits ``[n, K, h, w]`` to ``[n, K, *size]``
    (``align_corners=False``), e.g. from the ``SegEncoder`` grid back to the image size."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"logits: expected a torch.Tensor [n, K, h, w], got {type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() != 4:
        raise ValueError(
            f"logits: expected a 4-D tensor [n, K, h, w], got {logits.dim()}-D "
            f"with shape {tuple(logits.shape)}"
        )
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"size: expected a (height, width) pair of positive ints, got {size!r}")
    return F.interpolate(logits, size=(size[0], size[1]), mode="bilinear", align_corners=False)
