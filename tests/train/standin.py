"""A small stand-in learner and tiny real tasks for the train/eval tests (the library's
algorithms are developed separately): nearest-centroid classification on a backbone's
embeddings, trained with the fused prototypical loss."""

from __future__ import annotations

import functools

import torch
from torch import nn

from medmeta.algorithms.base import Adapted, MetaLearner
from medmeta.data import load
from medmeta.data.episodes import EpisodeBatch, split_classes
from medmeta.nn import MLP
from medmeta.ops import pairwise_distance, prototypes, prototypical_loss

PBMC_FEATURES = 765


class _CentroidHead(nn.Module):
    def __init__(self, backbone: nn.Module, protos: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.backbone, self.scale = backbone, scale
        self.register_buffer("protos", protos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.backbone(x)[None]
        return -pairwise_distance(q, self.protos[None])[0] * self.scale


class CentroidLearner(MetaLearner):
    """Nearest class centroid (prototypes) on ``backbone`` embeddings.

    ``scale`` multiplies the predicted logits only (``scale > 1`` makes an over-confident,
    miscalibrated learner with the same predictions). ``crash_after`` (not a hyper-parameter)
    makes ``meta_loss`` raise on that call, to simulate an interrupted run.
    """

    name = "test_centroid"

    def __init__(self, backbone: nn.Module, ways: int, scale: float = 1.0) -> None:
        super().__init__(backbone, ways, scale=scale)
        self.scale = scale
        self.crash_after: int | None = None
        self.calls = 0

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated interruption")
        protos = prototypes(self._embed(batch.support_x), batch.support_y, batch.ways)
        loss, acc = prototypical_loss(self._embed(batch.query_x), protos, batch.query_y)
        return loss.mean(), acc

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        n = int(support_y.max()) + 1
        protos = prototypes(self._embed(support_x), support_y, n)
        return -pairwise_distance(self._embed(query_x), protos) * self.scale

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        n = int(support_y.max()) + 1
        protos = prototypes(self._embed(support_x[None]), support_y[None], n)[0]
        return Adapted(_CentroidHead(self.backbone, protos.detach(), self.scale), n)


@functools.cache
def pbmc_splits():
    """pbmc68k cell types split by class: (train 6 classes, val 2, test 2)."""
    return split_classes(load("pbmc68k_celltypes"), seed=0)


def mlp_learner(
    seed: int = 0, ways: int = 3, scale: float = 1.0, dropout: float = 0.0
) -> CentroidLearner:
    torch.manual_seed(seed)
    return CentroidLearner(MLP(PBMC_FEATURES, hidden=(32,), dropout=dropout), ways, scale=scale)


class TorchCentroidLearner(CentroidLearner):
    """The same learner with a pure-torch loss (the native ops take float32/float64 on CPU),
    so mixed precision can be exercised on CPU; records the embedding dtype it saw."""

    name = "test_centroid_torch"

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated interruption")
        s, q = self._embed(batch.support_x), self._embed(batch.query_x)
        self.seen_dtype = s.dtype
        onehot = torch.nn.functional.one_hot(batch.support_y, batch.ways).to(s.dtype)
        protos = onehot.transpose(1, 2) @ s / onehot.sum(1)[..., None]
        logits = -((q[:, :, None, :] - protos[:, None, :, :]) ** 2).sum(-1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, (logits.argmax(-1) == batch.query_y).float().mean(-1)


class CustomStepLearner(TorchCentroidLearner):
    """Overrides ``meta_train_step`` (as Reptile-like methods do) and reports an extra value."""

    name = "test_centroid_custom_step"

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer):
        result = super().meta_train_step(batch, optimizer)
        result.extra["custom"] = 2.0
        return result
