"""``medmeta eval`` of a segmentation model: Dice and IoU with 95% CIs over seeded
episodes (:func:`medmeta.eval.segmentation.evaluate_segmentation`), per class, and the
episodes the HTML report shows (the first ones, and the lowest-Dice ones)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmeta.cli import _segdata as sd
from medmeta.cli._model import TrainedModel
from medmeta.data import DataError, SegmentationDataset
from medmeta.edge.cli.errors import UsageError

__all__ = ["episode_examples", "evaluate_segmenter", "result_dict", "segmentation_data"]


def segmentation_data(
    model: TrainedModel, spec: str, classes: str | None, class_names: str | None = None
) -> tuple[SegmentationDataset, list[str]]:
    """``spec`` through the model's preprocessing (masks resized to its input), and the
    names of the chosen foreground classes (all with a pixel by default)."""
    raw = sd.load_segdata(spec, class_names=class_names)
    if raw.masks is None:
        raise DataError("evaluation needs masks; found images only", spec)
    ids = sd.parse_seg_classes(raw, classes, "--classes")
    x, masks = sd.model_inputs(raw, model.preprocessing)
    assert masks is not None
    ds = sd.sampler_dataset(x, masks, raw, spec)
    present = [int(c) for c in np.flatnonzero(ds.present[:, 1:].any(0)) + 1]
    chosen = present if ids is None else ids
    missing = [raw.class_names[c] for c in chosen if c not in present]
    if missing:
        raise DataError(f"no pixel of class(es) {missing} in any mask (at the model's input "
                        f"size {'x'.join(map(str, model.preprocessing.input_shape[1:]))})",
                        "--classes")  # fmt: skip
    if not chosen:
        raise DataError("every mask is empty (background only)", spec)
    return ds, [raw.class_names[c] for c in chosen]


def evaluate_segmenter(
    model: TrainedModel, dataset: SegmentationDataset, classes: list[str], *, ways: int,
    shots: int, queries: int, episodes: int, seed: int, min_foreground: int, device: str,
    progress: bool = True,
) -> Any:  # fmt: skip
    """:func:`~medmeta.eval.segmentation.evaluate_segmentation` of the model's learner on
    ``episodes`` seeded ``ways``-way ``shots``-shot episodes of ``classes``."""
    from medmeta.eval.segmentation import evaluate_segmentation

    if ways > len(classes):
        raise UsageError(f"--ways {ways} needs {ways} classes, the data has {len(classes)} "
                         f"({', '.join(classes)})")  # fmt: skip
    return evaluate_segmentation(
        model.learner, dataset, ways=ways, shots=shots, queries=queries, episodes=episodes,
        seed=seed, classes=classes, min_foreground=min_foreground, device=device,
        progress=progress,
    )  # fmt: skip


def result_dict(result: Any, min_foreground: int) -> dict[str, Any]:
    """The JSON form of a ``SegmentationResult`` (fractions in [0, 1])."""
    return {
        "task": "segmentation", "ways": result.ways, "shots": result.shots,
        "queries": result.queries, "episodes": result.episodes, "seed": result.seed,
        "min_foreground": min_foreground, "dice": result.dice, "dice_ci95": result.dice_ci95,
        "iou": result.iou, "iou_ci95": result.iou_ci95, "per_class": result.per_class,
        "summary": result.summary(), "episode_dice": [float(d) for d in result.episode_dice],
    }  # fmt: skip


def _as_image(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` model input -> ``[H, W]`` or ``[H, W, 3]`` in [0, 1] for display."""
    a = x.detach().cpu().float().numpy()
    a = a[0] if a.shape[0] == 1 else a[:3].transpose(1, 2, 0)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def episode_examples(
    model: TrainedModel, dataset: SegmentationDataset, classes: list[str], result: Any,
    indices: list[int], min_foreground: int, device: str,
) -> dict[int, dict[str, Any]]:  # fmt: skip
    """The episodes ``indices`` of the evaluation (drawn again from the same seed): support
    image and mask, query images, true and predicted label maps, the episode's Dice and its
    class names, by episode index."""
    from medmeta.data.segmentation_episodes import SegmentationEpisodeSampler
    from medmeta.eval.segmentation import overlap_scores

    sampler = SegmentationEpisodeSampler(
        dataset, result.ways, result.shots, result.queries, batch_size=1,
        generator=result.seed, min_foreground=min_foreground, classes=classes,
    )  # fmt: skip
    wanted, out = set(indices), {}
    learner = model.learner.to(device).eval()
    for k in range(max(indices) + 1):
        batch = sampler.sample()
        if k not in wanted:
            continue
        b = batch.to(device)
        with torch.no_grad():
            pred = learner.predict(b.support_x, b.support_labels, b.query_x)[0].argmax(1).cpu()
        dice, _ = overlap_scores(pred, batch.query_masks[0], batch.ways + 1)
        out[k] = {
            "support_image": _as_image(batch.support_x[0, 0]),
            "support_mask": batch.support_labels[0, 0].numpy(),
            "query_images": [_as_image(q) for q in batch.query_x[0]],
            "true_masks": batch.query_masks[0].numpy(),
            "pred_masks": pred.numpy(),
            "dice": float(torch.nan_to_num(dice, nan=1.0).mean()),
            "classes": [dataset.class_names[c] for c in batch.classes[0].tolist()],
        }
    return out
