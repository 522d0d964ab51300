"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare:
Relation Network for Few-Shot Learning", CVPR 2018).

Instead of a fixed distance, a learned relation module g scores every (class, query)
pair:

    c_n = sum_{(x, y) in S_n} f(x)                  (or the mean: ``aggregate="mean"``)
    r_{q,n} = sigmoid(g([c_n, f(x_q)]))            in (0, 1)
    loss = sum_{q,n} (r_{q,n} - [y_q = n])^2       (MSE against one-hot, as in the paper)

For convolutional embeddings (``feature_shape=(C, H, W)``) the class and query feature
maps are concatenated along the channels and g is the paper's relation module: two
conv-BN-ReLU-pool blocks and two fully connected layers. For vector embeddings
(``embedding_dim=D``) g is an MLP on the concatenated vectors. The class features are
computed with :func:`medmeta.ops.prototypes` (the per-class mean, times the class size for
the sum), and all ``B * Q * N`` pairs of a meta-batch go through g in one forward.

The logits returned by :meth:`RelationNetworks.predict` are the relation module's
pre-sigmoid scores ``g(...)``, so ``sigmoid(logits)`` are the relation scores and the
argmax is the paper's prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner, register
from medmeta.algorithms.protonet import (
    check_choice,
    check_episode,
    check_labels,
    check_positive,
    check_task,
    deployable,
    embed_episodes,
    evaluating,
)
from medmeta.data.episodes import EpisodeBatch


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    parts: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        parts.append(nn.MaxPool2d(2))
    return nn.Sequential(*parts)


class ConvRelationModule(nn.Module):
    """The paper's relation module for feature maps: ``[n, 2C, H, W] -> [n]`` scores.

    Two 3x3 conv-BN-ReLU blocks (2x2 max pooling while the map is at least 2x2), then
    ``Linear(., hidden) - ReLU - Linear(hidden, 1)`` (pre-sigmoid).
    """

    def __init__(self, feature_shape: Sequence[int], channels: int, hidden: int) -> None:
        super().__init__()
        C, H, W = feature_shape
        blocks = []
        in_channels = 2 * C
        for _ in range(2):
            pool = min(H, W) >= 2
            blocks.append(_conv_block(in_channels, channels, pool))
            if pool:
                H, W = H // 2, W // 2
            in_channels = channels
        self.features = nn.Sequential(*blocks)
        self.score = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * H * W, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(pairs)).squeeze(-1)


class MLPRelationModule(nn.Module):
    """Relation module for vector embeddings: ``[n, 2D] -> [n]`` scores (pre-sigmoid)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(pairs).squeeze(-1)


def relation_scores(
    module: nn.Module,
    classes: torch.Tensor,
    queries: torch.Tensor,
    feature_shape: Sequence[int] | None,
) -> torch.Tensor:
    """Pre-sigmoid relation scores ``[B, Q, N]`` of every (query, class) pair.

    Args:
        module: a relation module taking concatenated pairs.
        classes: class features ``[B, N, F]`` (F = C*H*W for feature maps).
        queries: query features ``[B, Q, F]``.
        feature_shape: ``(C, H, W)`` to concatenate maps along channels, or None for vectors.
    """
    B, N, Fdim = classes.shape
    Q = queries.shape[1]
    c = classes.unsqueeze(1).expand(B, Q, N, Fdim)
    q = queries.unsqueeze(2).expand(B, Q, N, Fdim)
    if feature_shape is not None:
        C, H, W = feature_shape
        pairs = torch.cat([c.reshape(-1, C, H, W), q.reshape(-1, C, H, W)], 1)  # [BQN,2C,H,W]
    else:
        pairs = torch.cat([c, q], -1).reshape(B * Q * N, 2 * Fdim)
    return module(pairs).reshape(B, Q, N)


def class_features(
    support: torch.Tensor, labels: torch.Tensor, n_way: int, aggregate: str
) -> torch.Tensor:
    """Per-class mean (``ops.prototypes``) or sum of the support features ``[B, N, F]``."""
    mean = ops.prototypes(support, labels, n_way)
    if aggregate == "mean":
        return mean
    counts = F.one_hot(labels.long(), n_way).sum(1).to(mean.dtype)  # [B, N]
    return mean * counts.unsqueeze(-1)


class RelationHead(nn.Module):
    """Deployable relation classifier for one support set: ``x [n, ...] -> [n, N]``."""

    def __init__(
        self,
        embed: nn.Module,
        relation: nn.Module,
        classes: torch.Tensor,
        feature_shape: Sequence[int] | None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.relation = relation
        self.register_buffer("classes", classes.detach().clone())  # [N, F]
        self.feature_shape = None if feature_shape is None else tuple(feature_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x).reshape(x.shape[0], -1)
        return relation_scores(self.relation, self.classes[None], z[None], self.feature_shape)[0]


@register
class RelationNetworks(MetaLearner):
    """Relation Networks (Sung et al. 2018).

    Args:
        backbone: embedding network f, ``[n, ...] -> [n, F]`` (flattened feature maps when
            ``feature_shape`` is given, e.g. ``Conv4(3, depth=2)`` on 28x28 gives
            ``[n, C*7*7]`` with ``feature_shape=(C, 7, 7)``).
        ways: N for :meth:`predict` / :meth:`adapt`; :meth:`meta_loss` uses the batch's.
        feature_shape: ``(C, H, W)`` of the backbone's maps -> the convolutional relation
            module on channel-concatenated maps.
        embedding_dim: D of vector embeddings -> the MLP relation module (ignored when
            ``feature_shape`` is given).
        channels: conv channels of the relation module (default C, the paper's 64 for 64).
        hidden: width of the relation module's hidden layer (8 in the paper).
        aggregate: ``"sum"`` of the class's support features (the paper's K-shot rule) or
            ``"mean"`` (default; the same up to a factor K that the first layer absorbs at
            a fixed K, and unchanged when the test-time shot count differs).
        loss: ``"mse"`` of sigmoid scores against one-hot targets (the paper), or ``"ce"``
            (cross-entropy of the scores as logits).
    """

    name = "relation"
    shape_hparams = ("feature_shape", "embedding_dim")

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        feature_shape: Sequence[int] | None = None,
        embedding_dim: int | None = None,
        channels: int | None = None,
        hidden: int = 8,
        aggregate: str = "mean",
        loss: str = "mse",
    ) -> None:
        check_choice(self.name, "aggregate", aggregate, ("mean", "sum"))
        check_choice(self.name, "loss", loss, ("mse", "ce"))
        hidden = check_positive(self.name, "hidden", hidden, integer=True)
        if feature_shape is not None:
            feature_shape = [int(s) for s in feature_shape]
            if len(feature_shape) != 3 or min(feature_shape) < 1:
                raise ValueError(
                    f"relation: 'feature_shape' must be (C, H, W) of the backbone's feature "
                    f"maps, got {feature_shape}"
                )
            embedding_dim = math.prod(feature_shape)
            channels = feature_shape[0] if channels is None else channels
            channels = check_positive(self.name, "channels", channels, integer=True)
        elif embedding_dim is None:
            raise ValueError(
                "relation: give 'feature_shape' (C, H, W) for convolutional feature maps or "
                "'embedding_dim' D for vector embeddings (medmeta.nn.embedding_dim)"
            )
        else:
            embedding_dim = check_positive(self.name, "embedding_dim", embedding_dim, True)
        super().__init__(
            backbone,
            ways,
            feature_shape=feature_shape,
            embedding_dim=embedding_dim,
            channels=channels,
            hidden=hidden,
            aggregate=aggregate,
            loss=loss,
        )
        self.feature_shape = feature_shape
        self.embedding_dim = embedding_dim
        self.aggregate = aggregate
        self.loss = loss
        if feature_shape is not None:
            self.relation: nn.Module = ConvRelationModule(feature_shape, channels, hidden)
        else:
            self.relation = MLPRelationModule(embedding_dim, hidden)

    def _scores(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        check_episode(self.name, support_x, support_y, query_x)
        zs, zq = embed_episodes(self.backbone, support_x, query_x)  # [B,S,F], [B,Q,F]
        if zs.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"relation: the backbone gives {zs.shape[-1]} features per example but the "
                f"relation module expects {self.embedding_dim} "
                f"(feature_shape={self.feature_shape}, embedding_dim={self.embedding_dim})"
            )
        classes = class_features(zs, support_y, n_way, self.aggregate)  # [B, N, F]
        return relation_scores(self.relation, classes, zq, self.feature_shape)  # [B, Q, N]

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE (or CE) of the relation scores over the B episodes; query accuracy ``[B]``."""
        scores = self._scores(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        targets = check_labels(self.name, "query_y", batch.query_y, batch.ways)
        if self.loss == "mse":
            one_hot = F.one_hot(targets, batch.ways).to(scores.dtype)
            loss = F.mse_loss(scores.sigmoid(), one_hot)
        else:
            loss = F.cross_entropy(scores.flatten(0, 1), targets.flatten())
        accuracy = (scores.argmax(-1) == targets).float().mean(-1)
        return loss, accuracy.detach()

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Pre-sigmoid relation scores ``[B, Q, N]`` (the logits)."""
        check_episode(self.name, support_x, support_y, query_x)
        return self._scores(support_x, support_y, query_x, self.task_ways(support_y))

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """A :class:`RelationHead` with the support set's class features (eval mode)."""
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        with evaluating(self):
            zs, _ = embed_episodes(self.backbone, support_x[None], support_x[None, :0])
            classes = class_features(zs, support_y[None], n_way, self.aggregate)[0]
        head = RelationHead(
            deployable(self.backbone), deployable(self.relation), classes, self.feature_shape
        )
        return Adapted(head, n_way).eval()
