"""The steps behind the commands, as functions: train a model folder, evaluate it, adapt
it to a support set, export it. The demo chains the same functions."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta import __version__
from medmeta.cli import _data, _setup
from medmeta.cli._launch import is_main_process
from medmeta.cli._model import TrainedModel, save_adapted, write_card
from medmeta.data import ArrayDataset, DataError
from medmeta.edge.cli.errors import ModelError, UsageError

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- training


@dataclass
class TrainOutcome:
    """What :func:`train_model` made."""

    folder: Path
    card: dict[str, Any]
    fit: Any  # medmeta.train.FitResult
    train_set: ArrayDataset
    val_set: ArrayDataset | None
    preprocessing: Any

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "model": str(self.folder),
            "algorithm": self.card["algorithm"],
            "steps": self.fit.last_step,
            "final_train_accuracy": self.fit.history[-1]["accuracy"] if self.fit.history else None,
            "best_step": self.fit.best_step,
            "val_accuracy": self.fit.best_accuracy,
            "val_ci95": self.fit.best_ci95,
            "temperature": self.card.get("temperature"),
            "calibration": self.card.get("calibration"),
            "seconds": round(seconds, 2),
        }

    def describe(self) -> str:
        lines = [
            f"trained {self.card['algorithm']} for {self.fit.last_step} steps -> {self.folder}"
        ]
        if self.fit.history:
            last = self.fit.history[-1]
            lines.append(
                f"  last training episodes: loss {last['loss']:.3f}, accuracy {100 * last['accuracy']:.1f}%"
            )
        if self.fit.best_accuracy is not None:
            lines.append(
                f"  best validation: {100 * self.fit.best_accuracy:.1f} ± {100 * self.fit.best_ci95:.1f}% "
                f"at step {self.fit.best_step}; temperature {self.card.get('temperature'):.3g}"
            )
        calibration = self.card.get("calibration")
        lines.append(
            f"  probabilities: {calibration}"
            if calibration
            else "  probabilities: UNCALIBRATED (temperature 1); give --val-classes to calibrate"
        )
        return "\n".join(lines)


def _validation_data(
    raw: ArrayDataset,
    train_raw: ArrayDataset,
    val_set: ArrayDataset | None,
    val_classes: str | None,
    need: int,
    seed: int,
) -> tuple[ArrayDataset, ArrayDataset | None, str | None]:
    """``(training examples, validation examples, how the temperature is calibrated)``.

    Validation classes (``val_set`` or ``--val-classes``) calibrate on new classes, as a
    deployed model meets them. Without them, a share of the training classes' examples is
    held out (:func:`_data.calibration_split`) for best-checkpoint selection and the
    temperature, and the card says so; when the classes are too small for that the
    probabilities stay uncalibrated (calibration None) and a warning says so.
    """
    if val_set is None and val_classes:
        val_set = _data.select_classes(raw, val_classes, "--val-classes")
        overlap = set(_data.present_classes(val_set)) & set(_data.present_classes(train_raw))
        if overlap:
            names = [raw.class_names[c] for c in sorted(overlap)]
            raise UsageError(f"--val-classes overlap --classes: {names}")
    if val_set is not None:
        return train_raw, val_set, "temperature fitted on episodes of the validation classes"
    train_part, held = _data.calibration_split(train_raw, need, seed)
    if held is None:
        logger.warning(
            "no --val-classes, and the training classes are too small to hold out %d examples "
            "each: no best-checkpoint selection, and probabilities are UNCALIBRATED "
            "(temperature 1); give --val-classes to calibrate them",
            need,
        )
        return train_raw, None, None
    share = round(100 * _data.CALIBRATION_FRACTION)
    logger.warning(
        "no --val-classes: holding out %d of %d training examples (%d%% of each class, at "
        "least %d) to select the best checkpoint and calibrate the probabilities; these are "
        "examples of the training classes, so give --val-classes to calibrate on new classes",
        len(held), len(train_raw), share, need,
    )  # fmt: skip
    return (
        train_part,
        held,
        (
            f"temperature fitted on held-out examples ({share}% of each class) of the training "
            "classes, not on new classes"
        ),
    )


def _warn_early_convergence(fit: Any, steps: int, share: float = 0.05) -> None:
    """Warn when training episodes were solved within the first ``share`` of the steps: the
    task is likely too easy or leaks (duplicate images across classes?), and the rest of the
    run mostly overfits."""
    early = [h for h in fit.history if h["step"] <= max(1, share * steps) and h["accuracy"] >= 0.99]
    if early and steps >= 20:
        logger.warning(
            "training episodes were solved (accuracy %.0f%%) by step %d of %d: the task may be "
            "too easy or leak (e.g. duplicate images); later steps mostly overfit",
            100 * early[0]["accuracy"], early[0]["step"], steps,
        )  # fmt: skip


def train_model(
    *,
    data: str | ArrayDataset,
    classes: str | None,
    val_classes: str | None,
    algorithm: str,
    params: dict[str, Any],
    ways: int,
    shots: int,
    queries: int,
    steps: int,
    meta_batch: int,
    lr: float,
    backbone: str | None,
    width: str | None,
    image_size: int | None,
    channels: int | None,
    val_every: int,
    val_episodes: int,
    seed: int,
    device: str,
    out: str | Path,
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
    val_set: ArrayDataset | None = None,
    window: str | tuple[float, float] | None = None,
    signal_length: int | None = None,
) -> TrainOutcome:
    """Meta-train ``algorithm`` on the ``classes`` of ``data`` and write a model folder.

    Validation (and temperature scaling) uses ``val_classes`` of ``data`` or an explicit
    ``val_set`` (raw examples, preprocessed here).
    """
    from medmeta.eval import fit_temperature
    from medmeta.train import meta_fit

    raw = _data.load_dataset(data) if isinstance(data, str) else data
    train_raw = _data.select_classes(raw, classes)
    train_raw, val_set, calibration = _validation_data(
        raw, train_raw, val_set, val_classes, shots + queries, seed
    )
    kind = _setup.data_kind(raw.x, raw.meta)
    backbone = backbone or _setup.default_backbone(kind)
    pre = _setup.make_preprocessing(  # a table's encoding is fitted on the training rows only
        train_raw, image_size=image_size, channels=channels, backbone=backbone, window=window,
        signal_length=signal_length,
    )  # fmt: skip
    if progress:
        print(
            _setup.data_summary(_data.describe_source(data, raw), train_raw, pre), file=sys.stderr
        )
    train_set = _setup.preprocess_dataset(train_raw, pre)
    val = _setup.preprocess_dataset(val_set, pre) if val_set is not None else None
    n_train = len(_data.present_classes(train_set))
    if ways > n_train:
        raise DataError(
            f"--ways {ways} needs {ways} training classes, the selection has {n_train}", "--ways"
        )
    val_ways = None
    if val is not None:
        val_ways = min(ways, len(_data.present_classes(val)))
        if val_ways < 2:
            raise DataError("validation needs at least 2 classes", "--val-classes")
    spec = _setup.backbone_spec(backbone, pre.input_shape, width)
    learner = _setup.build_learner(algorithm, spec, ways, raw.num_classes, params, seed)
    folder = Path(out)
    fit = meta_fit(
        learner, train_set, val, ways=ways, shots=shots, queries=queries, steps=steps,
        meta_batch=meta_batch, seed=seed, lr=lr, out_dir=folder, val_every=min(val_every, steps),
        val_episodes=val_episodes, val_ways=val_ways, device=device, progress=progress,
        resume=resume, backbone_spec=spec, log_every=max(1, min(50, steps // 30)),
    )  # fmt: skip
    _warn_early_convergence(fit, steps)
    temperature = None
    if val is not None:
        temperature = fit_temperature(
            learner, val, ways=val_ways, shots=shots, queries=queries,
            episodes=val_episodes, seed=seed + 2, device=device,
        )  # fmt: skip
    card = {
        "kind": "trained",
        "algorithm": algorithm,
        "hparams": learner.spec()["hparams"],
        "backbone": spec,
        "preprocessing": pre.to_dict(),
        "episodes": {"ways": ways, "shots": shots, "queries": queries},
        "training": {
            "data": raw.meta.get("name", str(data)),
            "classes": [raw.class_names[c] for c in _data.present_classes(train_set)],
            "val_classes": [raw.class_names[c] for c in _data.present_classes(val)] if val is not None else [],
            "steps": fit.last_step, "meta_batch": meta_batch, "lr": lr, "seed": seed,
            "best_step": fit.best_step, "val_accuracy": fit.best_accuracy, "val_ci95": fit.best_ci95,
        },
        "temperature": temperature,
        "calibration": calibration,
        "checkpoint": "best.pt" if fit.best_path is not None else "last.pt",
        "medmeta_version": __version__,
        "command": command,
    }  # fmt: skip
    write_card(folder, card)
    if is_main_process():
        _learning_curves(fit, folder)
    return TrainOutcome(folder, card, fit, train_set, val, pre)


def _learning_curves(fit: Any, folder: Path) -> Path | None:
    try:
        from medmeta.eval.plots import plot_learning_curves

        return plot_learning_curves(fit.history, folder / "learning_curves.png")
    except ImportError:  # matplotlib is optional
        logger.info("matplotlib is not installed; no learning-curve plot")
        return None


# ----------------------------------------------------------------------------- evaluation


def task_data(
    model: TrainedModel, data: str | ArrayDataset, classes: str | None, *, announce: bool = False
) -> ArrayDataset:
    """``classes`` of ``data``, preprocessed the way ``model`` was trained; ``announce``
    prints the one-line data summary and warns when the inputs' geometry is converted."""
    raw = _data.select_classes(_data.load_dataset(data) if isinstance(data, str) else data, classes)
    if announce:
        summary = _setup.data_summary(_data.describe_source(data, raw), raw, model.preprocessing)
        print(summary, file=sys.stderr)
        if "resized to" in summary or " to gray" in summary or "to RGB" in summary:
            logger.warning(
                "the inputs are converted to the model's input %s (see the data line above); "
                "check that this is intended",
                "x".join(map(str, model.preprocessing.input_shape)),
            )
    return _setup.preprocess_dataset(raw, model.preprocessing)


def evaluate_model(
    model: TrainedModel,
    test_set: ArrayDataset,
    *,
    ways: int | None,
    shots: int,
    queries: int,
    episodes: int,
    seed: int,
    temperature: float | None,
    device: str,
    progress: bool = True,
) -> Any:
    """:func:`medmeta.eval.evaluate` on preprocessed ``test_set`` (``ways`` default: every
    class of the test set, at most the model's ways). Metric methods evaluate any N; methods
    with an N-way output layer (``learner.fixed_ways``) at most the N they were trained for."""
    from medmeta.eval import evaluate

    n = len(_data.present_classes(test_set))
    ways = ways or min(n, model.learner.ways)
    if ways > n:
        raise DataError(f"--ways {ways} needs {ways} classes, the data has {n}", "--ways")
    if model.learner.fixed_ways and ways > model.learner.ways:
        raise UsageError(
            f"--ways {ways}: {model.card['algorithm']} was trained for "
            f"{model.learner.ways}-way tasks and its output layer classifies at most "
            f"{model.learner.ways} classes; use --ways {model.learner.ways} or fewer"
        )
    return evaluate(
        model.learner, test_set, ways=ways, shots=shots, queries=queries,
        episodes=episodes, seed=seed, device=device, temperature=temperature,
        progress=progress,
    )  # fmt: skip


# ----------------------------------------------------------------------------- adaptation


@dataclass
class AdaptOutcome:
    """A model adapted to one task, with its accuracy on the task's other examples."""

    adapted: Any  # medmeta.algorithms.Adapted
    support_x: torch.Tensor
    support_y: torch.Tensor
    class_names: list[str]
    query_x: torch.Tensor
    query_y: torch.Tensor
    accuracy: float | None
    support_index: np.ndarray
    query_index: np.ndarray
    folder: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def adapt_model(
    model: TrainedModel,
    task: ArrayDataset,
    *,
    shots: int | None,
    seed: int,
    out: str | Path | None,
    device: str = "cpu",
) -> AdaptOutcome:
    """Adapt to ``shots`` seeded examples of every class of preprocessed ``task``; the
    remaining examples measure the adapted classifier's accuracy."""
    s_idx, s_lab, rest, classes = _data.support_split(task, shots, seed)
    if model.learner.fixed_ways and len(classes) > model.learner.ways:
        raise DataError(
            f"{model.card['algorithm']} was trained for {model.learner.ways}-way tasks and "
            f"classifies at most {model.learner.ways} classes; the support set has "
            f"{len(classes)} (select at most {model.learner.ways} with --classes)",
            "support",
        )
    x = torch.as_tensor(_data.as_numpy(task.x))
    sx, sy = x[s_idx].to(device), torch.as_tensor(s_lab, device=device)
    names = [task.class_names[c] for c in classes]
    adapted = model.learner.to(device).adapt(sx, sy).eval()
    qx = x[rest]
    qy = torch.as_tensor(_data.relabel(task.labels[rest], classes))
    accuracy = None
    if len(rest):
        with torch.inference_mode():
            logits = torch.cat(
                [adapted(qx[i : i + 256].to(device)).cpu() for i in range(0, len(qx), 256)]
            )
        accuracy = float((logits.argmax(-1) == qy).float().mean())
    folder = None
    info = {"classes": names, "shots": int(np.bincount(s_lab).min()), "seed": seed,
            "held_out_examples": len(rest), "held_out_accuracy": accuracy}  # fmt: skip
    if out is not None:
        folder = save_adapted(model, out, sx, sy, names, info)
    return AdaptOutcome(adapted, sx.cpu(), sy.cpu(), names, qx, qy, accuracy, s_idx, rest,
                        folder, info)  # fmt: skip


def readapt(
    model: TrainedModel, support_x: torch.Tensor, support_y: torch.Tensor, names: list[str]
) -> Any:
    """The classifier of an adapted folder, rebuilt from its stored support set
    (``model.support()``)."""
    adapted = model.learner.adapt(support_x, support_y).eval()
    if adapted.ways != len(names):
        raise ModelError(
            f"{model.folder}: the stored support set has {adapted.ways} classes, the card "
            f"names {len(names)}"
        )
    return adapted
