"""A deployable bootstrap ensemble of adapted regressors with a predictive interval.

:func:`adapt_ensemble` adapts a regression learner (MAML, first-order MAML, Meta-SGD,
Reptile built with ``task="regression"``) to ``members`` bootstrap resamples of one task's
support set, exactly as :func:`~medmeta.algorithms.regressor.bootstrap_interval` does for a
batch of episodes (the same resamples for the same generator state, the same out-of-bag
noise variance), and returns an :class:`EnsembleRegressor`: a stand-alone module that
``medmeta adapt`` saves, ``medmeta export`` writes to ONNX and ``medmeta predict`` runs
without PyTorch (Efron & Tibshirani 1993, ch. 6; Lakshminarayanan et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmeta.algorithms.regressor import (
    AdaptedRegressor,
    PredictiveInterval,
    bootstrap_resample,
    check_regression_task,
    normal_interval,
    normal_quantile,
    out_of_bag_noise_variance,
)

__all__ = ["EnsembleRegressor", "adapt_ensemble"]


class EnsembleRegressor(nn.Module):
    """``members`` adapted regressors and the task's noise level.

    ``forward(x [n, ...]) -> [n, M]``: every member's prediction (target units);
    :meth:`interval` turns them into the mean and the central ``level`` interval
    (``mean ± z sqrt(member variance + noise_std²)``).

    Attributes:
        noise_std: out-of-bag residual standard deviation of the support set (scalar buffer).
        level: the interval's nominal coverage.
    """

    task = "regression"
    ways = 1

    def __init__(self, members: Sequence[AdaptedRegressor], noise_std: float, level: float):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        self.members = nn.ModuleList(members)
        self.register_buffer("noise_std", torch.as_tensor(float(noise_std)))
        self.level = float(level)

    @property
    def z(self) -> float:
        """The normal quantile of the interval (1.645 for level 0.9)."""
        return normal_quantile(self.level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], -1)

    def interval(self, x: torch.Tensor) -> PredictiveInterval:
        """Mean, bounds, member spread ``[n]`` each (``noise_std`` ``[1]``) for inputs ``x``
        (no gradient)."""
        with torch.no_grad():
            on_query = self(x).T.unsqueeze(0)  # [1, M, n]
        out = normal_interval(on_query, self.noise_std.double().pow(2).reshape(1), self.level,
                              on_query.dtype)  # fmt: skip
        return PredictiveInterval(
            mean=out.mean[0], lower=out.lower[0], upper=out.upper[0],
            member_std=out.member_std[0], noise_std=out.noise_std, level=out.level,
        )  # fmt: skip


def adapt_ensemble(
    learner: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    members: int = 10,
    level: float = 0.9,
    generator: torch.Generator | None = None,
) -> EnsembleRegressor:
    """Adapt ``learner`` to ``members`` bootstrap resamples of one support set.

    Args:
        learner: a regression learner (``learner.task == "regression"``).
        support_x, support_y: ``[K, ...]``, ``[K]`` float targets.
        members: M >= 2 resamples (K draws with replacement each).
        level: nominal coverage of the interval, in (0, 1).
        generator: draws the resamples (CPU; default a fresh one seeded 0), so the same
            seed rebuilds the same ensemble.
    """
    if getattr(learner, "task", None) != "regression":
        raise ValueError(
            f"adapt_ensemble needs a regression learner (built with task='regression'), got "
            f"a {getattr(learner, 'task', type(learner).__name__)} learner"
        )
    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise ValueError(f"members must be an int >= 2, got {members!r}")
    check_regression_task("adapt_ensemble", support_x, support_y)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    xs, ys, in_bag = bootstrap_resample(support_x[None], support_y[None], members, g)
    adapted = [learner.adapt(xs[m], ys[m]).eval() for m in range(members)]
    with torch.no_grad():
        on_support = torch.stack([a(support_x) for a in adapted])  # [M, K]
    noise_var = out_of_bag_noise_variance(on_support[None], support_y[None], in_bag)
    return EnsembleRegressor(adapted, float(noise_var[0].sqrt()), level).eval()
