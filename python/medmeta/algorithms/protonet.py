"""Prototypical Networks (Snell, Swersky & Zemel, "Prototypical Networks for Few-shot
Learning", NeurIPS 2017), plus the episode plumbing the metric learners share.

A class is represented by the mean embedding of its support examples (its prototype);
a query is classified by a softmax over its negative distances to the prototypes:

    c_n = 1/|S_n| sum_{(x, y) in S_n} f(x)          (ops.prototypes)
    p(y = n | x) = softmax_n(-d(f(x), c_n) / T)     (ops.pairwise_distance)
    loss = -log p(y = y_true | x)                  (ops.prototypical_loss, fused)

Everything runs over a whole meta-batch of B episodes at once: the support and query
inputs of all episodes go through the backbone in one forward pass (``[B, S] -> [B*S]``)
and the native ops take the ``[B, ...]`` layout directly, so there is no per-task loop.

Shared helpers used by the other metric learners (matching, relation, siamese, snail,
supervised baseline): :func:`check_episode`, :func:`check_labels`,
:func:`embed_episodes`, :func:`distance`, :class:`PrototypeHead`, :class:`L2Normalize`,
:func:`evaluating` and :func:`deployable`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner, register
from medmeta.data.episodes import EpisodeBatch
from medmeta.ops._checks import value_checks_enabled
from medmeta.ops._reference import COSINE_EPS

METRICS = ("sqeuclidean", "euclidean", "cosine", "dot")


# ----------------------------------------------------------------------- shared helpers


def check_choice(method: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` is one of ``choices`` (a clear ``ValueError`` otherwise)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{method}: '{name}' must be one of {choices}, got {value!r}")
    return value


def check_positive(method: str, name: str, value: object, integer: bool = False) -> Any:
    """``value`` is a positive (finite) float, or a positive int when ``integer``."""
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an int" if integer else "a float"
        raise TypeError(f"{method}: '{name}' must be {kind}, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{method}: '{name}' must be positive and finite, got {value!r}")
    return int(value) if integer else float(value)


def check_episode(
    method: str, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
) -> tuple[int, int, int]:
    """Validate the layout of a batch of episodes; returns ``(B, S, Q)``.

    ``support_x [B, S, ...]``, ``support_y [B, S]`` and ``query_x [B, Q, ...]`` with the
    same per-example shape.
    """
    for name, t in (("support_x", support_x), ("support_y", support_y), ("query_x", query_x)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{method}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if support_y.dim() != 2:
        raise ValueError(
            f"{method}: 'support_y' must be [B, S] episode labels, got shape {list(support_y.shape)}"
        )
    if support_x.dim() < 3 or query_x.dim() < 3:
        raise ValueError(
            f"{method}: 'support_x' and 'query_x' must be [B, S, ...] and [B, Q, ...] "
            f"(a leading episode axis), got {list(support_x.shape)} and {list(query_x.shape)}"
        )
    B, S = support_y.shape
    if tuple(support_x.shape[:2]) != (B, S):
        raise ValueError(
            f"{method}: 'support_x' must start with [B, S] = {[B, S]} like support_y, "
            f"got {list(support_x.shape)}"
        )
    if query_x.shape[0] != B:
        raise ValueError(
            f"{method}: 'query_x' must have {B} episodes (dim 0) like the support, "
            f"got {query_x.shape[0]}"
        )
    if support_x.shape[2:] != query_x.shape[2:]:
        raise ValueError(
            f"{method}: support and query examples must have the same shape, got "
            f"{list(support_x.shape[2:])} and {list(query_x.shape[2:])}"
        )
    return B, S, int(query_x.shape[1])


def check_task(method: str, support_x: torch.Tensor, support_y: torch.Tensor) -> int:
    """Validate one task's support set for ``adapt``: ``support_x [S, ...]``, ``support_y [S]``."""
    for name, t in (("support_x", support_x), ("support_y", support_y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{method}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if support_y.dim() != 1 or support_x.dim() < 2 or support_x.shape[0] != support_y.shape[0]:
        raise ValueError(
            f"{method}: adapt takes one task: 'support_x' [S, ...] and 'support_y' [S], got "
            f"{list(support_x.shape)} and {list(support_y.shape)}"
        )
    return int(support_y.shape[0])


def check_labels(
    method: str, name: str, labels: torch.Tensor, n_way: int, *, every_class: bool = False
) -> torch.Tensor:
    """Integer labels ``[B, n]`` in ``[0, n_way)`` as int64; with ``every_class`` each class
    must occur in each episode. Messages name the method, the argument and the bad value."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{method}: '{name}' must hold integer class indices (int64), got dtype {labels.dtype}"
        )
    labels = labels.long()
    if labels.numel() == 0 or not value_checks_enabled():
        return labels
    bad = (labels < 0) | (labels >= n_way)
    if bool(bad.any()):
        raise ValueError(f"{method}: '{name}' must be in [0, {n_way}), found {int(labels[bad][0])}")
    if every_class:
        counts = F.one_hot(labels, n_way).sum(1)  # [B, N]
        empty = (counts == 0).nonzero()
        if len(empty):
            b, c = (int(v) for v in empty[0])
            raise ValueError(
                f"{method}: episode {b}, class {c} has no support example; "
                "every class needs at least one support example"
            )
    return labels


def flatten_episodes(x: torch.Tensor) -> torch.Tensor:
    """``[B, n, ...] -> [B*n, ...]``."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def embed_episodes(
    backbone: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the support and query examples of B episodes in one backbone forward.

    Args:
        backbone: maps ``[n, ...]`` inputs to ``[n, D]`` embeddings.
        support_x: ``[B, S, ...]``.
        query_x: ``[B, Q, ...]``.

    Returns:
        ``(support [B, S, D], queries [B, Q, D])``.
    """
    B, S, Q = support_x.shape[0], support_x.shape[1], query_x.shape[1]
    z = backbone(torch.cat([flatten_episodes(support_x), flatten_episodes(query_x)]))
    z = z.reshape(B * (S + Q), -1)
    D = z.shape[1]
    return z[: B * S].reshape(B, S, D), z[B * S :].reshape(B, Q, D)


def distance(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """Plain-torch distances ``x [n, D]``, ``y [N, D] -> [n, N]`` with the semantics of
    :func:`medmeta.ops.pairwise_distance` (used by deployable heads: exports to ONNX).

    Squared distances are summed from the differences, not expanded as
    ``|x|^2 + |y|^2 - 2 x.y``: the expansion cancels catastrophically when a query is near
    a prototype, so two runtimes that sum in different orders (eager PyTorch and
    onnxruntime) would disagree by ~1e-5 in probability; the differences agree to float32
    rounding. A deployed head sees few prototypes, so the ``[n, N, D]`` temporary is small.
    """
    if metric == "dot":
        return -(x @ y.t())
    if metric == "cosine":
        xx = (x * x).sum(-1, keepdim=True)
        yy = (y * y).sum(-1).unsqueeze(0)
        return 1 - (x @ y.t()) / (xx.sqrt().clamp_min(COSINE_EPS) * yy.sqrt().clamp_min(COSINE_EPS))
    sq = (x.unsqueeze(1) - y.unsqueeze(0)).square().sum(-1)
    return sq if metric == "sqeuclidean" else sq.sqrt()


class PrototypeHead(nn.Module):
    """Classifies embeddings ``[n, D]`` by ``-distance(z, prototypes) / temperature`` ->
    logits ``[n, N]``. The prototypes ``[N, D]`` are a buffer; plain torch ops only."""

    def __init__(self, prototypes: torch.Tensor, metric: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.detach().clone())
        self.metric = metric
        self.temperature = float(temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -distance(z, self.prototypes, self.metric) / self.temperature


class L2Normalize(nn.Module):
    """``z / ||z||`` along the last axis (a module, so it can sit in an exported network)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (batch norm on running statistics), restoring every
    submodule's training flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def deployable(module: nn.Module) -> nn.Module:
    """A detached copy of ``module`` in eval mode for a stand-alone classifier."""
    return copy.deepcopy(module).eval()


# ------------------------------------------------------------------ prototypical networks


@register
class PrototypicalNetworks(MetaLearner):
    """Prototypical Networks (Snell et al. 2017).

    Args:
        backbone: embedding network ``f``, ``[n, ...] -> [n, D]``.
        ways: N of the training episodes (the default of the CLI's evaluation); every
            method takes N from the episode (support labels in ``[0, N)``), so training
            with more ways than testing (which Snell et al. found helps) works.
        metric: ``"sqeuclidean"`` (the paper's choice; a Bregman divergence, so the
            prototype is the cluster mean), ``"euclidean"``, ``"cosine"`` or ``"dot"``.
        temperature: logits are ``-distance / temperature``.
    """

    name = "protonet"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        metric: str = "sqeuclidean",
        temperature: float = 1.0,
    ) -> None:
        check_choice(self.name, "metric", metric, METRICS)
        temperature = check_positive(self.name, "temperature", temperature)
        super().__init__(backbone, ways, metric=metric, temperature=temperature)
        self.metric = metric
        self.temperature = temperature

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean prototypical loss over the B episodes and the query accuracy ``[B]``."""
        check_episode(self.name, batch.support_x, batch.support_y, batch.query_x)
        zs, zq = embed_episodes(self.backbone, batch.support_x, batch.query_x)  # [B,S,D] [B,Q,D]
        protos = ops.prototypes(zs, batch.support_y, batch.ways)  # [B, N, D]
        loss, accuracy = ops.prototypical_loss(  # [B], [B]
            zq, protos, batch.query_y, self.metric, self.temperature
        )
        return loss.mean(), accuracy

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, Q, N] = -distance(f(query), prototypes) / temperature``."""
        check_episode(self.name, support_x, support_y, query_x)
        n_way = self.task_ways(support_y)
        zs, zq = embed_episodes(self.backbone, support_x, query_x)
        protos = ops.prototypes(zs, support_y, n_way)
        return -ops.pairwise_distance(zq, protos, self.metric) / self.temperature

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """Embedding network + prototype head for one support set ``[S, ...]``, ``[S]``.

        Runs in eval mode (batch norm on running statistics) and returns an eval-mode copy,
        so ``adapt(sx, sy)(qx)`` equals ``predict`` of an eval-mode learner.
        """
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        with evaluating(self):
            zs, _ = embed_episodes(self.backbone, support_x[None], support_x[None, :0])
            protos = ops.prototypes(zs, support_y[None], n_way)[0]  # [N, D]
        embed = deployable(self.backbone)
        head = PrototypeHead(protos, self.metric, self.temperature)
        return Adapted(
            nn.Sequential(embed, head),
            n_way,
            embed=embed,
            prototypes=protos,
            metric=self.metric,
        ).eval()
