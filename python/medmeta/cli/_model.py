"""Model folders written by ``medmeta train`` and ``medmeta adapt``.

A model folder holds ``model.json`` (the model card: what was trained, on which classes,
how inputs are preprocessed, the fitted temperature; ``task_type: "segmentation"`` for the
segmenters of ``medmeta train --task segmentation``, absent for classifiers) beside the checkpoints of
:func:`medmeta.train.meta_fit` (``best.pt`` / ``last.pt``, loaded with ``weights_only=True``).
An adapted folder (``medmeta adapt``) also holds ``support.pt``: the task's preprocessed
support set (for a segmenter ``y`` holds the label maps ``[S, H, W]``; for a regressor,
``task_type: "regression"``, the float32 targets ``[K]`` and no class names), from which the adapted classifier is rebuilt exactly (adaptation is
deterministic), plus a copy of the checkpoint, so the folder stands alone.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmeta._files import atomic_write_bytes
from medmeta.algorithms.base import MetaLearner
from medmeta.edge.cli.errors import ModelError
from medmeta.train.checkpoint import atomic_save, load_learner

logger = logging.getLogger(__name__)

CARD = "model.json"
SUPPORT = "support.pt"
CARD_FORMAT = "medmeta.model/1"


@dataclass
class TrainedModel:
    """A learner loaded from a model folder with its card."""

    folder: Path
    card: dict[str, Any]
    learner: MetaLearner
    checkpoint: Path

    @property
    def preprocessing(self) -> Any:
        """The :class:`medmeta.edge.Preprocessing` inputs go through."""
        from medmeta.edge.preprocess import Preprocessing

        return Preprocessing.from_dict(self.card["preprocessing"])

    @property
    def is_adapted(self) -> bool:
        return self.card.get("kind") == "adapted"

    def support(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """An adapted folder's support set: ``(x [S, ...] float32, y [S], class names [N])``."""
        if not self.is_adapted:
            raise ModelError(f"{self.folder} is not an adapted model (run `medmeta adapt`)")
        data = torch.load(self.folder / SUPPORT, map_location="cpu", weights_only=True)
        return data["x"], data["y"], list(data["class_names"])


def write_card(folder: str | os.PathLike[str], card: dict[str, Any]) -> Path:
    """Write ``model.json`` atomically (under torchrun only rank 0 writes)."""
    from medmeta.cli._launch import is_main_process

    path = Path(folder) / CARD
    if not is_main_process():
        return path
    body = {"format": CARD_FORMAT, **card}
    return atomic_write_bytes(Path(folder) / CARD, (json.dumps(body, indent=2) + "\n").encode())


def read_card(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of ``folder``; :class:`ModelError` when absent or invalid."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelError(
            f"{path}: not a model folder (expected the --out folder of `medmeta train`)"
        )
    file = path / CARD
    if not file.is_file():
        raise ModelError(f"{path}: no {CARD}; is it the --out folder of `medmeta train`?")
    try:
        card = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{file}: unreadable model card ({err})") from err
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelError(f"{file}: not a medmeta model card ({CARD_FORMAT})")
    return card


def load_model(folder: str | os.PathLike[str], device: str = "cpu") -> TrainedModel:
    """The learner of a model folder: the checkpoint its card names (``best.pt`` when
    training validated).

    If that file is missing but ``last.pt`` is there, the last weights are used with a
    warning, and the card's temperature (fitted on the named checkpoint's weights) is
    dropped from the loaded card, so card and weights stay consistent.
    """
    path = Path(folder)
    card = read_card(path)
    checkpoint = path / card.get("checkpoint", "best.pt")
    if not checkpoint.is_file():
        fallback = path / "last.pt"
        if not fallback.is_file():
            raise ModelError(f"{path}: no checkpoint ({checkpoint.name} or last.pt)")
        logger.warning(
            "%s: the model card names %s, which is missing; using last.pt (the last "
            "training step) instead. The card's temperature was fitted on %s's weights, so "
            "it is not applied: probabilities are uncalibrated (temperature 1)",
            path, checkpoint.name, checkpoint.name,
        )  # fmt: skip
        card = {**card, "checkpoint": fallback.name, "temperature": None, "calibration": None}
        checkpoint = fallback
    try:
        learner = load_learner(checkpoint, map_location=device)
    except (RuntimeError, ValueError, KeyError, EOFError, OSError) as err:
        raise ModelError(f"{checkpoint}: cannot load the checkpoint ({err})") from err
    learner.eval()
    return TrainedModel(path, card, learner, checkpoint)  # type: ignore[arg-type]


def save_adapted(
    source: TrainedModel,
    out: str | os.PathLike[str],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    class_names: list[str],
    extra: dict[str, Any],
    *,
    y_dtype: torch.dtype = torch.long,
) -> Path:
    """An adapted folder: the source checkpoint, the support set and a card of kind
    ``adapted`` naming the task's classes. ``y_dtype``: the stored targets' dtype (class
    labels int64; a regressor's targets float32)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if source.checkpoint.resolve() != (folder / source.checkpoint.name).resolve():
        atomic_write_bytes(folder / source.checkpoint.name, source.checkpoint.read_bytes())
    atomic_save(
        {"x": support_x.detach().cpu().float().contiguous(), "y": support_y.cpu().to(y_dtype),
         "class_names": list(class_names)},
        folder / SUPPORT,
    )  # fmt: skip
    card = {k: v for k, v in source.card.items() if k != "format"}
    card.update(kind="adapted", checkpoint=source.checkpoint.name, task=extra)
    write_card(folder, card)
    return folder
