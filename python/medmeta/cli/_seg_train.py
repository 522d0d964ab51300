"""``medmeta train --task segmentation``: meta-train PANet / ALPNet on image/label-map
episodes (or, self-supervised, on superpixels: SSL-ALPNet) and write a model folder.

Validation measures the mean foreground Dice over seeded episodes of, in order of
preference: ``--val-data``; the ``--val-classes`` of the training data (held-out organs,
Ouyang et al.'s setting 1: their pixels are background in training); or, without either, a
held-out share of the training images' groups (patients / source images) with the training
classes. The step with the best validation Dice is kept (``best.pt``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta import __version__
from medmeta.cli import _segdata as sd
from medmeta.cli._launch import is_main_process
from medmeta.cli._model import write_card
from medmeta.cli._setup import backbone_spec, image_geometry
from medmeta.data import DataError
from medmeta.edge.cli.errors import UsageError

logger = logging.getLogger(__name__)

#: Share of the training groups held out for validation without --val-classes / --val-data.
VAL_FRACTION = 0.2


@dataclass
class SegTrainOutcome:
    """What :func:`train_segmenter` made."""

    folder: Path
    card: dict[str, Any]
    fit: Any  # medmeta.train.FitResult

    def summary(self, seconds: float) -> dict[str, Any]:
        t = self.card["training"]
        return {
            "model": str(self.folder), "task": "segmentation", "algorithm": self.card["algorithm"],
            "steps": self.fit.last_step, "self_supervised": t["self_supervised"],
            "final_train_dice": self.fit.history[-1]["accuracy"] if self.fit.history else None,
            "best_step": self.fit.best_step, "val_dice": self.fit.best_accuracy,
            "val_ci95": self.fit.best_ci95, "validation": t["validation"],
            "seconds": round(seconds, 2),
        }  # fmt: skip

    def describe(self) -> str:
        t = self.card["training"]
        how = "self-supervised (superpixels)" if t["self_supervised"] else "on masks"
        lines = [f"trained {self.card['algorithm']} {how} for {self.fit.last_step} steps "
                 f"-> {self.folder}"]  # fmt: skip
        if self.fit.history:
            last = self.fit.history[-1]
            lines.append(f"  last training episodes: loss {last['loss']:.3f}, "
                         f"Dice {100 * last['accuracy']:.1f}%")  # fmt: skip
        if self.fit.best_accuracy is not None:
            lines.append(f"  best validation Dice: {100 * self.fit.best_accuracy:.1f} ± "
                         f"{100 * self.fit.best_ci95:.1f}% at step {self.fit.best_step} "
                         f"({t['validation']})")  # fmt: skip
        else:
            lines.append("  no validation (give --val-data or --val-classes): last.pt is kept")
        return "\n".join(lines)


def segmentation_preprocessing(
    data: sd.SegData, image_size: int | None, channels: int | None, window: Any
) -> Any:
    """Images resized to ``image_size`` (default: their own square size) with ``channels``
    (default: their own), windowed with ``window`` if given."""
    from medmeta.edge.preprocess import Preprocessing

    first = data.images[0]
    shapes = {np.shape(im)[:2] for im in data.images} if isinstance(data.images, list) else None
    c, h, w = image_geometry(np.asarray(first)[None])
    if image_size is None and ((shapes is not None and len(shapes) > 1) or h != w):
        sizes = sorted(shapes or {(h, w)})[:2]
        raise UsageError(f"images are {' and '.join(f'{a}x{b}' for a, b in sizes)}: give "
                         "--image-size to resize them to one square size")  # fmt: skip
    return Preprocessing.for_images((channels or c, image_size or h, image_size or h),
                                    window=window)  # fmt: skip


def _present(data: sd.SegData) -> list[int]:
    counts = data.pixel_counts().sum(0)
    return [c for c in range(1, len(counts)) if counts[c] > 0]


def _classes_in(ds: Any) -> list[int]:
    """Foreground class ids with a pixel in some mask of a ``SegmentationDataset`` (none
    for unlabelled images)."""
    present = getattr(ds, "present", None)
    return [] if present is None else [int(c) for c in np.flatnonzero(present[:, 1:].any(0)) + 1]


def _names(data: sd.SegData, ids: list[int]) -> list[str]:
    return [data.class_names[c] for c in ids]


def _split(
    raw: sd.SegData, classes: str | None, val_classes: str | None, val_data: str | None,
    seed: int,
) -> tuple[sd.SegData, sd.SegData | None, str | None]:  # fmt: skip
    """``(training data, validation data or None, how validation is done)``."""
    train_ids = sd.parse_seg_classes(raw, classes, "--classes") if raw.masks is not None else None
    if raw.masks is None and classes:
        raise UsageError("--classes selects classes of the masks; the training data has none")
    train = raw if train_ids is None else sd.keep_classes(raw, train_ids, remap=False)
    if val_data:
        val = sd.load_segdata(val_data)
        if val.masks is None:
            raise DataError("validation data needs masks", "--val-data")
        ids = sd.parse_seg_classes(val, val_classes, "--val-classes")
        val = val if ids is None else sd.keep_classes(val, ids, remap=False)
        return train, val, f"episodes of {val_data}"
    if raw.masks is None:
        if val_classes:
            raise UsageError("--val-classes needs masks: give --val-data with labelled images")
        return train, None, None
    if val_classes:
        val_ids = sd.parse_seg_classes(raw, val_classes, "--val-classes") or []
        train_ids = train_ids or [c for c in _present(raw) if c not in val_ids]
        overlap = sorted(set(train_ids) & set(val_ids))
        if overlap:
            raise UsageError(f"--val-classes overlap --classes: {_names(raw, overlap)}")
        val = sd.keep_classes(raw, val_ids, remap=False)
        return (sd.keep_classes(raw, train_ids, remap=False), val,
                f"held-out classes {', '.join(_names(raw, val_ids))}")  # fmt: skip
    keep, held = sd.split_groups(raw.groups, VAL_FRACTION, seed)
    if not len(held):
        return train, None, None
    how = (f"held-out images of the training classes ({len(held)} of {len(raw)}: "
           f"{round(100 * VAL_FRACTION)}% of the groups, seed {seed})")  # fmt: skip
    return train.subset(keep), train.subset(held), how


def _checked_validation(
    val: Any, ways: int, shots: int, queries: int, automatic: bool
) -> tuple[Any, int | None]:
    """``(validation set or None, its ways)``; an automatic held-out split too small for
    an episode is dropped with a warning, a requested one raises."""
    from medmeta.data.segmentation_episodes import SegmentationEpisodeSampler

    if val is None:
        return None, None
    present = int((val.present[:, 1:].sum(0) > 0).sum())
    val_ways = max(1, min(ways, present))
    try:
        SegmentationEpisodeSampler(val, val_ways, shots, queries)
    except DataError as err:
        if not automatic:
            raise
        logger.warning("the held-out images cannot form validation episodes (%s); training "
                       "without validation: give --val-data or --val-classes", err)  # fmt: skip
        return None, None
    return val, val_ways


def build_segmenter(
    algorithm: str, spec: dict[str, Any], ways: int, params: dict[str, Any], seed: int
) -> Any:
    """A segmentation learner on the backbone of ``spec``, initialised from ``seed``."""
    from medmeta import algorithms
    from medmeta.nn import make_backbone

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = make_backbone(spec["name"], spec["input_shape"], **spec["kwargs"])
        try:
            return algorithms.create(algorithm, backbone, ways, **params)
        except (TypeError, ValueError) as err:
            raise UsageError(f"--param: {err}") from err


def _card(raw: sd.SegData, learner: Any, spec: dict, pre: Any, fit: Any, info: dict) -> dict:
    return {
        "kind": "trained", "task_type": "segmentation", "algorithm": learner.name,
        "hparams": learner.spec()["hparams"], "backbone": spec, "preprocessing": pre.to_dict(),
        "class_names": list(raw.class_names),
        "episodes": {k: info[k] for k in ("ways", "shots", "queries")},
        "training": {
            "data": info["data"], "classes": info["classes"], "val_classes": info["val_classes"],
            "validation": info["validation"], "self_supervised": info["self_supervised"],
            "steps": fit.last_step, "meta_batch": info["meta_batch"], "lr": info["lr"],
            "seed": info["seed"], "best_step": fit.best_step, "val_dice": fit.best_accuracy,
            "val_ci95": fit.best_ci95,
        },
        "checkpoint": "best.pt" if fit.best_path is not None else "last.pt",
        "medmeta_version": __version__, "command": info["command"],
    }  # fmt: skip


def train_segmenter(
    *, data: str, classes: str | None, val_classes: str | None, val_data: str | None,
    class_names: str | None, algorithm: str, params: dict[str, Any], ways: int, shots: int,
    queries: int, steps: int, meta_batch: int, lr: float, backbone: str | None,
    width: str | None, image_size: int | None, channels: int | None, val_every: int,
    val_episodes: int, seed: int, device: str, out: str | Path, resume: bool = True,
    progress: bool = True, command: str | None = None, window: Any = None,
    self_supervised: bool = False,
) -> SegTrainOutcome:  # fmt: skip
    """Meta-train a segmentation ``algorithm`` on ``data`` and write the model folder ``out``
    (``model.json`` with ``task_type: segmentation``, checkpoints, logs, learning curves)."""
    from medmeta.train import meta_fit

    if backbone not in (None, "segencoder"):
        raise UsageError(f"--backbone {backbone}: segmentation methods take segencoder")
    raw = sd.load_segdata(data, class_names=class_names)
    ssl = self_supervised or raw.masks is None
    train, val, how = _split(raw, classes, val_classes, val_data, seed)
    pre = segmentation_preprocessing(raw, image_size, channels, window)
    if progress:
        print(sd.data_line(data, raw, pre) + ("; training self-supervised on superpixels "
              "(SSL-ALPNet)" if ssl else ""), file=sys.stderr)  # fmt: skip
    x, masks = sd.model_inputs(train, pre)
    train_set = sd.sampler_dataset(x, masks, train, data) if masks is not None else _Images(x, data)
    val_set = None
    if val is not None:
        vx, vm = sd.model_inputs(val, pre)
        val_set = sd.sampler_dataset(vx, vm, val, val_data or data)
    automatic = not (val_data or val_classes)
    val_set, val_ways = _checked_validation(val_set, ways, shots, queries, automatic)
    train_ids = _classes_in(train_set)
    if not ssl and ways > len(train_ids):
        raise DataError(f"--ways {ways} needs {ways} foreground classes in the training masks, "
                        f"found {len(train_ids)}: {_names(raw, train_ids)}", "--ways")  # fmt: skip
    spec = backbone_spec("segencoder", pre.input_shape, width)
    learner = build_segmenter(algorithm, spec, ways, params, seed)
    fit = meta_fit(
        learner, train_set, val_set, ways=ways, shots=shots, queries=queries, steps=steps,
        meta_batch=meta_batch, seed=seed, lr=lr, out_dir=Path(out),
        val_every=min(val_every, steps), val_episodes=val_episodes, val_ways=val_ways,
        device=device, progress=progress, resume=resume, backbone_spec=spec,
        log_every=max(1, min(50, steps // 30)), self_supervised=ssl,
    )  # fmt: skip
    val_names = [] if val_set is None else _names(val, _classes_in(val_set))
    info = {"ways": ways, "shots": shots, "queries": queries, "data": data,
            "classes": [] if ssl else _names(raw, train_ids), "val_classes": val_names,
            "validation": how if val_set is not None else None, "self_supervised": ssl,
            "meta_batch": meta_batch, "lr": lr, "seed": seed, "command": command}  # fmt: skip
    card = _card(raw, learner, spec, pre, fit, info)
    write_card(out, card)
    if is_main_process():
        _dice_curves(fit, Path(out))
    return SegTrainOutcome(Path(out), card, fit)


def _dice_curves(fit: Any, folder: Path) -> None:
    """``learning_curves.png``: loss and the Dice of training / validation episodes."""
    try:
        from medmeta.report.seg_figures import plot_dice_curves

        plot_dice_curves(fit.history, folder / "learning_curves.png")
    except ImportError:  # matplotlib is optional
        logger.info("matplotlib is not installed; no learning-curve plot")


@dataclass
class _Images:
    """Unlabelled model inputs for superpixel episodes: ``images [N, H, W, C]`` float32
    (no ``masks``, so :func:`medmeta.train.meta_fit` trains self-supervised)."""

    x: np.ndarray
    name: str

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.x.transpose(0, 2, 3, 1))
        self.meta = {"name": self.name}
