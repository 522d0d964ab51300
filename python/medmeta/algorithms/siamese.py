"""Siamese networks (Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot
Image Recognition", ICML Deep Learning Workshop 2015) trained with metric losses.

One embedding network is applied to both members of a pair; training pulls same-class
examples together and pushes different-class examples apart, and a new class is then
recognised by distance to its support examples. The pairs and triplets are all those of
each episode's support + query examples (labels known), built from one
``[B, M, M]`` distance matrix of :func:`medmeta.ops.pairwise_distance`:

* ``loss="contrastive"`` (Hadsell, Chopra & LeCun, CVPR 2006), over all pairs i != j:
  ``[y_i = y_j] d_ij^2 + [y_i != y_j] max(0, margin - d_ij)^2``, with the positive and
  negative pair terms averaged separately and weighted equally (an N-way episode has
  about N times more negative than positive pairs);
* ``loss="triplet"`` (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015):
  ``max(0, d_ap - d_an + margin)`` over the batch-hard triplets (hardest positive and
  hardest negative of each anchor; Hermans, Beyer & Leibe 2017) or over all valid
  triplets (``mining="all"``).

d is the Euclidean distance of (by default L2-normalised) embeddings. (Koch et al. score
a pair with a learned weighted L1 distance and a logistic output trained by
cross-entropy; the margin losses here are the common metric-learning alternatives and
give an embedding that a distance classifier can use directly.) Prediction uses
the support set as the gallery: logits are ``-d`` to each class prototype
(``classifier="prototype"``) or to each class's nearest support example
(``classifier="nearest"``, the paper's one-shot nearest-neighbour rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner, register
from medmeta.algorithms.protonet import (
    L2Normalize,
    PrototypeHead,
    check_choice,
    check_episode,
    check_labels,
    check_positive,
    check_task,
    deployable,
    distance,
    embed_episodes,
    evaluating,
)
from medmeta.data.episodes import EpisodeBatch

_SQRT_EPS = 1e-12  # d = sqrt(d^2 + eps): finite gradients at d = 0


def contrastive_loss(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Contrastive loss per episode ``[B]`` from distances ``[B, M, M]``, labels ``[B, M]``."""
    same = labels.unsqueeze(2) == labels.unsqueeze(1)  # [B, M, M]
    off_diagonal = ~torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
    positive = (same & off_diagonal).to(dist.dtype)
    negative = (~same).to(dist.dtype)
    pull = (positive * dist.square()).sum((1, 2)) / positive.sum((1, 2)).clamp_min(1)
    push = (negative * (margin - dist).clamp_min(0).square()).sum((1, 2))
    push = push / negative.sum((1, 2)).clamp_min(1)
    return 0.5 * (pull + push)


def triplet_loss(
    dist: torch.Tensor, labels: torch.Tensor, margin: float, mining: str
) -> torch.Tensor:
    """Triplet loss per episode ``[B]`` from distances ``[B, M, M]``, labels ``[B, M]``."""
    same = labels.unsqueeze(2) == labels.unsqueeze(1)  # [B, M, M]
    eye = torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    if mining == "batch_hard":
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(-1)  # [B, M]
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(-1)  # [B, M]
        valid = positive.any(-1) & negative.any(-1)  # anchors with both
        per_anchor = (hardest_pos - hardest_neg + margin).clamp_min(0)
        per_anchor = per_anchor.masked_fill(~valid, 0)
        return per_anchor.sum(-1) / valid.sum(-1).clamp_min(1)
    # all valid triplets (a, p, n): [B, M, M, M]
    triplets = positive.unsqueeze(3) & negative.unsqueeze(2)
    losses = (dist.unsqueeze(3) - dist.unsqueeze(2) + margin).clamp_min(0)
    losses = losses * triplets.to(dist.dtype)
    return losses.sum((1, 2, 3)) / triplets.sum((1, 2, 3)).clamp_min(1)


def nearest_class_distance(dist: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Distance of each query to the nearest support example of each class:
    ``dist [B, Q, S]``, ``labels [B, S] -> [B, Q, N]``."""
    member = F.one_hot(labels, n_way).to(torch.bool)  # [B, S, N]
    masked = dist.unsqueeze(-1).masked_fill(~member.unsqueeze(1), float("inf"))
    return masked.amin(-2)


class NearestNeighbourHead(nn.Module):
    """Deployable nearest-neighbour classifier: logits ``[n, N]`` = minus the Euclidean
    distance to the closest stored support embedding of each class."""

    def __init__(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> None:
        super().__init__()
        self.register_buffer("support", support.detach().clone())  # [S, D]
        self.register_buffer("labels", labels.detach().clone())  # [S]
        self.n_way = n_way

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = distance(z, self.support, "euclidean")
        return -nearest_class_distance(d[None], self.labels[None], self.n_way)[0]


@register
class SiameseNetwork(MetaLearner):
    """Siamese network with a contrastive or triplet loss (Koch et al. 2015).

    Args:
        backbone: embedding network, ``[n, ...] -> [n, D]``.
        ways: N for :meth:`predict` / :meth:`adapt`; :meth:`meta_loss` uses the batch's.
        loss: ``"contrastive"`` or ``"triplet"``.
        margin: the loss margin (in the units of d; at most 2 between unit vectors).
        mining: triplets: ``"batch_hard"`` or ``"all"`` valid triplets.
        normalize: L2-normalise the embeddings (as in FaceNet).
        classifier: ``"prototype"`` (distance to the class mean embedding) or
            ``"nearest"`` (distance to the nearest support example of the class).
    """

    name = "siamese"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        loss: str = "contrastive",
        margin: float = 0.5,
        mining: str = "batch_hard",
        normalize: bool = True,
        classifier: str = "prototype",
    ) -> None:
        check_choice(self.name, "loss", loss, ("contrastive", "triplet"))
        check_choice(self.name, "mining", mining, ("batch_hard", "all"))
        check_choice(self.name, "classifier", classifier, ("prototype", "nearest"))
        margin = check_positive(self.name, "margin", margin)
        if not isinstance(normalize, bool):
            raise TypeError(f"siamese: 'normalize' must be a bool, got {type(normalize).__name__}")
        super().__init__(
            backbone,
            ways,
            loss=loss,
            margin=margin,
            mining=mining,
            normalize=normalize,
            classifier=classifier,
        )
        self.loss, self.margin, self.mining = loss, margin, mining
        self.normalize, self.classifier = normalize, classifier

    def _embed(
        self, support_x: torch.Tensor, query_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        zs, zq = embed_episodes(self.backbone, support_x, query_x)
        if self.normalize:
            zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
        return zs, zq

    def _logits(
        self, zs: torch.Tensor, support_y: torch.Tensor, zq: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        if self.classifier == "prototype":
            protos = ops.prototypes(zs, support_y, n_way)  # [B, N, D]
            return -ops.pairwise_distance(zq, protos, "euclidean")
        support_y = check_labels(self.name, "support_y", support_y, n_way, every_class=True)
        dist = ops.pairwise_distance(zq, zs, "euclidean")  # [B, Q, S]
        return -nearest_class_distance(dist, support_y, n_way)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair/triplet loss on each episode's support + query examples (mean over the B
        episodes), and the query accuracy ``[B]`` of the support-set classifier."""
        check_episode(self.name, batch.support_x, batch.support_y, batch.query_x)
        support_y = check_labels(self.name, "support_y", batch.support_y, batch.ways)
        query_y = check_labels(self.name, "query_y", batch.query_y, batch.ways)
        zs, zq = self._embed(batch.support_x, batch.query_x)
        z = torch.cat([zs, zq], 1)  # [B, M, D], M = S + Q
        labels = torch.cat([support_y, query_y], 1)  # [B, M]
        dist = (ops.pairwise_distance(z, z, "sqeuclidean") + _SQRT_EPS).sqrt()  # [B, M, M]
        if self.loss == "contrastive":
            loss = contrastive_loss(dist, labels, self.margin)
        else:
            loss = triplet_loss(dist, labels, self.margin, self.mining)
        with torch.no_grad():
            logits = self._logits(zs, support_y, zq, batch.ways)
            accuracy = (logits.argmax(-1) == query_y).float().mean(-1)
        return loss.mean(), accuracy

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, Q, N]``: minus the distance to each class's prototype (or nearest
        support example)."""
        check_episode(self.name, support_x, support_y, query_x)
        n_way = self.task_ways(support_y)
        zs, zq = self._embed(support_x, query_x)
        return self._logits(zs, support_y, zq, n_way)

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """Embedding network + prototype (or nearest-neighbour) head, in eval mode. The
        prototype form sets ``embed``/``prototypes``/``metric`` for enrolment export."""
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        with evaluating(self):
            zs, _ = self._embed(support_x[None], support_x[None, :0])
        embed = deployable(self.backbone)
        if self.normalize:
            embed = nn.Sequential(embed, L2Normalize())
        if self.classifier == "prototype":
            protos = ops.prototypes(zs, support_y[None], n_way)[0]
            head = PrototypeHead(protos, "euclidean")
            return Adapted(
                nn.Sequential(embed, head),
                n_way,
                embed=embed,
                prototypes=protos,
                metric="euclidean",
            ).eval()
        labels = check_labels(self.name, "support_y", support_y[None], n_way, every_class=True)
        head = NearestNeighbourHead(zs[0], labels[0], n_way)
        return Adapted(nn.Sequential(embed, head), n_way).eval()
