"""``medmeta eval`` of a regression model: seeded K-shot episodes of the chosen tasks.

Per episode the model adapts a bootstrap ensemble to the support rows (what ``medmeta
adapt`` deploys; :func:`~medmeta.algorithms.regressor.bootstrap_interval`, Efron &
Tibshirani 1993, ch. 6) and predicts the queries with a central interval. Reported over the
episodes, with 95% CIs: MSE and R² of the ensemble mean, the interval's coverage and width,
one plain adaptation's MSE and R², and two baselines fitted on the same support rows -- ridge
regression with its penalty chosen by leave-one-out and the support mean -- with the paired
MSE difference (model minus baseline; negative: the model is better).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medmeta.cli import _regression as R

logger = logging.getLogger(__name__)

__all__ = ["RegressionEvaluation", "evaluate_regressor", "task_set"]


def task_set(model: Any, data: R.RegressionData, classes: str | None, need: int) -> Any:
    """The ``classes`` groups of ``data`` (with at least ``need`` rows each) as
    :class:`~medmeta.data.regression_tasks.RegressionTasks` in ``model``'s input encoding."""
    ids = R.usable_groups(data, R.select_groups(data, classes, "--classes"), need, "--classes")
    seen = set(model.card["training"]["groups"]) & {data.group_names[g] for g in ids}
    if seen:
        logger.warning("evaluating on %d group(s) the model was trained on (%s): these scores "
                       "are not those of new tasks; pick new groups with --classes",
                       len(seen), ", ".join(sorted(seen)))  # fmt: skip
    x = R.encode_for_model(data, model.preprocessing)
    return R.make_tasks(data, x, ids, f"{data.source} (test groups)")


@dataclass
class RegressionEvaluation:
    """Metrics of a regression model on seeded episodes (see the module docstring).

    ``metrics`` is :func:`~medmeta.eval.regression.summarize_regression` of the ensemble
    mean and interval; ``single`` of one plain adaptation; ``baselines`` maps
    ``"ridge"`` / ``"support_mean"`` to their summary plus ``mse_diff`` and ``mse_diff_ci95``
    (the model's MSE minus theirs, paired); ridge is None without scikit-learn.
    """

    algorithm: str
    target: str
    tasks: list[str]
    settings: dict[str, Any]
    metrics: dict[str, Any]
    single: dict[str, Any]
    baselines: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task_type": "regression", "algorithm": self.algorithm, "target": self.target,
                "tasks": self.tasks, **self.settings, **_clean(self.metrics),
                "single_adaptation": _clean(self.single),
                "baselines": {k: None if v is None else _clean(v)
                              for k, v in self.baselines.items()}}  # fmt: skip

    def summary(self) -> str:
        s, m = self.settings, self.metrics
        lines = [
            f"{self.algorithm} predicting {self.target}: {s['episodes']} episodes of "
            f"{len(self.tasks)} task(s) ({', '.join(self.tasks[:6])}"
            f"{', ...' if len(self.tasks) > 6 else ''}), {s['shots']} support and "
            f"{s['queries']} query rows each",
            f"  MSE {m['mse']:.4g} ± {m['mse_ci95']:.2g}   R² {m['r2']:.3f} ± {m['r2_ci95']:.3f}"
            f"   (mean of a {s['members']}-member bootstrap ensemble, as adapt deploys it; "
            "95% CIs over episodes)",
            f"  {100 * s['level']:.0f}% interval: coverage {m['coverage']:.3f} ± "
            f"{m['coverage_ci95']:.3f}, mean width {m['width']:.4g}",
            f"  one adaptation: MSE {self.single['mse']:.4g} ± {self.single['mse_ci95']:.2g}, "
            f"R² {self.single['r2']:.3f} ± {self.single['r2_ci95']:.3f}",
        ]  # fmt: skip
        for key, label in (("ridge", "ridge (LOO)"), ("support_mean", "support mean")):
            b = self.baselines.get(key)
            if b is None:
                lines.append(f"  {label}: not run (needs scikit-learn: pip install "
                             "\"medmeta[baselines]\")")  # fmt: skip
                continue
            d, ci = b["mse_diff"], b["mse_diff_ci95"]
            lines.append(f"  {label}: MSE {b['mse']:.4g} ± {b['mse_ci95']:.2g}; model minus "
                         f"{label}: {d:+.4g} ± {ci:.2g} (paired): {_verdict(d, ci)}")  # fmt: skip
        return "\n".join(lines)


def _verdict(diff: float, ci: float) -> str:
    if diff + ci < 0:
        return "the model is better"
    if diff - ci > 0:
        return "the model is WORSE"
    return "no significant difference"


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: NaN and inf become None, numpy scalars Python numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float | np.floating):
            v = float(v) if np.isfinite(v) else None
        elif isinstance(v, np.integer):
            v = int(v)
        out[k] = v
    return out


def evaluate_regressor(
    model: Any,
    tasks: Any,
    *,
    shots: int,
    queries: int,
    episodes: int,
    seed: int,
    members: int,
    level: float,
    device: str = "cpu",
    batch_size: int = 50,
    progress: bool = False,
) -> RegressionEvaluation:
    """Evaluate ``model.learner`` on ``episodes`` seeded episodes of ``tasks`` (a
    :class:`~medmeta.data.regression_tasks.RegressionTasks` in the model's encoding)."""
    from medmeta.eval import regression as RM

    parts = _predict(model.learner.to(device), tasks, shots=shots, queries=queries,
                     episodes=episodes, seed=seed, members=members, level=level,
                     device=device, batch_size=batch_size, progress=progress)  # fmt: skip
    y = parts["target"]
    metrics = RM.summarize_regression(parts["ensemble"], y, parts["lower"], parts["upper"])
    single = RM.summarize_regression(parts["single"], y)
    errors = RM.mse(parts["ensemble"], y)
    baselines: dict[str, dict[str, Any] | None] = {}
    for key in ("ridge", "support_mean"):
        if parts.get(key) is None:
            baselines[key] = None
            continue
        d, ci = RM.paired_difference(errors, RM.mse(parts[key], y))
        baselines[key] = {**RM.summarize_regression(parts[key], y), "mse_diff": d,
                          "mse_diff_ci95": ci}  # fmt: skip
    settings = {"episodes": episodes, "shots": shots, "queries": queries, "members": members,
                "level": level, "seed": seed}  # fmt: skip
    return RegressionEvaluation(model.card["algorithm"], model.card["target"]["name"],
                                tasks.task_names, settings, metrics, single, baselines)  # fmt: skip


def _predict(learner: Any, tasks: Any, *, shots: int, queries: int, episodes: int, seed: int,
             members: int, level: float, device: str, batch_size: int,
             progress: bool) -> dict[str, np.ndarray | None]:  # fmt: skip
    """Predictions ``[E, Q]`` of one adaptation, the ensemble (mean, lower, upper), ridge
    (None without scikit-learn) and the support mean, with the targets."""
    from tqdm.auto import tqdm

    from medmeta.algorithms.regressor import bootstrap_interval
    from medmeta.eval import regression_baselines as RB
    from medmeta.eval.evaluate import iter_episodes

    sampler = tasks.episode_sampler(1, shots, queries, generator=seed)
    g = torch.Generator().manual_seed(seed)
    keys = ("target", "single", "ensemble", "lower", "upper", "ridge", "support_mean")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    ridge = True
    learner.eval()
    with tqdm(total=episodes, disable=not progress, desc="eval", dynamic_ncols=True) as bar:
        for batch in iter_episodes(sampler, episodes, batch_size):
            b = batch.to(device)
            sx, sy, qx = b.support_x, b.support_y, b.query_x
            iv = bootstrap_interval(learner.predict, sx, sy, qx, members=members, level=level,
                                    generator=g)  # fmt: skip
            for key, value in (("target", batch.query_y), ("single", learner.predict(sx, sy, qx)),
                               ("ensemble", iv.mean), ("lower", iv.lower), ("upper", iv.upper)):  # fmt: skip
                out[key].append(value.detach().double().cpu().numpy())
            out["support_mean"].append(RB.support_mean_predict(batch.support_y, queries))
            if ridge:
                ridge = _ridge(batch, out["ridge"])
            bar.update(len(batch.support_y))
    return {k: (np.concatenate(v) if v and (k != "ridge" or ridge) else None)
            for k, v in out.items()}  # fmt: skip


def _ridge(batch: Any, into: list[np.ndarray]) -> bool:
    """Append ridge's predictions of ``batch``; False (with a warning) without scikit-learn."""
    from medmeta.eval import regression_baselines as RB

    try:
        into.append(RB.ridge_predict(batch.support_x, batch.support_y, batch.query_x))
    except ImportError as err:
        logger.warning("no ridge baseline: %s", err)
        return False
    return True
