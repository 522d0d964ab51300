"""Backbones for few-shot learning, usable as plain modules, with
``torch.func.functional_call``, and task-batched through ``forward_tasks``.

Shapes: image backbones take ``[n, C, H, W]``, the MLP ``[n, F]``, the 1-D CNN
``[n, C, L]``; all return embeddings ``[n, D]``. ``forward_tasks`` takes the same with a
leading task axis and per-task parameters (see :mod:`medmeta.nn.layers`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from medmeta.nn import layers as L
from medmeta.nn.layers import Params, TaskSequential
from medmeta.nn.seg_encoder import SegEncoder


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> TaskSequential:
    """3x3 convolution, batch norm, ReLU and 2x2 max pooling (Vinyals et al. 2016)."""
    parts: list[nn.Module] = [
        L.Conv2d(in_channels, out_channels, 3, padding=1),
        L.BatchNorm2d(out_channels),
        L.Elementwise(nn.ReLU()),
    ]
    if pool:
        parts.append(L.MaxPool2d(2))
    return TaskSequential(*parts)


class Conv4(TaskSequential):
    """The standard four-block convolutional few-shot backbone (Vinyals et al. 2016;
    Snell et al. 2017; Finn et al. 2017). 28x28 inputs give 64-d embeddings with
    ``hidden=64``; 64x64 inputs give ``hidden * 4 * 4``."""

    def __init__(self, in_channels: int = 3, hidden: int = 64, depth: int = 4) -> None:
        blocks = [conv_block(in_channels if i == 0 else hidden, hidden) for i in range(depth)]
        super().__init__(*blocks, L.Flatten())
        self.in_channels, self.hidden = in_channels, hidden


class ResidualBlock(nn.Module):
    """ResNet-12 block: three 3x3 conv-BN layers with a 1x1 shortcut, leaky ReLU and
    max pooling (Oreshkin et al. 2018; Lee et al. 2019)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = TaskSequential(
            L.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            L.BatchNorm2d(out_channels),
            L.Elementwise(nn.LeakyReLU(0.1)),
            L.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            L.BatchNorm2d(out_channels),
            L.Elementwise(nn.LeakyReLU(0.1)),
            L.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            L.BatchNorm2d(out_channels),
        )
        self.shortcut = TaskSequential(
            L.Conv2d(in_channels, out_channels, 1, bias=False), L.BatchNorm2d(out_channels)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = L.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        y = self.body.forward_tasks(x, params, prefix + "body.")
        y = self.act(y + self.shortcut.forward_tasks(x, params, prefix + "shortcut."))
        return self.pool.forward_tasks(y, params)


class ResNet12(TaskSequential):
    """A small ResNet-12: four residual blocks and global average pooling."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256)) -> None:
        widths = [in_channels, *channels]
        blocks = [ResidualBlock(a, b) for a, b in itertools.pairwise(widths)]
        super().__init__(*blocks, L.GlobalAvgPool())


class MLP(TaskSequential):
    """Fully connected embedding for tabular and gene-expression data:
    Linear-BatchNorm-ReLU(-Dropout) per hidden layer."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        parts: list[nn.Module] = []
        width = in_features
        for h in hidden:
            parts.append(L.Linear(width, h))
            if batch_norm:
                parts.append(L.BatchNorm1d(h))
            parts.append(L.Elementwise(nn.ReLU()))
            if dropout > 0:
                parts.append(L.Elementwise(nn.Dropout(dropout)))
            width = h
        super().__init__(*parts)


class Conv1dNet(TaskSequential):
    """1-D CNN for fixed-length time series (ECG beats, pressure curves): four
    conv-BN-ReLU-maxpool blocks and global average pooling. Input ``[n, C, L]``."""

    def __init__(
        self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 64, 64), kernel_size: int = 7
    ) -> None:
        parts: list[nn.Module] = []
        width = in_channels
        for c in channels:
            parts.append(TaskSequential(
                L.Conv1d(width, c, kernel_size, padding=kernel_size // 2),
                L.BatchNorm1d(c),
                L.Elementwise(nn.ReLU()),
                L.MaxPool1d(2),
            ))  # fmt: skip
            width = c
        super().__init__(*parts, L.GlobalAvgPool())


def embedding_dim(backbone: nn.Module, input_shape: Sequence[int]) -> int:
    """The embedding size the backbone gives for one input of ``input_shape`` (no batch axis)."""
    was_training = backbone.training
    backbone.eval()
    p = next(backbone.parameters(), None)
    with torch.no_grad():
        probe = torch.zeros(2, *input_shape, dtype=p.dtype if p is not None else None,
                            device=p.device if p is not None else None)  # fmt: skip
        out = backbone(probe)
    backbone.train(was_training)
    return int(out.shape[-1])


def make_backbone(name: str, input_shape: Sequence[int], **kwargs: object) -> nn.Module:
    """A backbone by name for inputs of ``input_shape`` (no batch axis):
    ``conv4``, ``resnet12`` (images ``[C,H,W]``), ``mlp`` (vectors ``[F]``), ``conv1d`` (``[C,L]``),
    ``segencoder`` (the dense encoder of the segmentation learners, images ``[C,H,W]`` ->
    feature maps ``[D, ceil(H/8), ceil(W/8)]``; kwargs ``channels``, ``out_channels``)."""
    name = name.lower()
    if name == "segencoder":
        if "channels" in kwargs:  # JSON (a backbone spec) stores the widths as a list
            kwargs = {**kwargs, "channels": tuple(kwargs["channels"])}  # type: ignore[arg-type]
        return SegEncoder(input_shape[0], **kwargs)  # type: ignore[arg-type]
    if name == "conv4":
        return Conv4(input_shape[0], **kwargs)  # type: ignore[arg-type]
    if name == "resnet12":
        return ResNet12(input_shape[0], **kwargs)  # type: ignore[arg-type]
    if name == "mlp":
        return MLP(int(input_shape[-1]), **kwargs)  # type: ignore[arg-type]
    if name == "conv1d":
        return Conv1dNet(input_shape[0] if len(input_shape) == 2 else 1, **kwargs)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown backbone {name!r}; choose conv4, resnet12, mlp, conv1d or segencoder"
    )
