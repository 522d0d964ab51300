"""MAML and first-order MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning
for Fast Adaptation of Deep Networks", ICML).

The meta-parameters theta are trained so that a few gradient steps on a task's support set
give weights that classify its queries well::

    theta'_t = theta - alpha * grad L_support_t(theta)        (inner_steps times)
    min_theta  mean_t L_query_t(theta'_t)

Second-order MAML differentiates through the inner steps; first-order MAML (``fomaml``,
Finn et al. 2017, sec. 5.2) treats the inner gradients as constants. All tasks of a
meta-batch are adapted at once (see :mod:`medmeta.algorithms._fast_weights`).

Both also learn few-shot regression (``task="regression"``: the squared error as inner and
outer loss, Finn et al. 2017, sec. 3.1; see :mod:`medmeta.algorithms.regressor`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medmeta.algorithms._fast_weights import FastWeightLearner
from medmeta.algorithms.base import register


@register
class MAML(FastWeightLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017), second-order by default.

    Args:
        backbone: a task-batched backbone (``medmeta.nn``); a linear head ``D -> ways``
            is added.
        ways: N.
        inner_lr: inner step size alpha.
        inner_steps: inner steps during meta-training.
        eval_steps: inner steps at test time (more than in training, as in Finn et al.).
        first_order: first-order approximation (no second derivatives).
        feature_dim / input_shape: the backbone's embedding size, or an input shape to
            probe it with (one is required).
        task: ``"classification"`` or ``"regression"`` (``ways=1``, a 1-unit head and the
            squared error; see :mod:`medmeta.algorithms.regressor`).
    """

    name = "maml"
    tasks = ("classification", "regression")

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_steps: int = 10,
        first_order: bool = False,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        task: str = "classification",
    ) -> None:
        super().__init__(
            backbone,
            ways,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_steps=eval_steps,
            first_order=first_order,
            feature_dim=feature_dim,
            input_shape=input_shape,
            task=task,
        )


@register
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, sec. 5.2): the meta-gradient is the query
    gradient at the adapted weights. ``first_order`` must stay True (use ``maml`` otherwise)."""

    name = "fomaml"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_steps: int = 10,
        first_order: bool = True,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        task: str = "classification",
    ) -> None:
        if not first_order:
            raise ValueError("fomaml is first-order; use 'maml' for second-order MAML")
        super().__init__(
            backbone,
            ways,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_steps=eval_steps,
            first_order=True,
            feature_dim=feature_dim,
            input_shape=input_shape,
            task=task,
        )
