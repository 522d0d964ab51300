"""Few-shot regression behind ``medmeta train / eval / adapt --task regression``.

* :func:`train_regressor`: meta-trains a regressor of the MAML family (Finn et al. 2017,
  sec. 3.1: squared-error inner and outer loss; ``ways = 1``) on an MLP without batch norm,
  one task per group of rows, and writes a model folder whose card has
  ``task_type: "regression"``;
* :func:`~medmeta.cli._reg_eval.evaluate_regressor` (re-exported): seeded episodes, MSE and
  R² with 95% CIs, the bootstrap interval's coverage, and ridge regression on the same
  episodes;
* :func:`adapt_regressor`: adapts a bootstrap ensemble (:func:`~medmeta.algorithms.
  ensemble_regressor.adapt_ensemble`) to K seeded rows of one task and saves the adapted
  folder; :func:`load_ensemble` rebuilds exactly that ensemble from the folder.
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
from medmeta.cli import _regression as R
from medmeta.cli import _setup
from medmeta.cli._launch import is_main_process
from medmeta.cli._model import TrainedModel, save_adapted, write_card
from medmeta.cli._reg_eval import RegressionEvaluation, evaluate_regressor, task_set
from medmeta.data import DataError
from medmeta.edge.cli.errors import ModelError, UsageError

__all__ = [
    "REGRESSION_HPARAMS",
    "RegressionAdaptOutcome",
    "RegressionEvaluation",
    "RegressionTrainOutcome",
    "adapt_regressor",
    "build_ensemble",
    "evaluate_regressor",
    "load_ensemble",
    "task_set",
    "train_regressor",
]

logger = logging.getLogger(__name__)

#: Hyper-parameters of each regression method unless ``--param`` says otherwise: a small
#: inner step suits standardised targets (benchmarks/protocol_regression.py).
REGRESSION_HPARAMS: dict[str, dict[str, Any]] = {
    "maml": {"inner_lr": 0.01},
    "fomaml": {"inner_lr": 0.01},
    "metasgd": {"alpha_init": 0.01, "inner_steps": 1},
    "reptile": {"inner_lr": 0.01},
}
#: Hidden widths of the MLP unless ``--width`` says otherwise.
DEFAULT_HIDDEN = (64, 64)


# ------------------------------------------------------------------------------- training


@dataclass
class RegressionTrainOutcome:
    """What :func:`train_regressor` made."""

    folder: Path
    card: dict[str, Any]
    fit: Any  # medmeta.train.FitResult
    train_tasks: Any  # RegressionTasks
    val_tasks: Any | None

    def summary(self, seconds: float) -> dict[str, Any]:
        t = self.card["training"]
        last = self.fit.history[-1] if self.fit.history else {}
        return {"model": str(self.folder), "task_type": "regression",
                "algorithm": self.card["algorithm"], "target": self.card["target"]["name"],
                "groups": t["groups"], "val_groups": t["val_groups"], "steps": self.fit.last_step,
                "final_train_loss": last.get("loss"), "final_train_r2": last.get("accuracy"),
                "best_step": t["best_step"], "val_mse": t["val_mse"], "val_r2": t["val_r2"],
                "val_r2_ci95": t["val_r2_ci95"], "seconds": round(seconds, 2)}  # fmt: skip

    def describe(self) -> str:
        t = self.card["training"]
        lines = [f"trained {self.card['algorithm']} to predict {self.card['target']['name']} "
                 f"on {len(t['groups'])} task(s) ({', '.join(t['groups'])}) for "
                 f"{self.fit.last_step} steps -> {self.folder}"]  # fmt: skip
        if self.fit.history:
            last = self.fit.history[-1]
            lines.append(f"  last training episodes: loss {last['loss']:.3f} (MSE of the "
                         f"standardised targets), R² {last['accuracy']:.3f}")  # fmt: skip
        if t["val_mse"] is not None:
            lines.append(f"  best validation ({', '.join(t['val_groups'])}): MSE "
                         f"{t['val_mse']:.4g}, R² {t['val_r2']:.3f} ± {t['val_r2_ci95']:.3f} "
                         f"at step {t['best_step']}")  # fmt: skip
        else:
            lines.append("  no validation: the last step is kept; give --val-classes (groups "
                         "not trained on) to select the best step")  # fmt: skip
        return "\n".join(lines)


def regression_backbone(features: int, width: str | None) -> dict[str, Any]:
    """The backbone spec: an MLP over ``features`` inputs without batch norm (a batch
    statistic would couple the rows of a support set; benchmarks/protocol_regression.py)."""
    spec = _setup.backbone_spec("mlp", [features], width)
    spec["kwargs"].setdefault("hidden", list(DEFAULT_HIDDEN))
    spec["kwargs"]["batch_norm"] = False
    return spec


def build_regressor(algorithm: str, spec: dict[str, Any], params: dict[str, Any], seed: int) -> Any:
    """A regression learner (``task="regression"``, ``ways=1``) on a backbone made from
    ``spec``, initialised from ``seed``; ``params`` override :data:`REGRESSION_HPARAMS`."""
    from medmeta import algorithms
    from medmeta.nn import make_backbone

    _setup.resolve_task("regression", algorithm)
    hparams = {**REGRESSION_HPARAMS.get(algorithm, {}), **params}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = make_backbone(spec["name"], spec["input_shape"], **spec["kwargs"])
        try:
            return algorithms.build(algorithm, backbone, 1, input_shape=spec["input_shape"],
                                    task="regression", **hparams)  # fmt: skip
        except (TypeError, ValueError) as err:
            raise UsageError(f"--param: {err}") from err


def split_groups(
    data: R.RegressionData, classes: str | None, val_classes: str | None, need: int
) -> tuple[list[int], list[int]]:
    """Training and validation groups: ``--classes`` (default: every group that is not a
    validation group) and ``--val-classes``, each with at least ``need`` rows."""
    val = R.select_groups(data, val_classes, "--val-classes") if val_classes else []
    train = R.select_groups(data, classes, "--classes")
    if classes and set(train) & set(val):
        both = [data.group_names[g] for g in sorted(set(train) & set(val))]
        raise UsageError(f"--val-classes overlap --classes: {both}")
    train = R.usable_groups(data, [g for g in train if g not in val], need, "--classes")
    if val:
        val = R.usable_groups(data, val, need, "--val-classes")
    else:
        logger.warning("no --val-classes: no validation, the last step's weights are kept; give "
                       "--val-classes (groups not trained on) to select the best step")  # fmt: skip
    return train, val


def data_line(source: str, data: R.RegressionData, train: list[int], val: list[int],
              pre: Any) -> str:  # fmt: skip
    """One line on the data a regression run uses."""
    counts = data.counts()[train]
    by = f"{data.group_by!r}" if data.group_by else "class"
    line = (f"data: {source}: {len(data)} rows with {data.target}"
            + (f" ({data.dropped} without it left out)" if data.dropped else "")
            + f"; {len(train)} training group(s) of {by} ({counts.min()}-{counts.max()} rows "
            f"each), {len(val)} validation")  # fmt: skip
    if pre.kind == "table":
        return line + (f"; {len(data.inputs.columns)} columns encoded as "
                       f"{pre.input_shape[0]} features fitted on the training rows")  # fmt: skip
    return line + f"; {pre.input_shape[0]} features standardised with the training rows"


def train_regressor(
    *, data: str, target: str | None, group_by: str | None, classes: str | None,
    val_classes: str | None, drop_missing: bool, algorithm: str, params: dict[str, Any],
    shots: int, queries: int, steps: int, meta_batch: int, lr: float, width: str | None,
    val_every: int, val_episodes: int, members: int, level: float, seed: int, device: str,
    out: str | Path, resume: bool = True, progress: bool = True, command: str | None = None,
) -> RegressionTrainOutcome:  # fmt: skip
    """Meta-train ``algorithm`` on the ``classes`` groups of ``data`` (one regression task
    per group, ``shots`` support and ``queries`` query rows per episode) and write a model
    folder: ``model.json`` (``task_type: "regression"``), ``best.pt`` / ``last.pt``, logs
    and ``learning_curves.png``. The inputs' encoding is fitted on the training groups'
    rows only."""
    from medmeta.train import meta_fit

    raw = R.load_regression_data(data, target=target, group_by=group_by, drop_missing=drop_missing)
    train_ids, val_ids = split_groups(raw, classes, val_classes, shots + queries)
    pre = R.fit_preprocessing(raw, raw.rows_of(train_ids))
    x = R.encode(raw, pre)
    if progress:
        print(data_line(data, raw, train_ids, val_ids, pre), file=sys.stderr)
    train_tasks = R.make_tasks(raw, x, train_ids, f"{data} (training groups)")
    val_tasks = R.make_tasks(raw, x, val_ids, f"{data} (validation groups)") if val_ids else None
    spec = regression_backbone(x.shape[1], width)
    learner = build_regressor(algorithm, spec, params, seed)
    folder = Path(out)
    fit = meta_fit(
        learner, train_tasks, val_tasks, ways=1, shots=shots, queries=queries, steps=steps,
        meta_batch=meta_batch, seed=seed, lr=lr, out_dir=folder, val_every=min(val_every, steps),
        val_episodes=val_episodes, device=device, progress=progress, resume=resume,
        backbone_spec=spec, log_every=max(1, min(50, steps // 30)),
    )  # fmt: skip
    best = next((h for h in fit.history if h["step"] == fit.best_step), {})
    card = {
        "task_type": "regression", "kind": "trained", "algorithm": algorithm,
        "hparams": learner.spec()["hparams"], "backbone": spec, "preprocessing": pre.to_dict(),
        "target": {"name": raw.target},
        "episodes": {"shots": shots, "queries": queries},
        "interval": {"members": members, "level": level},
        "training": {
            "data": data, "group_by": raw.group_by,
            "groups": [raw.group_names[g] for g in train_ids],
            "val_groups": [raw.group_names[g] for g in val_ids],
            "rows": len(raw.rows_of(train_ids)), "dropped_missing_targets": raw.dropped,
            "steps": fit.last_step, "meta_batch": meta_batch, "lr": lr, "seed": seed,
            "best_step": fit.best_step, "val_mse": best.get("val_loss"),
            "val_r2": fit.best_accuracy, "val_r2_ci95": fit.best_ci95,
        },
        "checkpoint": "best.pt" if fit.best_path is not None else "last.pt",
        "medmeta_version": __version__,
        "command": command,
    }  # fmt: skip
    write_card(folder, card)
    if is_main_process():
        _learning_curves(fit.history, folder / "learning_curves.png")
    return RegressionTrainOutcome(folder, card, fit, train_tasks, val_tasks)


def _learning_curves(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss, validation MSE and R² per step (:func:`plot_regression_curves`)."""
    try:
        from medmeta.report.regression import plot_regression_curves

        return plot_regression_curves(history, path)
    except ImportError:  # matplotlib is optional
        logger.info("matplotlib is not installed; no learning-curve plot")
        return None


# ----------------------------------------------------------------------------- adaptation


@dataclass
class RegressionAdaptOutcome:
    """An ensemble adapted to one task and how it did on the task's other rows."""

    ensemble: Any  # EnsembleRegressor
    support_x: torch.Tensor
    support_y: torch.Tensor
    support_index: np.ndarray
    query_index: np.ndarray
    held_out: dict[str, Any] | None
    folder: Path | None
    extra: dict[str, Any]


def build_ensemble(learner: Any, support_x: torch.Tensor, support_y: torch.Tensor, *,
                   members: int, level: float, seed: int) -> Any:  # fmt: skip
    """:func:`~medmeta.algorithms.ensemble_regressor.adapt_ensemble` with its resamples
    drawn from a CPU generator seeded ``seed`` (the same seed rebuilds the same ensemble)."""
    from medmeta.algorithms.ensemble_regressor import adapt_ensemble

    try:
        return adapt_ensemble(learner, support_x, support_y, members=members, level=level,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
    except ValueError as err:
        raise UsageError(str(err)) from err


def adapt_regressor(
    model: TrainedModel,
    data: R.RegressionData,
    *,
    shots: int | None,
    seed: int,
    members: int,
    level: float,
    out: str | Path | None,
    device: str = "cpu",
) -> RegressionAdaptOutcome:
    """Adapt a bootstrap ensemble of ``members`` to ``shots`` seeded rows (default: all) of
    the one task in ``data``; the task's other rows measure its MSE, R² and the coverage of
    its ``level`` interval. With ``out``, the adapted folder is written (``support.pt``
    holds the preprocessed support rows and their float targets)."""
    present = np.flatnonzero(data.counts() > 0)
    if len(present) != 1:
        names = [data.group_names[g] for g in present]
        raise DataError(f"adaptation is to one task; the data holds {len(names)} groups "
                        f"({', '.join(names[:10])}): pick one with --classes", "--classes")  # fmt: skip
    group = data.group_names[int(present[0])]
    x = R.encode_for_model(data, model.preprocessing)
    order = np.random.default_rng(seed).permutation(len(data))
    k = len(data) if shots is None else shots
    if k > len(data):
        raise DataError(f"task {group!r} has {len(data)} rows, fewer than --shots {k}", "--shots")
    s, rest = order[:k], np.sort(order[k:])
    sx = torch.from_numpy(x[s]).to(device)
    sy = torch.from_numpy(data.y[s].astype(np.float32)).to(device)
    ensemble = build_ensemble(model.learner.to(device), sx, sy, members=members, level=level,
                              seed=seed)  # fmt: skip
    held = _held_out(ensemble, x[rest], data.y[rest], data.y[s], device) if len(rest) else None
    info = {"group": group, "shots": int(k), "seed": seed, "members": members, "level": level,
            "noise_std": float(ensemble.noise_std), "held_out": held}  # fmt: skip
    folder = None
    if out is not None:
        folder = save_adapted(model, out, sx, sy, [], info, y_dtype=torch.float32)
    return RegressionAdaptOutcome(ensemble, sx.cpu(), sy.cpu(), s, rest, held, folder, info)


def _held_out(ensemble: Any, x: np.ndarray, y: np.ndarray, support_y: np.ndarray,
              device: str) -> dict[str, Any]:  # fmt: skip
    """MSE, R², interval coverage and width of ``ensemble`` on rows ``x [n, F]``, ``y [n]``,
    beside the MSE of the support mean."""
    from medmeta.eval import regression as RM

    iv = ensemble.interval(torch.from_numpy(x).to(device))
    pred, lo, hi = (t.detach().cpu().double().numpy()[None] for t in (iv.mean, iv.lower, iv.upper))
    truth = y[None].astype(np.float64)
    r2 = float(RM.r2(pred, truth)[0]) if len(y) > 1 else float("nan")
    return {"rows": len(y), "mse": float(RM.mse(pred, truth)[0]),
            "r2": None if np.isnan(r2) else r2,
            "coverage": float(RM.coverage(lo, hi, truth)[0]),
            "width": float(RM.interval_width(lo, hi)[0]),
            "support_mean_mse": float(((truth - support_y.mean()) ** 2).mean())}  # fmt: skip


def load_ensemble(model: TrainedModel) -> Any:
    """The :class:`~medmeta.algorithms.ensemble_regressor.EnsembleRegressor` of an adapted
    regression folder, rebuilt exactly from its stored support set, members, level and
    seed (``adapt_ensemble(model.learner, x, y, members=M, level=L,
    generator=Generator().manual_seed(seed))``)."""
    if model.card.get("task_type") != "regression":
        raise ModelError(f"{model.folder} is not a regression model (its card has no "
                         "task_type 'regression')")  # fmt: skip
    if not model.is_adapted:
        raise ModelError(f"{model.folder} is not an adapted regression model (run `medmeta "
                         "adapt` on it with a support set)")  # fmt: skip
    x, y, _ = model.support()
    task = model.card["task"]
    device = next(model.learner.parameters()).device
    return build_ensemble(model.learner, x.to(device), y.to(device), members=int(task["members"]),
                          level=float(task["level"]), seed=int(task["seed"]))  # fmt: skip
