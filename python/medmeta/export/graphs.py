"""The torch modules that become ONNX graphs, and how an :class:`Adapted` splits into them.

* :class:`ProbabilityGraph` -- ``x -> softmax(classify(x) / T)``: any adapted classifier.
* :class:`FeatureClassifierGraph` -- ``x -> (probabilities, distances, embeddings)`` for
  classifiers with an embedding space: metric learners (embedding + prototype head) and
  the MAML family (``Sequential(backbone, head)``: the distances go to the support
  centroids of the adapted backbone's features, for OOD flags and explanations).
* :class:`EmbedderGraph` -- ``x -> embeddings [n, D]`` (the enrolment form's network).
* :class:`PrototypeHeadGraph` -- ``(embeddings [n, D], prototypes [N, D]) ->
  (probabilities, distances)``, with N dynamic so a device can enrol any number of classes.
* :class:`RegressionIntervalGraph` -- ``x -> (prediction, lower, upper, member_std)``: a
  bootstrap ensemble of adapted regressors and its predictive interval.

Every form computes its probabilities with the learner's own ops in the same order
(:class:`medmeta.algorithms.protonet.PrototypeHead`, then ``/ T`` and softmax), so ONNX
and eager PyTorch agree to float32 rounding; the regression graph computes its interval as
:func:`medmeta.algorithms.regressor.normal_interval` does (float64 statistics of the float32
member predictions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted
from medmeta.algorithms.ensemble_regressor import EnsembleRegressor
from medmeta.algorithms.protonet import PrototypeHead, distance

__all__ = [
    "AdaptedParts",
    "EmbedderGraph",
    "FeatureClassifierGraph",
    "ProbabilityGraph",
    "PrototypeHeadGraph",
    "RegressionIntervalGraph",
    "split_adapted",
]

#: Distance used for the support centroids of models without a metric of their own (MAML).
FEATURE_METRIC = "sqeuclidean"


class ProbabilityGraph(nn.Module):
    """``x -> softmax(classify(x) / temperature)``: probabilities ``[n, N]``."""

    def __init__(self, classify: nn.Module, temperature: float) -> None:
        super().__init__()
        self.classify = classify
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classify(x) / self.temperature, dim=-1)


class FeatureClassifierGraph(nn.Module):
    """``x -> (probabilities [n, N], distances [n, N], embeddings [n, D])``.

    ``probabilities = softmax(head(features(x)) / T)`` is the classifier itself;
    ``distances = distance(features(x), centroids, metric)`` feed OOD and explanations.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        centroids: torch.Tensor,
        metric: str,
        temperature: float,
    ) -> None:
        super().__init__()
        self.features, self.head, self.metric = features, head, metric
        self.register_buffer("centroids", centroids.detach().clone())
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.features(x)
        probs = torch.softmax(self.head(z) / self.temperature, dim=-1)
        return probs, distance(z.flatten(1), self.centroids, self.metric), z.flatten(1)


class EmbedderGraph(nn.Module):
    """``x -> embeddings [n, D]``."""

    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).flatten(1)


class PrototypeHeadGraph(nn.Module):
    """``(z [n, D], prototypes [N, D]) -> (softmax(-d(z, p) / T_head / T), d(z, p))``, the
    prototype head of the learner with the prototypes as an input."""

    def __init__(self, metric: str, head_temperature: float, temperature: float) -> None:
        super().__init__()
        self.metric = metric
        self.head_temperature = float(head_temperature)
        self.temperature = float(temperature)

    def forward(
        self, z: torch.Tensor, prototypes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = distance(z, prototypes, self.metric)
        logits = -d / self.head_temperature  # PrototypeHead.forward, operation for operation
        return torch.softmax(logits / self.temperature, dim=-1), d


class RegressionIntervalGraph(nn.Module):
    """``x [n, ...] -> (prediction, lower, upper, member_std)``, ``[n]`` float32 each: the
    :meth:`~medmeta.algorithms.ensemble_regressor.EnsembleRegressor.interval` of an ensemble
    in one graph (bootstrap ensemble: Efron & Tibshirani 1993, ch. 6; Lakshminarayanan et al.
    2017).

    The members' predictions ``[n, M]`` come from the members themselves; their mean, the
    unbiased variance and ``sd = sqrt(variance + noise_std²)`` are computed in float64 as
    :func:`~medmeta.algorithms.regressor.normal_interval` computes them, then
    ``prediction ± z sd`` is cast to the input's dtype.
    """

    def __init__(self, ensemble: EnsembleRegressor) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.register_buffer("noise_var", ensemble.noise_std.detach().double().pow(2).reshape(()))
        self.z = float(ensemble.z)
        self.members = len(ensemble.members)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.ensemble(x).double()  # [n, M]
        mean = p.mean(-1)
        centred = p - mean.unsqueeze(-1)
        var = (centred * centred).sum(-1) / (self.members - 1)
        sd = (var + self.noise_var).sqrt()
        dtype = x.dtype
        return (mean.to(dtype), (mean - self.z * sd).to(dtype), (mean + self.z * sd).to(dtype),
                var.sqrt().to(dtype))  # fmt: skip


@dataclass
class AdaptedParts:
    """What an adapted model offers for export.

    ``features``/``head``: the embedding network and the logit head on it (None when the
    classifier cannot be split, e.g. matching, relation, SNAIL heads); ``prototypes`` and
    ``metric``: the class centres in that space (metric learners; for the MAML family they
    are computed from the support set); ``prototype_head``: the learner's own prototype head
    (only then is the enrolment form possible).
    """

    features: nn.Module | None
    head: nn.Module | None
    prototypes: torch.Tensor | None
    metric: str | None
    prototype_head: PrototypeHead | None

    @property
    def enrolable(self) -> bool:
        return self.prototype_head is not None and self.features is not None


def split_adapted(
    adapted: Adapted, support_x: torch.Tensor | None, support_y: torch.Tensor | None
) -> AdaptedParts:
    """Split ``adapted`` into :class:`AdaptedParts` (support set: ``[S, ...]``, ``[S]``)."""
    classify = adapted.classify
    if (
        adapted.embed is not None
        and adapted.prototypes is not None
        and isinstance(classify, nn.Sequential)
        and len(classify) == 2
        and classify[0] is adapted.embed
    ):
        head = classify[1]
        return AdaptedParts(
            adapted.embed,
            head,
            adapted.prototypes,
            adapted.metric,
            head if isinstance(head, PrototypeHead) else None,
        )
    names = [n for n, _ in classify.named_children()] if isinstance(classify, nn.Sequential) else []
    if names == ["backbone", "head"] and support_x is not None and support_y is not None:
        with torch.no_grad():
            z = classify.backbone(support_x).flatten(1)
            centroids = ops.prototypes(z[None], support_y[None], adapted.ways)[0]
        return AdaptedParts(classify.backbone, classify.head, centroids, FEATURE_METRIC, None)
    return AdaptedParts(None, None, None, None, None)
