"""Few-shot regression metrics, in numpy: per-episode MSE and R², coverage and width of
predictive intervals, and means with 95% CIs over episodes.

Conventions: ``E`` episodes, ``Q`` queries per episode; ``pred``, ``target``, ``lower``,
``upper`` are ``[E, Q]``. Every per-episode metric is computed on one episode's queries and
summarised over episodes with :func:`~medmeta.eval.metrics.mean_ci95` (tasks are the unit of
replication, as in the classification protocols).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medmeta.data.regression_tasks import MIN_SCALE
from medmeta.eval.evaluate import iter_episodes
from medmeta.eval.metrics import mean_ci95

__all__ = [
    "RegressionPredictions",
    "coverage",
    "interval_width",
    "mse",
    "paired_difference",
    "predict_regression_episodes",
    "predict_regression_sharded",
    "r2",
    "summarize_regression",
]


def _episode_arrays(names: str, a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 ``[E, Q]`` arrays of one shape (``names`` says which)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"{names} must both be [E, Q], got {list(a.shape)} and {list(b.shape)}")
    return a, b


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _episode_arrays("pred and target", pred, target)
    if not np.isfinite(t).all():
        e, q = np.argwhere(~np.isfinite(t))[0]
        raise ValueError(f"target holds a non-finite value at episode {e}, query {q}")
    return p, t


def mse(pred: Any, target: Any) -> np.ndarray:
    """Mean squared error per episode ``[E]``."""
    p, t = _pair(pred, target)
    return ((p - t) ** 2).mean(1)


def r2(pred: Any, target: Any) -> np.ndarray:
    """Coefficient of determination per episode ``[E]``: ``1 - SSE / SST`` with SST around
    the episode's own query mean (so predicting that mean scores 0, a constant off it
    scores below 0). NaN where the query targets are all equal (undefined; their standard
    deviation at most ``MIN_SCALE * (1 + |mean|)``, as for the support scale)."""
    p, t = _pair(pred, target)
    sse = ((t - p) ** 2).sum(1)
    sst = ((t - t.mean(1, keepdims=True)) ** 2).sum(1)
    out = np.full(len(t), np.nan)
    ok = np.sqrt(sst / t.shape[1]) > MIN_SCALE * (1 + np.abs(t.mean(1)))
    out[ok] = 1 - sse[ok] / sst[ok]
    return out


def coverage(lower: Any, upper: Any, target: Any) -> np.ndarray:
    """Fraction of each episode's query targets inside ``[lower, upper]`` ``[E]``."""
    lo, t = _pair(lower, target)
    hi, _ = _pair(upper, target)
    if (hi < lo).any():  # NaN bounds compare False: such a query is simply not covered
        raise ValueError("upper is below lower for some queries")
    return ((t >= lo) & (t <= hi)).mean(1)


def interval_width(lower: Any, upper: Any) -> np.ndarray:
    """Mean interval width per episode ``[E]``; ``inf`` for an episode where a bound is not
    finite (a diverged adaptation: counted by :func:`summarize_regression`, not raised)."""
    lo, hi = _episode_arrays("lower and upper", lower, upper)
    width = (hi - lo).mean(1)
    return np.where(np.isfinite(width), width, np.inf)


def paired_difference(a: Any, b: Any) -> tuple[float, float]:
    """Mean of ``a - b`` over episodes and its 95% CI half-width (paired: the same
    episodes), e.g. a method's MSE minus a baseline's: negative = the method is better."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must both be [E], got {list(a.shape)} and {list(b.shape)}")
    ok = np.isfinite(a) & np.isfinite(b)
    return mean_ci95((a - b)[ok])


def summarize_regression(
    pred: Any, target: Any, lower: Any = None, upper: Any = None
) -> dict[str, float]:
    """MSE and R² (mean and 95% CI half-width over episodes) and, with an interval, its
    coverage and mean width.

    R² is averaged over the episodes where it is defined; ``r2_undefined`` counts the others
    (query targets all equal). ``nonfinite_predictions`` counts diverged predictions (their
    MSE is not finite, so neither is the mean: shown, not hidden); the width is averaged over
    the episodes whose interval is finite and ``nonfinite_intervals`` counts the others.
    """
    per_mse = mse(pred, target)
    per_r2 = r2(pred, target)
    defined = np.isfinite(per_r2)
    m, m_ci = mean_ci95(per_mse)
    r, r_ci = mean_ci95(per_r2[defined]) if defined.any() else (np.nan, np.nan)
    out = {"episodes": len(per_mse), "mse": m, "mse_ci95": m_ci, "r2": r, "r2_ci95": r_ci,
           "r2_median": float(np.median(per_r2[defined])) if defined.any() else np.nan,
           "r2_undefined": int((~defined).sum())}  # fmt: skip
    out["nonfinite_predictions"] = int((~np.isfinite(np.asarray(pred, np.float64))).sum())
    if lower is not None and upper is not None:
        c, c_ci = mean_ci95(coverage(lower, upper, target))
        widths = interval_width(lower, upper)
        finite = np.isfinite(widths)
        w, w_ci = mean_ci95(widths[finite]) if finite.any() else (np.inf, np.nan)
        out |= {"coverage": c, "coverage_ci95": c_ci, "width": w, "width_ci95": w_ci,
                "nonfinite_intervals": int((~finite).sum())}  # fmt: skip
    return out


@dataclass(frozen=True)
class RegressionPredictions:
    """Query predictions of ``E`` episodes (CPU float32).

    Attributes:
        pred, target: ``[E, Q]``.
        support_y: ``[E, K]`` the support targets (for baselines and scales).
        tasks: ``[E]`` task index of each episode.
    """

    pred: torch.Tensor
    target: torch.Tensor
    support_y: torch.Tensor
    tasks: torch.Tensor


def _batches(sampler: Any, episodes: int, batch_size: int, select: range | None) -> Iterator[Any]:
    sampler_batch = getattr(sampler, "batch_size", 1)
    if sampler_batch != 1:
        raise ValueError("predict_regression_episodes needs a sampler with batch_size=1")
    return iter_episodes(sampler, episodes, batch_size, select)


def _empty(sampler: Any) -> RegressionPredictions:
    """No episode (an empty shard): ``[0, Q]``, ``[0, Q]``, ``[0, K]``, ``[0]``."""
    q, k = torch.empty(0, sampler.queries), torch.empty(0, sampler.shots)
    return RegressionPredictions(q, q.clone(), k, torch.empty(0, dtype=torch.int64))


def predict_regression_episodes(
    learner: Any,
    sampler: Any,
    episodes: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    select: range | None = None,
) -> RegressionPredictions:
    """``learner.predict`` (in eval mode) on ``episodes`` episodes of a ``batch_size=1``
    regression sampler (:class:`~medmeta.data.regression_tasks.RegressionEpisodeSampler`),
    stacked ``batch_size`` at a time (the episodes do not depend on ``batch_size``); only
    those of ``select`` when given (see :func:`~medmeta.eval.evaluate.iter_episodes`).
    ``progress`` shows a tqdm bar over episodes."""
    was_training = learner.training
    learner.eval()
    preds, targets, supports, tasks = [], [], [], []
    total = episodes if select is None else len(select)
    bar = tqdm(total=total, desc="evaluate", unit="episode", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    try:
        for batch in _batches(sampler, episodes, batch_size, select):
            b = batch.to(device)
            out = learner.predict(b.support_x, b.support_y, b.query_x)
            if tuple(out.shape) != tuple(b.query_y.shape):
                raise ValueError(
                    f"{type(learner).__name__}.predict returned shape {tuple(out.shape)}, "
                    f"expected [B, Q] = {list(b.query_y.shape)}"
                )
            preds.append(out.detach().float().cpu())
            targets.append(batch.query_y.float())
            supports.append(batch.support_y.float())
            tasks.append(batch.classes[:, 0])
            bar.update(batch.batch_size)
    finally:
        bar.close()
        learner.train(was_training)
    if not preds:
        return _empty(sampler)
    return RegressionPredictions(torch.cat(preds), torch.cat(targets), torch.cat(supports),
                                 torch.cat(tasks))  # fmt: skip


def predict_regression_sharded(
    learner: Any,
    sampler: Any,
    episodes: int,
    batch_size: int,
    ctx: Any,
    progress: bool = False,
) -> RegressionPredictions:
    """:func:`predict_regression_episodes` with the episodes shared by the processes of
    ``ctx`` (a :class:`~medmeta.train.distributed.DistContext`): each predicts its
    contiguous shard (every episode is still drawn, so the episodes are those of one
    process), then the rows are all-gathered in episode order, so every process holds the
    same ``pred``, ``target`` ``[E, Q]``, ``support_y`` ``[E, K]`` and ``tasks`` ``[E]`` as
    one process computes. Every process must call it."""
    from medmeta.train.distributed import all_gather_rows

    mine = predict_regression_episodes(learner, sampler, episodes, batch_size, ctx.device,
                                       progress and ctx.is_main, range(*ctx.shard(episodes)))  # fmt: skip
    q, k = mine.pred.shape[1], mine.support_y.shape[1]
    rows = torch.cat([mine.pred.double(), mine.target.double(), mine.support_y.double(),
                      mine.tasks.double()[:, None]], 1)  # fmt: skip
    rows = all_gather_rows(ctx, rows, ctx.counts(episodes), "the all-gather of the regression predictions").cpu()  # fmt: skip
    return RegressionPredictions(
        pred=rows[:, :q].float(),
        target=rows[:, q : 2 * q].float(),
        support_y=rows[:, 2 * q : 2 * q + k].float(),
        tasks=rows[:, 2 * q + k].long(),
    )
