"""``medmeta adapt`` of a segmentation model: a support set of images with label maps ->
an adapted folder (the checkpoint, ``support.pt`` with the preprocessed support images and
their masks, a card of kind ``adapted``), from which the adapted segmenter is rebuilt
exactly (adaptation is deterministic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmeta.cli import _segdata as sd
from medmeta.cli._model import TrainedModel, save_adapted
from medmeta.cli._segsupport import choose_support, load_support
from medmeta.data import DataError
from medmeta.edge.cli.errors import ModelError, UsageError

__all__ = ["SegAdaptOutcome", "adapt_segmenter", "load_support", "readapt_segmenter"]


@dataclass
class SegAdaptOutcome:
    """A segmenter adapted to one support set, with its Dice on the task's other images."""

    adapted: Any  # medmeta.algorithms.AdaptedSegmenter
    support_x: torch.Tensor  # [S, C, H, W] model inputs
    support_masks: torch.Tensor  # [S, H, W] int64 in 0..N
    class_names: list[str]  # the N foreground classes (label k -> class_names[k - 1])
    support_ids: list[str]
    held_out: dict[str, Any] | None
    folder: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _held_out(model: TrainedModel, adapted: Any, data: sd.SegData, device: str) -> dict:
    """Dice and IoU per class, pooled over every held-out pixel at the model's size."""
    from medmeta.eval.segmentation import overlap_scores

    x, masks = sd.model_inputs(data, model.preprocessing)
    with torch.inference_mode():
        pred = torch.cat([adapted(torch.from_numpy(x[i : i + 64]).to(device)).argmax(1).cpu()
                          for i in range(0, len(x), 64)])  # fmt: skip
    dice, iou = overlap_scores(pred, torch.from_numpy(masks), len(data.class_names))
    names = data.class_names[1:]
    return {"images": len(data), "dice": float(torch.nan_to_num(dice, nan=1.0).mean()),
            "iou": float(torch.nan_to_num(iou, nan=1.0).mean()),
            "per_class_dice": dict(zip(names, torch.nan_to_num(dice, nan=1.0).tolist(),
                                       strict=True))}  # fmt: skip


def adapt_segmenter(
    model: TrainedModel, data: sd.SegData, *, shots: int | None, seed: int,
    out: str | Path | None, device: str = "cpu",
) -> SegAdaptOutcome:  # fmt: skip
    """Adapt the model to the support images of ``data`` (classes ``1..N``, see
    :func:`load_support`); the images left out by ``shots`` measure the Dice."""
    s_idx, rest = choose_support(data, shots, seed)
    support = data.subset(s_idx)
    x, masks = sd.model_inputs(support, model.preprocessing)
    assert masks is not None
    size = "x".join(map(str, model.preprocessing.input_shape[1:]))
    for k, name in enumerate(data.class_names[1:], 1):
        if not (masks == k).any():
            raise DataError(f"class {name!r} has no pixel left at the model's input size {size} "
                            "(too small once resized)", "support")  # fmt: skip
    sx, sm = torch.from_numpy(x).to(device), torch.from_numpy(masks).to(device)
    adapted = model.learner.to(device).adapt(sx, sm).eval()
    held = _held_out(model, adapted, data.subset(rest), device) if len(rest) else None
    names = data.class_names[1:]
    info = {"classes": names, "shots": shots, "support_images": len(s_idx),
            "support_files": support.ids[:50], "seed": seed,
            "held_out_images": len(rest),
            "held_out_dice": None if held is None else held["dice"]}  # fmt: skip
    folder = save_adapted(model, out, sx, sm, names, info) if out is not None else None
    return SegAdaptOutcome(adapted, sx.cpu(), sm.cpu(), names, support.ids, held, folder, info)


def readapt_segmenter(model: TrainedModel, device: str = "cpu") -> tuple[Any, list[str]]:
    """The adapted segmenter of an adapted folder, rebuilt from its ``support.pt``, and the
    names of its N foreground classes."""
    if not model.is_adapted:
        raise UsageError(f"{model.folder} is not adapted to a task: give --support (images "
                         "with masks) or run `medmeta adapt` first")  # fmt: skip
    x, masks, names = model.support()
    adapted = model.learner.to(device).adapt(x.to(device), masks.to(device)).eval()
    if adapted.ways != len(names):
        raise ModelError(f"{model.folder}: the stored support masks hold {adapted.ways} "
                         f"classes, the card names {len(names)}")  # fmt: skip
    return adapted, list(names)
