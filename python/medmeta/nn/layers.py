"""Task-batched layers: ordinary ``nn.Module`` layers that can also run T tasks at once,
each task with its own weights, for the MAML family.

``forward(x)`` is the usual single-model forward. ``forward_tasks(x, params, prefix)``
takes task-major inputs ``[T, n, ...]`` and per-task parameters ``params[prefix + name]``
shaped ``[T, *param.shape]``. Convolutions become one grouped convolution over the
packed layout ``[n, T*C, ...]`` (groups = T), and batch norm runs over that packed
layout, so its statistics are computed per task and channel exactly. This batching
differentiates to any order with plain autograd; ``torch.func.vmap`` over tasks does not
give correct second-order gradients through batch norm (pytorch/functorch#534).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

Params = Mapping[str, torch.Tensor]


def pack(x: torch.Tensor) -> torch.Tensor:
    """``[T, n, C, *S]`` -> ``[n, T*C, *S]`` (a view when x came from :func:`unpack`)."""
    T, n, C = x.shape[:3]
    return x.transpose(0, 1).reshape(n, T * C, *x.shape[3:])


def unpack(y: torch.Tensor, tasks: int) -> torch.Tensor:
    """``[n, T*C, *S]`` -> ``[T, n, C, *S]`` (a view)."""
    n, TC = y.shape[:2]
    return y.view(n, tasks, TC // tasks, *y.shape[2:]).transpose(0, 1)


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1)


class Conv2d(nn.Conv2d):
    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        T = x.shape[0]
        w = params[prefix + "weight"]
        y = F.conv2d(pack(x), w.reshape(-1, *w.shape[2:]), _flat(params.get(prefix + "bias")),
                     self.stride, self.padding, self.dilation, T * self.groups)  # fmt: skip
        return unpack(y, T)


class Conv1d(nn.Conv1d):
    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        T = x.shape[0]
        w = params[prefix + "weight"]
        y = F.conv1d(pack(x), w.reshape(-1, *w.shape[2:]), _flat(params.get(prefix + "bias")),
                     self.stride, self.padding, self.dilation, T * self.groups)  # fmt: skip
        return unpack(y, T)


class _TaskBatchNorm:
    """Per-task batch statistics (transductive, as in MAML); running stats are not used."""

    eps: float

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        T = x.shape[0]
        y = F.batch_norm(pack(x), None, None, _flat(params.get(prefix + "weight")),
                         _flat(params.get(prefix + "bias")), training=True, eps=self.eps)  # fmt: skip
        return unpack(y, T)


class BatchNorm2d(_TaskBatchNorm, nn.BatchNorm2d):
    pass


class BatchNorm1d(_TaskBatchNorm, nn.BatchNorm1d):
    pass


class Linear(nn.Linear):
    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        w = params[prefix + "weight"]  # [T, out, in]
        b = params.get(prefix + "bias")
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


class MaxPool2d(nn.MaxPool2d):
    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        return unpack(self(pack(x)), x.shape[0])


class MaxPool1d(nn.MaxPool1d):
    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        return unpack(self(pack(x)), x.shape[0])


class Elementwise(nn.Module):
    """Wraps a shape-agnostic module (activation, dropout) for both forwards."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        return self.module(x)


class Flatten(nn.Module):
    """``[n, ...] -> [n, F]``; task-major ``[T, n, ...] -> [T, n, F]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        return x.flatten(2)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial/temporal axes: ``[n, C, *S] -> [n, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        return x.flatten(3).mean(-1)


class TaskSequential(nn.Sequential):
    """``nn.Sequential`` of task-batched layers, with ``forward_tasks`` over all of them."""

    def forward_tasks(self, x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
        for name, layer in self.named_children():
            x = layer.forward_tasks(x, params, f"{prefix}{name}.")
        return x


def task_parameters(module: nn.Module, tasks: int) -> dict[str, torch.Tensor]:
    """The module's parameters broadcast to ``[tasks, *shape]`` (views: gradients flow back
    to the shared meta-parameters, summed over tasks)."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in module.named_parameters()}
