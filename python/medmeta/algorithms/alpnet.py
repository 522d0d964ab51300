"""ALPNet / SSL-ALPNet (Ouyang, Biffi, Chen, Kart, Qiu & Rueckert, "Self-supervision with
Superpixels: Training Few-shot Medical Image Segmentation without Annotation", ECCV 2020),
with ADNet's thresholded foreground (Hansen, Gautam, Jenssen & Kampffmeyer, "Anomaly
detection-inspired few-shot medical image segmentation through self-supervision with
supervoxels", MedIA 2022) as an option.

Adaptive local prototype pooling: besides the class prototype (masked average pooling
over the whole support mask), every ``window x window`` block of the encoder grid that
a class covers to at least ``threshold`` gives a *local* prototype (masked average over
the block; ``ops.masked_prototypes``), at most ``max_local`` per class. The background,
large and heterogeneous, is represented by local prototypes only (its class prototype is
the fallback when no block qualifies); each foreground class by its local prototypes and
its class prototype. A query pixel's class score is the softmax-weighted mean of its
scaled cosine similarities to the class's prototypes (``ops.pairwise_distance``).

With ``foreground_threshold=True`` (ADNet) the background has no prototypes: it scores a
learned threshold everywhere, and the foreground uses its class prototype alone.

Self-supervised training (SSL-ALPNet) needs no organ label: superpixels of unlabelled
slices serve as classes (:class:`~medmeta.data.SuperpixelEpisodeSampler`, the default of
:func:`~medmeta.train.meta_fit` for unlabelled data or ``self_supervised=True``).

Shapes: support features ``[S, D, h, w]``, soft masks ``[S, N+1, h, w]`` -> prototypes
``[P, D]`` with classes ``[P]``; query scores ``[n, N+1, h, w]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medmeta.algorithms.base import register
from medmeta.algorithms.panet import check_weight
from medmeta.algorithms.protonet import check_positive
from medmeta.algorithms.segmenter import SegmentationLearner


@register
class ALPNet(SegmentationLearner):
    """ALPNet (Ouyang et al. 2020), optionally with ADNet's threshold (Hansen et al. 2022).

    Args:
        backbone: dense encoder ``[n, C, H, W] -> [n, D, h, w]`` (e.g. ``SegEncoder``).
        ways: N of the training episodes (any N works at ``segment`` time).
        window: local pooling window in encoder cells (4 cells = 32 px with stride 8).
        threshold: the class coverage a window needs to give a local prototype (0.95 as
            in SSL-ALPNet).
        max_local: the most local prototypes per class (the best-covered windows).
        scale: cosine scale (20).
        align_weight: weight of PANet's prototype alignment loss (SSL-ALPNet uses it).
        background_weight: cross-entropy weight of background pixels (SSL-ALPNet: 0.05).
        foreground_threshold: ADNet's learned background threshold instead of background
            prototypes.
    """

    name = "alpnet"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        window: int = 4,
        threshold: float = 0.95,
        max_local: int = 20,
        scale: float = 20.0,
        align_weight: float = 1.0,
        background_weight: float = 0.05,
        foreground_threshold: bool = False,
    ) -> None:
        window = check_positive(self.name, "window", window, integer=True)
        max_local = check_positive(self.name, "max_local", max_local, integer=True)
        threshold = check_positive(self.name, "threshold", threshold)
        if threshold > 1:
            raise ValueError(f"{self.name}: 'threshold' must lie in (0, 1], got {threshold}")
        scale = check_positive(self.name, "scale", scale)
        align_weight = check_weight(self.name, "align_weight", align_weight)
        background_weight = check_weight(self.name, "background_weight", background_weight)
        if not isinstance(foreground_threshold, bool):
            raise TypeError(f"{self.name}: 'foreground_threshold' must be a bool")
        super().__init__(
            backbone, ways, window=window, threshold=threshold, max_local=max_local,
            scale=scale, align_weight=align_weight, background_weight=background_weight,
            foreground_threshold=foreground_threshold,
        )  # fmt: skip
        self.window, self.threshold, self.max_local = window, threshold, max_local
        self.scale = scale
        self.align_weight = align_weight
        self.background_weight = background_weight
        self.foreground_threshold = foreground_threshold
        # ADNet: T = 10 is cos = 0.5 at scale 20 (their -alpha*cos > T form, sign flipped)
        self.threshold_score = (
            nn.Parameter(torch.tensor(scale / 2)) if foreground_threshold else None
        )

    def background_score(self) -> torch.Tensor | None:
        return self.threshold_score

    def pooling(self) -> dict[str, Any]:
        """Local prototypes of every class plus class prototypes of the foreground (ADNet:
        the foreground class prototypes only)."""
        local = "none" if self.foreground_threshold else "all"
        return {"global_classes": "foreground", "local_classes": local, "window": self.window,
                "threshold": self.threshold, "max_local": self.max_local}  # fmt: skip
