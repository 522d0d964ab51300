"""Pure-torch references of every native op.

They define the semantics the kernels must match (tests compare in float64), serve as
the differentiable formulas for higher-order gradients, and run the whole library when
``MEDMETA_BACKEND=reference`` is set. Shapes follow the public ops in ``medmeta.ops``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-8  # norm floor, as in torch.nn.functional.cosine_similarity


def pairwise_distance(
    x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean"
) -> torch.Tensor:
    """x [B,Q,D], y [B,N,D] -> distances [B,Q,N] (``dot`` is the negative inner product)."""
    dot = torch.bmm(x, y.transpose(1, 2))
    if metric == "dot":
        return -dot
    xx = (x * x).sum(-1).unsqueeze(2)
    yy = (y * y).sum(-1).unsqueeze(1)
    if metric == "cosine":
        return 1 - dot / (xx.sqrt().clamp_min(COSINE_EPS) * yy.sqrt().clamp_min(COSINE_EPS))
    sq = (xx + yy - 2 * dot).clamp_min(0)
    if metric == "sqeuclidean":
        return sq
    if metric == "euclidean":
        return sq.sqrt()
    raise ValueError(f"unknown metric {metric!r}")


def prototypical_loss(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    metric: str = "sqeuclidean",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL and top-1 accuracy per episode of softmax(-distance / temperature)."""
    logits = -pairwise_distance(queries, prototypes, metric) / temperature
    log_p = logits.log_softmax(-1)
    loss = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(-1)
    accuracy = (logits.argmax(-1) == targets).to(queries.dtype).mean(-1)
    return loss, accuracy


def class_means(sums: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sums [B,N,D] / total [B,N]. A class with zero total is NaN (the mean of no examples,
    as torch's mean of an empty set) and passes no gradient: it depends on no input (a plain
    division would spread 0 * inf = NaN into every gradient)."""
    empty = total == 0
    return (sums / total.masked_fill(empty, 1).unsqueeze(-1)).masked_fill(
        empty.unsqueeze(-1), float("nan")
    )


def prototypes(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """embeddings [B,S,D], labels [B,S] -> (weighted) class means [B,n_way,D]; NaN for a
    class with zero total weight (no example)."""
    return prototypes_with_mass(embeddings, labels, n_way, weights)[0]


def prototypes_with_mass(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prototypes` and each class's total weight ``[B, n_way]``."""
    assign = F.one_hot(labels, n_way).to(embeddings.dtype)  # [B,S,N]
    if weights is not None:
        assign = assign * weights.unsqueeze(-1)
    mass = assign.sum(1)
    return class_means(torch.bmm(assign.transpose(1, 2), embeddings), mass), mass


def masked_prototypes(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """features [B,S,D,H,W], masks [B,S,C,H,W] -> masked average pooling [B,C,D]; NaN for
    a class with zero mask mass."""
    pooled = torch.einsum("bsdhw,bschw->bcd", features, masks)
    return class_means(pooled, masks.sum(dim=(1, 3, 4)))


def inner_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lr: float | Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """theta' = theta - lr * g per tensor; tensor rates broadcast from the right."""
    if isinstance(lr, (int, float)):
        return [p - lr * g for p, g in zip(params, grads, strict=True)]
    return [
        p - a.reshape(a.shape if a.numel() > 1 else ()) * g
        for p, g, a in zip(params, grads, lr, strict=True)
    ]
