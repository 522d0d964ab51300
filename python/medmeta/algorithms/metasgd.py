"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning").

Like MAML, but the inner step size is a learned tensor alpha shaped like each parameter,
applied element-wise, so the meta-learner learns both the update direction and the step::

    theta'_t = theta - alpha (.) grad L_support_t(theta)

alpha is a meta-parameter trained by the meta-gradient together with theta (Li et al., eq. 3).
All tasks share alpha: one fused :func:`medmeta.ops.inner_update` call with per-element
rates (``param.shape``) broadcast over the task axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmeta.algorithms._fast_weights import FastWeightLearner
from medmeta.algorithms.base import register


@register
class MetaSGD(FastWeightLearner):
    """Meta-SGD (Li et al. 2017).

    Args:
        backbone, ways: as for MAML.
        alpha_init: initial value of every learned rate (Li et al. draw them from
            [0.005, 0.1]; a constant keeps runs comparable).
        inner_steps: inner steps in meta-training (the paper uses one).
        eval_steps: inner steps at test time (default: ``inner_steps``, since the rates are
            learned for that many steps).
        first_order: drop second-order terms (alpha is still learned).
        feature_dim / input_shape: the backbone's embedding size, or an input shape to
            probe it with.
        task: ``"classification"`` or ``"regression"`` (``ways=1``; Li et al. sec. 3.1 also
            meta-learn regression with the squared error).

    Attributes:
        alpha: ``nn.ParameterList`` of learned rates, one per adapted parameter, in the order
            of :meth:`adapted_names`.
    """

    name = "metasgd"
    tasks = ("classification", "regression")

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        alpha_init: float = 0.05,
        inner_steps: int = 1,
        eval_steps: int | None = None,
        first_order: bool = False,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        task: str = "classification",
    ) -> None:
        super().__init__(
            backbone,
            ways,
            inner_lr=alpha_init,
            inner_steps=inner_steps,
            eval_steps=inner_steps if eval_steps is None else eval_steps,
            first_order=first_order,
            feature_dim=feature_dim,
            input_shape=input_shape,
            task=task,
        )
        self.hparams["alpha_init"] = self.hparams.pop("inner_lr")
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.full_like(p, float(alpha_init)))
            for p in self.adapted_parameters().values()
        )

    def inner_rate(self, step: int) -> list[torch.Tensor]:
        """The learned per-element rates (the same at every step)."""
        return list(self.alpha)
