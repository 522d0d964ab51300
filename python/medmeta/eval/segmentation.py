"""Few-shot segmentation evaluation on seeded episodes: Dice and IoU per class with 95% CIs.

Episodes come from :class:`~medmeta.data.SegmentationEpisodeSampler` seeded with ``seed``
(one at a time, so the same seed gives the same episodes whatever the device). Each
episode's Dice (Sørensen 1948; Dice 1945) and IoU (Jaccard) are pooled over its queries
per class — the overlap of all the episode's query pixels — and then averaged over the
episode's classes; the reported mean and 95% CI are over episodes
(:func:`~medmeta.eval.metrics.mean_ci95`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medmeta.algorithms.segmenter import SegmentationLearner
from medmeta.data.segmentation_episodes import SegmentationEpisodeSampler
from medmeta.eval.metrics import mean_ci95

__all__ = ["SegmentationResult", "evaluate_segmentation", "overlap_scores"]

logger = logging.getLogger(__name__)


def overlap_scores(
    pred: torch.Tensor, target: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of label maps ``pred``, ``target`` (``[..., H, W]`` ints in
    ``0..classes-1``) per foreground class, pooled over all their pixels.

    Returns ``(dice [classes - 1], iou [classes - 1])`` float64, NaN for a class absent
    from both the prediction and the truth.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {list(pred.shape)} and target {list(target.shape)} must have the same shape"
        )
    p = F.one_hot(pred.long().flatten(), classes)[:, 1:].double()
    t = F.one_hot(target.long().flatten(), classes)[:, 1:].double()
    inter, ps, ts = (p * t).sum(0), p.sum(0), t.sum(0)
    union = ps + ts - inter
    nan = torch.tensor(torch.nan, dtype=torch.float64)
    dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp_min(1), nan)
    iou = torch.where(union > 0, inter / union.clamp_min(1), nan)
    return dice, iou


@dataclass
class SegmentationResult:
    """What :func:`evaluate_segmentation` returns (fractions in [0, 1]).

    Attributes:
        dice, dice_ci95, iou, iou_ci95: mean over episodes of the episode's class-mean
            score, and the 95% CI half-widths.
        per_class: dataset class name -> ``{"dice", "dice_ci95", "iou", "iou_ci95",
            "episodes"}`` over the episodes that drew the class.
        episode_dice: ``[episodes]`` per-episode class-mean Dice.
        ways, shots, queries, episodes, seed: the protocol.
    """

    dice: float
    dice_ci95: float
    iou: float
    iou_ci95: float
    per_class: dict[str, dict[str, float]]
    episode_dice: np.ndarray
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: ``Dice 71.2 ± 2.3%  IoU 58.0 ± 2.4%  (1-way 1-shot, 100 episodes)``."""
        return (
            f"Dice {100 * self.dice:.1f} ± {100 * self.dice_ci95:.1f}%  "
            f"IoU {100 * self.iou:.1f} ± {100 * self.iou_ci95:.1f}%  "
            f"({self.ways}-way {self.shots}-shot, {self.episodes} episodes)"
        )


def _episode_scores(
    learner: SegmentationLearner, batch: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU ``[N]`` of one episode (batch of one), per episode class."""
    b = batch.to(device)
    with torch.no_grad():
        logits = learner.predict(b.support_x, b.support_labels, b.query_x)[0]
    return overlap_scores(logits.argmax(1).cpu(), batch.query_masks[0], batch.ways + 1)


def evaluate_segmentation(
    learner: SegmentationLearner,
    dataset: Any,
    *,
    ways: int = 1,
    shots: int = 1,
    queries: int = 2,
    episodes: int = 100,
    seed: int = 0,
    classes: list[int | str] | None = None,
    min_foreground: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SegmentationResult:
    """Dice and IoU of ``learner`` on ``episodes`` seeded N-way K-shot episodes of
    ``dataset`` (a labelled :class:`~medmeta.data.SegmentationDataset`; support and query
    from different patients when it has ``groups``), in eval mode.

    ``classes`` restricts the episodes to those organs (ids or names), e.g. the held-out
    ones. Raises :class:`~medmeta.data.DataError` when the data cannot supply the episodes.
    """
    if not isinstance(learner, SegmentationLearner):
        raise TypeError(
            f"learner must be a segmentation learner (panet, alpnet), got {type(learner).__name__}"
        )
    sampler = SegmentationEpisodeSampler(
        dataset, ways, shots, queries, batch_size=1, generator=seed,
        min_foreground=min_foreground, classes=classes,
    )  # fmt: skip
    dev = torch.device(device)
    names = sampler.class_names
    dice_rows, iou_rows = [], []
    by_class: dict[str, list[tuple[float, float]]] = {}
    was_training = learner.training
    learner.to(dev).eval()
    try:
        for _ in tqdm(range(episodes), disable=not progress, desc="evaluate", dynamic_ncols=True):
            batch = sampler.sample()
            dice, iou = _episode_scores(learner, batch, dev)
            dice_rows.append(float(torch.nan_to_num(dice, nan=1.0).mean()))
            iou_rows.append(float(torch.nan_to_num(iou, nan=1.0).mean()))
            for n, c in enumerate(batch.classes[0].tolist()):
                by_class.setdefault(names[c], []).append((float(dice[n]), float(iou[n])))
    finally:
        learner.train(was_training)
    return _result(dice_rows, iou_rows, by_class, ways, shots, queries, episodes, seed)


def _result(
    dice_rows: list[float], iou_rows: list[float], by_class: dict[str, list[tuple[float, float]]],
    ways: int, shots: int, queries: int, episodes: int, seed: int,
) -> SegmentationResult:  # fmt: skip
    dice, dice_ci = mean_ci95(np.array(dice_rows))
    iou, iou_ci = mean_ci95(np.array(iou_rows))
    per_class = {}
    for name, rows in sorted(by_class.items()):
        d, i = np.array(rows).T
        d, i = np.nan_to_num(d, nan=1.0), np.nan_to_num(i, nan=1.0)
        (dm, dc), (im, ic) = mean_ci95(d), mean_ci95(i)
        per_class[name] = {"dice": dm, "dice_ci95": dc, "iou": im, "iou_ci95": ic,
                           "episodes": len(rows)}  # fmt: skip
    return SegmentationResult(
        dice=dice, dice_ci95=dice_ci, iou=iou, iou_ci95=iou_ci, per_class=per_class,
        episode_dice=np.array(dice_rows), ways=ways, shots=shots, queries=queries,
        episodes=episodes, seed=seed,
    )  # fmt: skip
