"""The non-meta-learning baseline: supervised pre-training on the training classes, then
nearest-centroid classification of a new task's queries from its support set.

Chen et al. ("A Closer Look at Few-shot Classification", ICLR 2019), Wang et al.
("SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning", 2019)
and Tian et al. ("Rethinking Few-Shot Image Classification: a Good Embedding Is All You
Need?", ECCV 2020) show that such a baseline is often as good as meta-learning; a
meta-learner is only worth its cost if it beats this on the same data.

Training sees exactly the data the meta-learners see: every meta-batch of episodes, but
its support and query examples are pooled and labelled with their *global* training
class (``batch.classes`` gathered by the episode label), and the backbone and a linear
head over ``num_classes`` classes are trained with cross-entropy:

    loss = CE(W f(x) + b, classes[b, y])    over all support + query examples

Prediction ignores the head: class prototypes are the means of the support embeddings
(:func:`medmeta.ops.prototypes`) and the logits are ``-distance(f(query), prototype)``
(squared Euclidean by default), i.e. a Prototypical-Networks classifier on a supervised
embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner, StepResult, register
from medmeta.algorithms.protonet import (
    METRICS,
    L2Normalize,
    PrototypeHead,
    check_choice,
    check_episode,
    check_labels,
    check_positive,
    check_task,
    deployable,
    embed_episodes,
    evaluating,
    flatten_episodes,
)
from medmeta.data.episodes import EpisodeBatch


@register
class SupervisedBaseline(MetaLearner):
    """Supervised pre-training + nearest centroid.

    Args:
        backbone: embedding network, ``[n, ...] -> [n, D]``.
        ways: N of the training episodes; :meth:`predict` / :meth:`adapt` take N from the
            episode's support labels.
        num_classes: rows of the linear head; every global class id seen in training
            (``batch.classes``) must be below it (the dataset's number of classes is
            always enough; rows of classes never seen stay unused).
        embedding_dim: D, the backbone's output size (``medmeta.nn.embedding_dim``).
        metric: distance of the nearest-centroid classifier (default squared Euclidean).
        normalize: L2-normalise embeddings before the centroids (SimpleShot's "L2N").
    """

    name = "supervised"
    shape_hparams = ("embedding_dim",)

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        num_classes: int,
        embedding_dim: int,
        metric: str = "sqeuclidean",
        normalize: bool = False,
    ) -> None:
        num_classes = check_positive(self.name, "num_classes", num_classes, integer=True)
        embedding_dim = check_positive(self.name, "embedding_dim", embedding_dim, integer=True)
        check_choice(self.name, "metric", metric, METRICS)
        if not isinstance(normalize, bool):
            raise TypeError(
                f"supervised: 'normalize' must be a bool, got {type(normalize).__name__}"
            )
        super().__init__(
            backbone,
            ways,
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            metric=metric,
            normalize=normalize,
        )
        self.num_classes = num_classes
        self.metric = metric
        self.normalize = normalize
        self.head = nn.Linear(embedding_dim, num_classes)

    def global_labels(self, classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Dataset class ids ``[B, n]`` of episode labels ``[B, n]`` given ``classes [B, N]``."""
        labels = check_labels(self.name, "episode labels", labels, classes.shape[1])
        ids = classes.long().gather(1, labels)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
            bad = ids[(ids < 0) | (ids >= self.num_classes)][0]
            raise ValueError(
                f"supervised: training class id {int(bad)} is outside the head's "
                f"[0, num_classes={self.num_classes}); set num_classes to the dataset's "
                "number of classes"
            )
        return ids

    def _centroid_logits(
        self, zs: torch.Tensor, support_y: torch.Tensor, zq: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        if self.normalize:
            zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
        protos = ops.prototypes(zs, support_y, n_way)
        return -ops.pairwise_distance(zq, protos, self.metric)

    def _losses(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(head cross-entropy, episode nearest-centroid accuracy [B], head accuracy)."""
        check_episode(self.name, batch.support_x, batch.support_y, batch.query_x)
        if batch.classes.shape != (batch.batch_size, batch.ways):
            raise ValueError(
                f"supervised: 'classes' must be [B, N] = {[batch.batch_size, batch.ways]}, "
                f"got {list(batch.classes.shape)}"
            )
        targets = torch.cat(
            [
                self.global_labels(batch.classes, batch.support_y),
                self.global_labels(batch.classes, batch.query_y),
            ],
            1,
        )  # [B, S + Q]
        zs, zq = embed_episodes(self.backbone, batch.support_x, batch.query_x)
        z = torch.cat([zs, zq], 1)  # [B, S + Q, D]
        logits = self.head(flatten_episodes(z))  # [B*(S+Q), num_classes]
        loss = F.cross_entropy(logits, targets.flatten())
        with torch.no_grad():
            head_accuracy = (logits.argmax(-1) == targets.flatten()).float().mean()
            episode = self._centroid_logits(zs, batch.support_y, zq, batch.ways)
            query_y = check_labels(self.name, "query_y", batch.query_y, batch.ways)
            accuracy = (episode.argmax(-1) == query_y).float().mean(-1)
        return loss, accuracy, head_accuracy

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy of the global-class head over all the batch's examples,
        nearest-centroid query accuracy ``[B]`` of the episodes)."""
        loss, accuracy, _ = self._losses(batch)
        return loss, accuracy

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> StepResult:
        """One supervised step; ``extra["head_accuracy"]`` is the global-class accuracy."""
        self.train()
        optimizer.zero_grad(set_to_none=True)
        loss, accuracy, head_accuracy = self._losses(batch)
        loss.backward()
        optimizer.step()
        return StepResult(
            float(loss.detach()),
            float(accuracy.mean()),
            {"head_accuracy": float(head_accuracy)},
        )

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Nearest-centroid logits ``[B, Q, N] = -distance(f(query), support class means)``."""
        check_episode(self.name, support_x, support_y, query_x)
        n_way = self.task_ways(support_y)
        zs, zq = embed_episodes(self.backbone, support_x, query_x)
        return self._centroid_logits(zs, support_y, zq, n_way)

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """Embedding network + nearest-centroid head (eval mode), with ``embed``,
        ``prototypes`` and ``metric`` set for enrolment export."""
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        with evaluating(self):
            zs, _ = embed_episodes(self.backbone, support_x[None], support_x[None, :0])
        if self.normalize:
            zs = F.normalize(zs, dim=-1)
        protos = ops.prototypes(zs, support_y[None], n_way)[0]
        embed = deployable(self.backbone)
        if self.normalize:
            embed = nn.Sequential(embed, L2Normalize())
        head = PrototypeHead(protos, self.metric)
        return Adapted(
            nn.Sequential(embed, head),
            n_way,
            embed=embed,
            prototypes=protos,
            metric=self.metric,
        ).eval()
