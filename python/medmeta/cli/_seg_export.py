"""``medmeta export`` of a segmentation model: ``<stem>.encoder.onnx`` + ``<stem>.head.onnx``
(:func:`medmeta.export.export_segmenter`) from an adapted folder, or from a trained one and a
support set; ``medmeta predict --model <stem>.encoder.onnx`` runs them without PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medmeta.cli import _segdata as sd
from medmeta.cli._model import TrainedModel
from medmeta.cli._segsupport import choose_support, load_support
from medmeta.edge.cli.errors import UsageError

__all__ = ["export_segmentation"]


def _support(args: Any, model: TrainedModel) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Preprocessed support images ``[S, C, H, W]``, label maps ``[S, H, W]`` and the N
    foreground names: from ``--support`` or the adapted folder."""
    if args.support:
        data = load_support(args.support, args.classes, args.class_names)
        rows, _ = choose_support(data, args.shots, args.seed)
        x, masks = sd.model_inputs(data.subset(rows), model.preprocessing)
        assert masks is not None
        return torch.from_numpy(x), torch.from_numpy(masks), data.class_names[1:]
    if model.is_adapted:
        x, masks, names = model.support()
        return x, masks, names
    raise UsageError(f"{args.model} is not adapted to a task: give --support (images with "
                     "masks) or run `medmeta adapt` first")  # fmt: skip


def export_segmentation(args: Any, model: TrainedModel) -> dict[str, Any]:
    """Export and return what was written (files, exporter, the export-time checks)."""
    from medmeta.export import export_segmenter

    if args.int8 or args.form != "classifier":
        raise UsageError("--int8 and --form apply to classifiers; a segmenter exports one "
                         "form (encoder + head, with on-device enrolment)")  # fmt: skip
    x, masks, names = _support(args, model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = export_segmenter(
        model.learner.cpu(), out, support_x=x, support_masks=masks, class_names=names,
        preprocessing=model.preprocessing, exporter=args.exporter, opset=args.opset,
    )  # fmt: skip
    return {"files": {"encoder": str(result.encoder), "head": str(result.head)},
            "exporter": result.exporter, "classes": names, "checks": result.checks,
            "support_images": len(x)}  # fmt: skip
