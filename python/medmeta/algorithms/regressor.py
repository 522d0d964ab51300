"""Few-shot regression: the adapted regressor, input checks, and predictive intervals.

The MAML family (MAML, first-order MAML, Meta-SGD, Reptile) learns regression when built
with ``task="regression"`` and ``ways=1``: one output unit, the mean squared error as the
inner and the outer loss (Finn et al. 2017, sec. 3.1 and 5.1). Per episode the targets are
standardised with the support set's mean and standard deviation
(:func:`medmeta.data.regression_tasks.support_statistics`) and predictions mapped back, so
a learner takes and returns targets in their own units and never sees a statistic of the
queries.

* ``predict(support_x [B, K, ...], support_y [B, K], query_x [B, Q, ...]) -> [B, Q]``;
* ``adapt(support_x [K, ...], support_y [K]) ->`` :class:`AdaptedRegressor`;
* :func:`bootstrap_interval`: mean and a central predictive interval per query from an
  ensemble of adaptations to bootstrap resamples of the support set (Efron & Tibshirani
  1993, ch. 6; the ensemble view of Lakshminarayanan et al. 2017), widened by the noise
  variance estimated from out-of-bag residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medmeta.algorithms.protonet import check_episode, check_task
from medmeta.data.regression_tasks import MIN_SCALE
from medmeta.ops._checks import value_checks_enabled

__all__ = [
    "AdaptedRegressor",
    "PredictiveInterval",
    "bootstrap_interval",
    "bootstrap_resample",
    "check_regression_episode",
    "check_regression_task",
    "check_targets",
    "normal_interval",
    "normal_quantile",
    "out_of_bag_noise_variance",
    "r2_per_task",
]

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class AdaptedRegressor(nn.Module):
    """A regressor adapted to one task: ``forward(x [n, ...]) -> predictions [n]``.

    ``net`` maps inputs to one standardised output ``[n, 1]``; the prediction is
    ``net(x)[:, 0] * target_scale + target_mean`` (the support set's target statistics),
    in the units of the support targets.
    """

    task = "regression"
    ways = 1

    def __init__(self, net: nn.Module, target_mean: torch.Tensor, target_scale: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("target_mean", torch.as_tensor(target_mean).detach().clone())
        self.register_buffer("target_scale", torch.as_tensor(target_scale).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 0] * self.target_scale + self.target_mean


# ------------------------------------------------------------------------------ checks


def check_targets(method: str, name: str, y: torch.Tensor) -> None:
    """Regression targets are floating point and finite (the first bad one is named)."""
    if not y.dtype.is_floating_point:
        raise TypeError(
            f"{method}: '{name}' must hold float regression targets, got dtype {y.dtype} "
            "(class labels? build the learner with task='classification')"
        )
    if y.numel() == 0 or not value_checks_enabled():
        return
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        where = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(
            f"{method}: '{name}' holds a non-finite target ({float(y[tuple(where)])}) at "
            f"index {where}; {int(bad.sum())} of {y.numel()} targets are NaN or inf. Drop "
            "those examples from the support set"
        )


def check_regression_episode(
    method: str, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
) -> tuple[int, int, int]:
    """Validate a batch of regression episodes (``support_y [B, K]`` float, finite); returns
    ``(B, K, Q)``."""
    B, K, Q = check_episode(method, support_x, support_y, query_x)
    if K < 1:
        raise ValueError(f"{method}: the support set is empty (support_y {list(support_y.shape)})")
    check_targets(method, "support_y", support_y)
    return B, K, Q


def check_regression_task(method: str, support_x: torch.Tensor, support_y: torch.Tensor) -> int:
    """Validate one regression task's support set for ``adapt``; returns K."""
    K = check_task(method, support_x, support_y)
    if K < 1:
        raise ValueError(f"{method}: the support set is empty")
    check_targets(method, "support_y", support_y)
    return K


def r2_per_task(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per task: ``1 - SSE / SST`` over the last axis, with
    SST around the targets' own mean. ``pred``, ``target`` ``[T, n]`` -> ``[T]``; NaN where
    the targets are constant (R² undefined: their standard deviation is at most
    :data:`~medmeta.data.regression_tasks.MIN_SCALE` relative to ``1 + |mean|``, which
    also absorbs rounding)."""
    sse = (target - pred).pow(2).sum(-1)
    centred = target - target.mean(-1, keepdim=True)
    sst = centred.pow(2).sum(-1)
    mean = target.mean(-1)
    defined = sst.div(target.shape[-1]).sqrt() > MIN_SCALE * (1 + mean.abs())
    return torch.where(
        defined, 1 - sse / torch.where(defined, sst, torch.ones_like(sst)), torch.nan
    )


# -------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class PredictiveInterval:
    """Predictions with a central interval, ``[B, Q]`` each.

    Attributes:
        mean: the ensemble mean.
        lower, upper: the interval's bounds.
        member_std: spread of the ensemble members (parameter uncertainty).
        noise_std: ``[B]`` out-of-bag residual standard deviation (noise), per episode.
        level: the interval's nominal coverage (e.g. 0.9).
    """

    mean: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    member_std: torch.Tensor
    noise_std: torch.Tensor
    level: float


def bootstrap_resample(
    support_x: torch.Tensor, support_y: torch.Tensor, members: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bootstrap supports ``[B*M, K, ...]``, ``[B*M, K]`` and the in-bag mask ``[B, M, K]``."""
    B, K = support_y.shape
    idx = torch.randint(K, (B, members, K), generator=generator).to(support_y.device)
    in_bag = torch.zeros(B, members, K, dtype=torch.bool, device=support_y.device)
    in_bag.scatter_(2, idx, True)
    rows = idx.reshape(B, members * K)
    xs = support_x[torch.arange(B, device=rows.device)[:, None], rows]
    ys = support_y.gather(1, rows)
    return xs.reshape(B * members, K, *support_x.shape[2:]), ys.reshape(B * members, K), in_bag


def bootstrap_interval(
    predict: Predict,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    members: int = 10,
    level: float = 0.9,
    generator: torch.Generator | None = None,
) -> PredictiveInterval:
    """A bootstrap ensemble's mean and central ``level`` predictive interval per query.

    Each of ``members`` members is ``predict`` (e.g. ``learner.predict``) adapted to a
    bootstrap resample of each support set (K draws with replacement). The predictive
    variance of a query is the members' variance (parameter uncertainty) plus the noise
    variance, estimated per episode from the out-of-bag residuals (each support example
    predicted by the members whose resample left it out; all members' residuals when no
    example was left out). The interval is ``mean ± z sd`` with ``z`` the normal quantile.

    Args:
        predict: ``(support_x [b, K, ...], support_y [b, K], query_x [b, n, ...]) -> [b, n]``.
        support_x, support_y, query_x: ``[B, K, ...]``, ``[B, K]``, ``[B, Q, ...]``.
        members: M >= 2.
        level: nominal coverage in (0, 1).
        generator: draws the resamples (CPU generator; default: a fresh one seeded 0).

    Returns:
        :class:`PredictiveInterval` (tensors on the inputs' device).
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise ValueError(f"members must be an int >= 2, got {members!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    check_regression_episode("bootstrap_interval", support_x, support_y, query_x)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    B, K = support_y.shape
    Q = query_x.shape[1]
    xs, ys, in_bag = bootstrap_resample(support_x, support_y, members, g)
    # each member predicts the queries and the (whole) original support set at once
    targets = torch.cat([query_x, support_x], 1).repeat_interleave(members, 0)
    out = predict(xs, ys, targets).reshape(B, members, Q + K).double()
    noise_var = out_of_bag_noise_variance(out[..., Q:], support_y, in_bag)
    return normal_interval(out[..., :Q], noise_var, level, support_y.dtype)


def out_of_bag_noise_variance(
    on_support: torch.Tensor, support_y: torch.Tensor, in_bag: torch.Tensor
) -> torch.Tensor:
    """Noise variance per episode ``[B]`` (float64) from the members' predictions of the
    support set ``on_support [B, M, K]``: the mean squared residual of the examples each
    member's resample left out (``~in_bag [B, M, K]``), or of all residuals when no example
    was left out."""
    residual2 = (support_y.double().unsqueeze(1) - on_support.double()).pow(2)
    oob = (~in_bag).double()
    n_oob = oob.sum((1, 2))
    return torch.where(n_oob > 0, (residual2 * oob).sum((1, 2)) / n_oob.clamp_min(1),
                       residual2.mean((1, 2)))  # fmt: skip


def normal_interval(
    on_query: torch.Tensor, noise_var: torch.Tensor, level: float, dtype: torch.dtype
) -> PredictiveInterval:
    """The ensemble's mean and ``mean ± z sd`` interval from the members' predictions
    ``on_query [B, M, Q]`` and the noise variance ``[B]``: ``sd² = `` the members' (unbiased)
    variance plus the noise variance; ``z`` the normal quantile of ``0.5 + level / 2``.
    Computed in float64, returned in ``dtype``."""
    on_query = on_query.double()
    mean = on_query.mean(1)
    member_var = on_query.var(1, unbiased=True)
    sd = (member_var + noise_var.double().unsqueeze(1)).sqrt()
    z = normal_quantile(level)
    return PredictiveInterval(
        mean=mean.to(dtype),
        lower=(mean - z * sd).to(dtype),
        upper=(mean + z * sd).to(dtype),
        member_std=member_var.sqrt().to(dtype),
        noise_std=noise_var.sqrt().to(dtype),
        level=float(level),
    )


def normal_quantile(level: float) -> float:
    """``z`` with ``P(|N(0, 1)| <= z) = level`` (1.645 for 0.9)."""
    return float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
