"""PANet (Wang, Liew, Zou, Zhou & Feng, "PANet: Few-Shot Image Semantic Segmentation with
Prototype Alignment", ICCV 2019).

One prototype per class, background included, by masked average pooling of the support
features (``ops.masked_prototypes``); each query pixel is scored by its scaled cosine
similarity to the prototypes (``ops.pairwise_distance`` over the ``n*h*w`` query
positions), ``logits_c = scale * cos(f, p_c)`` with ``scale = 20`` as in the paper, and
upsampled to the image. Training adds the prototype alignment loss (PAR): prototypes from
the query's own prediction must segment the support images again.

Shapes: support features ``[S, D, h, w]``, soft masks ``[S, N+1, h, w]`` -> prototypes
``[N+1, D]``; query scores ``[n, N+1, h, w]`` -> logits ``[n, N+1, H, W]``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medmeta.algorithms.base import register
from medmeta.algorithms.protonet import check_positive
from medmeta.algorithms.segmenter import SegmentationLearner


def check_weight(method: str, name: str, value: object) -> float:
    """A finite float >= 0 (a loss weight)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{method}: '{name}' must be a float, got {type(value).__name__}")
    if not 0 <= value < float("inf"):
        raise ValueError(f"{method}: '{name}' must be finite and >= 0, got {value!r}")
    return float(value)


@register
class PANet(SegmentationLearner):
    """PANet (Wang et al. 2019).

    Args:
        backbone: dense encoder ``[n, C, H, W] -> [n, D, h, w]`` (e.g. ``SegEncoder``).
        ways: N of the training episodes (any N works at ``segment`` time).
        scale: the cosine scale (the paper's 20).
        align_weight: weight of the prototype alignment loss (the paper's 1; 0 disables it).
        background_weight: cross-entropy weight of the background pixels (1 = plain CE).
    """

    name = "panet"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        scale: float = 20.0,
        align_weight: float = 1.0,
        background_weight: float = 1.0,
    ) -> None:
        scale = check_positive(self.name, "scale", scale)
        align_weight = check_weight(self.name, "align_weight", align_weight)
        background_weight = check_weight(self.name, "background_weight", background_weight)
        super().__init__(
            backbone, ways, scale=scale, align_weight=align_weight,
            background_weight=background_weight,
        )  # fmt: skip
        self.scale = scale
        self.align_weight = align_weight
        self.background_weight = background_weight

    def pooling(self) -> dict[str, Any]:
        """One class prototype per class 0..N, no local prototypes."""
        return {"global_classes": "all", "local_classes": "none", "window": 4,
                "threshold": 0.95, "max_local": 20}  # fmt: skip
