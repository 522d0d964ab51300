"""The common interface of the few-shot *segmentation* learners (PANet, ALPNet).

A segmentation learner is a :class:`~medmeta.algorithms.base.MetaLearner` with
``task = "segmentation"``: its backbone is a dense encoder (``[n, C, H, W] ->
[n, D, h, w]``, e.g. :class:`~medmeta.nn.SegEncoder`), it meta-trains on
:class:`~medmeta.data.SegmentationEpisodeBatch` es, and it

* segments queries from a labelled support set: :meth:`SegmentationLearner.segment`
  (``support_x [S, C, H, W]``, ``support_masks [S, H, W]`` in ``0..N``, ``query_x
  [n, C, H, W]`` -> label maps ``[n, H, W]`` int64, 0 = background);
* predicts per-pixel logits for batches of episodes: :meth:`SegmentationLearner.predict`
  -> ``[B, Q, N+1, H, W]``;
* adapts to one support set and returns a stand-alone :class:`AdaptedSegmenter` (encoder
  plus prototype head) for deployment and ONNX export.

Any N up to what the support labels hold works at ``segment`` time, whatever ``ways``
the learner was trained with (prototype methods have no N-way output layer).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medmeta.algorithms._seg_prototypes import class_scores, pool_prototypes, soft_masks
from medmeta.algorithms.base import MetaLearner, StepResult
from medmeta.algorithms.protonet import deployable, evaluating
from medmeta.data.segmentation_episodes import SegmentationEpisodeBatch

__all__ = ["AdaptedSegmenter", "SegmentationLearner", "check_segmentation_task", "dice_scores"]


class AdaptedSegmenter(nn.Module):
    """A segmenter adapted to one support set: ``forward(x [n, C, H, W]) -> logits
    [n, N+1, H, W]`` (0 = background), ``segment(x) -> [n, H, W]`` int64.

    Attributes:
        encoder: the dense encoder ``[n, C, H, W] -> [n, D, h, w]``.
        prototypes: ``[P, D]`` buffer; ``prototype_classes`` ``[P]`` int64 buffer, the class
            (0..N) of each prototype.
        ways: N; ``scale``: cosine scale; ``background``: ``None`` or the learned background
            score (ADNet's threshold; the background then has no prototypes).
        pooling: the learner's pooling rule (:meth:`SegmentationLearner.pooling`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        prototypes: torch.Tensor,
        prototype_classes: torch.Tensor,
        ways: int,
        scale: float,
        background: float | None = None,
        pooling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", prototypes.detach().clone())
        self.register_buffer("prototype_classes", prototype_classes.detach().clone().long())
        self.ways = int(ways)
        self.scale = float(scale)
        self.background = None if background is None else float(background)
        #: How the prototypes were pooled (:meth:`SegmentationLearner.pooling`), so the device
        #: can enrol new classes the same way; ``None`` when unknown.
        self.pooling = None if pooling is None else dict(pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bg = None if self.background is None else torch.tensor(self.background)
        scores = class_scores(
            self.encoder(x), self.prototypes, self.prototype_classes, self.ways + 1,
            self.scale, bg,
        )  # fmt: skip
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Label maps ``[n, H, W]`` int64 of images ``[n, C, H, W]``."""
        return self(x).argmax(1)


def check_segmentation_task(
    method: str, support_x: object, support_masks: object, query_x: object | None = None
) -> int:
    """Validate one task's tensors (no batch axis) and return N (the largest label).

    ``support_x [S, C, H, W]`` float, ``support_masks [S, H, W]`` integer in ``0..N``,
    ``query_x [n, C, H, W]`` float with the support's C. Every class 1..N must have
    foreground in some support mask.
    """
    for name, t, nd in (("support_x", support_x, 4), ("support_masks", support_masks, 3),
                        ("query_x", query_x, 4)):  # fmt: skip
        if name == "query_x" and t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{method}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != nd:
            shape = "[S, H, W]" if nd == 3 else "[n, C, H, W]"
            raise ValueError(
                f"{method}: '{name}' must be {nd}-D {shape}, got shape {list(t.shape)}"
            )
    if not support_x.is_floating_point():
        raise TypeError(f"{method}: 'support_x' must be floating point, got {support_x.dtype}")
    if support_masks.is_floating_point() or support_masks.dtype == torch.bool:
        raise TypeError(
            f"{method}: 'support_masks' must hold integer labels 0..N, got {support_masks.dtype}"
        )
    if support_masks.shape != (support_x.shape[0], *support_x.shape[2:]):
        raise ValueError(
            f"{method}: 'support_masks' {list(support_masks.shape)} must match support_x "
            f"{list(support_x.shape)} as [S, H, W] (one mask per image, same size)"
        )
    if query_x is not None and query_x.shape[1] != support_x.shape[1]:
        raise ValueError(
            f"{method}: 'query_x' has {query_x.shape[1]} channels, support_x {support_x.shape[1]}"
        )
    if support_masks.numel() == 0:
        raise ValueError(f"{method}: the support set is empty")
    lo, hi = int(support_masks.min()), int(support_masks.max())
    if lo < 0:
        raise ValueError(f"{method}: 'support_masks' holds {lo}; labels must be 0..N")
    if hi < 1:
        raise ValueError(
            f"{method}: every support mask is empty (background only); outline at least one "
            "foreground class"
        )
    present = torch.bincount(support_masks.flatten().long(), minlength=hi + 1)
    absent = [c for c in range(1, hi + 1) if present[c] == 0]
    if absent:
        raise ValueError(
            f"{method}: classes {absent} have no pixel in any support mask (labels must be "
            f"1..N without gaps, N = {hi})"
        )
    return hi


def dice_scores(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Foreground Dice of label maps ``[B, Q, H, W]`` per episode and class, pooled over
    the episode's queries: ``[B, classes - 1]`` float64; NaN where a class is absent from
    both the prediction and the truth."""
    p = F.one_hot(pred.long(), classes)[..., 1:].flatten(1, 3).double()  # [B, QHW, C-1]
    t = F.one_hot(target.long(), classes)[..., 1:].flatten(1, 3).double()
    inter = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.nan)


class SegmentationLearner(MetaLearner):
    """Base of the prototype segmenters; see the module docstring for the contract.

    Subclasses implement :meth:`pooling` (which classes get class and local prototypes,
    and ALPNet's window, threshold and cap), from which :meth:`prototypes_of` pools them; the
    same rule travels with :class:`AdaptedSegmenter` to ONNX export and on-device enrolment.
    The query scores, the cross-entropy over query pixels (with ``background_weight`` on
    class 0), PANet's prototype alignment loss (weight ``align_weight``), :meth:`predict`,
    :meth:`adapt` and :meth:`segment` are shared.
    """

    task: ClassVar[str] = "segmentation"
    scale: float
    align_weight: float
    background_weight: float

    @abstractmethod
    def pooling(self) -> dict[str, Any]:
        """The pooling rule: ``global_classes`` (``"all"`` or ``"foreground"``: which classes
        get a class prototype), ``local_classes`` (``"all"`` or ``"none"``), and ``window``,
        ``threshold``, ``max_local`` of the local prototypes."""

    def prototypes_of(
        self, features: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``features [S, D, h, w]``, soft masks ``[S, N+1, h, w]`` -> ``(prototypes [P, D],
        classes [P])`` by :meth:`pooling`'s rule."""
        rule = self.pooling()
        groups = {"all": list(range(masks.shape[1])), "foreground": list(range(1, masks.shape[1])),
                  "none": []}  # fmt: skip
        return pool_prototypes(
            features, masks, global_classes=groups[rule["global_classes"]],
            local_classes=groups[rule["local_classes"]], window=rule["window"],
            threshold=rule["threshold"], max_local=rule["max_local"],
        )  # fmt: skip

    def background_score(self) -> torch.Tensor | None:
        """A learned background score (ADNet's threshold), or ``None``."""
        return None

    # -- one episode --------------------------------------------------------------------
    def _scores(
        self, support_f: torch.Tensor, support_labels: torch.Tensor, query_f: torch.Tensor,
        classes: int,
    ) -> torch.Tensor:  # fmt: skip
        """Query scores ``[n, classes, h, w]`` from support features and label maps."""
        masks = soft_masks(support_labels, classes, support_f.shape[-2:])
        protos, owner = self.prototypes_of(support_f, masks)
        return class_scores(query_f, protos, owner, classes, self.scale, self.background_score())

    def _episode_loss(
        self, sf: torch.Tensor, sl: torch.Tensor, qf: torch.Tensor, ql: torch.Tensor,
        classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(loss, query label maps) of one episode; features ``[S|Q, D, h, w]``."""
        size = ql.shape[-2:]
        weight = torch.ones(classes, device=qf.device)
        weight[0] = self.background_weight
        logits = F.interpolate(self._scores(sf, sl, qf, classes), size=size, mode="bilinear")
        loss = F.cross_entropy(logits, ql, weight=weight)
        pred = logits.argmax(1)
        if self.align_weight > 0:
            present = torch.bincount(pred.flatten(), minlength=classes) > 0
            if bool(present.all()):  # PANet's alignment: query prediction -> support
                back = self._scores(qf, pred.detach(), sf, classes)
                back = F.interpolate(back, size=sl.shape[-2:], mode="bilinear")
                loss = loss + self.align_weight * F.cross_entropy(back, sl, weight=weight)
        return loss, pred

    def _encode(self, batch_x: torch.Tensor) -> torch.Tensor:
        """``[B, M, C, H, W] -> [B, M, D, h, w]`` in one backbone pass."""
        f = self.backbone(batch_x.flatten(0, 1))
        return f.reshape(*batch_x.shape[:2], *f.shape[1:])

    def meta_loss(self, batch: SegmentationEpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch's episodes and the mean foreground Dice ``[B]``."""
        B, S = batch.support_x.shape[:2]
        f = self._encode(torch.cat([batch.support_x, batch.query_x], 1))
        classes = batch.ways + 1
        losses, preds = [], []
        for b in range(B):
            loss, pred = self._episode_loss(
                f[b, :S], batch.support_labels[b], f[b, S:], batch.query_masks[b], classes
            )
            losses.append(loss)
            preds.append(pred)
        dice = dice_scores(torch.stack(preds), batch.query_masks, classes).nanmean(-1)
        return torch.stack(losses).mean(), torch.nan_to_num(dice, nan=1.0)

    def meta_train_step(
        self, batch: SegmentationEpisodeBatch, optimizer: torch.optim.Optimizer
    ) -> StepResult:
        """One meta-update; ``accuracy`` reports the mean foreground Dice of the queries."""
        return super().meta_train_step(batch, optimizer)

    # -- inference ---------------------------------------------------------------------
    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, Q, N+1, H, W]`` of queries ``[B, Q, C, H, W]`` given supports
        ``[B, S, C, H, W]`` with label maps ``support_y [B, S, H, W]`` in ``0..N``."""
        ways = [
            check_segmentation_task(self.name, support_x[b], support_y[b], query_x[b])
            for b in range(support_x.shape[0])
        ]
        classes = max(ways) + 1
        S = support_x.shape[1]
        f = self._encode(torch.cat([support_x, query_x], 1))
        size = query_x.shape[-2:]
        out = [
            F.interpolate(
                self._scores(f[b, :S], support_y[b], f[b, S:], classes), size=size, mode="bilinear"
            )
            for b in range(support_x.shape[0])
        ]
        return torch.stack(out)

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> AdaptedSegmenter:
        """Encoder + prototype head for one support set ``[S, C, H, W]``, ``[S, H, W]``."""
        n_way = check_segmentation_task(self.name, support_x, support_y)
        with evaluating(self):
            f = self.backbone(support_x)
            masks = soft_masks(support_y, n_way + 1, f.shape[-2:])
            protos, owner = self.prototypes_of(f, masks)
            bg = self.background_score()
        return AdaptedSegmenter(
            deployable(self.backbone), protos, owner, n_way, self.scale,
            None if bg is None else float(bg), self.pooling(),
        ).eval()  # fmt: skip

    @torch.no_grad()
    def segment(
        self, support_x: torch.Tensor, support_masks: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Label maps ``[n, H, W]`` int64 (0 = background, 1..N) of ``query_x [n, C, H, W]``
        from ``support_x [S, C, H, W]`` and label maps ``support_masks [S, H, W]`` in 0..N
        (classes 1..N each outlined in some support image)."""
        check_segmentation_task(self.name, support_x, support_masks, query_x)
        with evaluating(self):
            return self.adapt(support_x, support_masks).segment(query_x)
