"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task of the meta-batch is trained from theta with ``inner_steps`` steps of SGD on its
support set, giving phi_t, and theta moves towards the adapted weights::

    theta <- theta + epsilon * mean_t (phi_t - theta)

Here the meta-step is taken by the caller's optimizer on the pseudo-gradient
``theta - mean_t phi_t``: with ``torch.optim.SGD(lr=epsilon)`` that is exactly the update
above (the batched version of Nichol et al., Algorithm 2); with Adam it is the common
adaptive variant (the scale of the pseudo-gradient then does not matter). Going through the
optimizer keeps schedulers, gradient clipping and checkpointed optimizer state working as for
every other method. The inner loop adapts all tasks at once, in place, without autograd
graphs to theta (:meth:`FastWeightLearner.adapt_detached`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmeta.algorithms._fast_weights import FastWeightLearner
from medmeta.algorithms.base import StepResult, register
from medmeta.data.episodes import EpisodeBatch


@register
class Reptile(FastWeightLearner):
    """Reptile (Nichol et al. 2018).

    Args:
        backbone, ways: as for MAML.
        inner_lr: inner SGD step size.
        inner_steps: inner SGD steps per task in meta-training (Reptile needs several: with
            one step it reduces to joint training).
        eval_steps: inner steps at test time.
        feature_dim / input_shape: the backbone's embedding size, or an input shape to
            probe it with.
        task: ``"classification"`` or ``"regression"`` (``ways=1``; the inner SGD then
            minimises the squared error, as in Nichol et al.'s sine-wave experiments).

    ``meta_train_step`` implements the Reptile update; ``meta_loss`` (first-order MAML's
    query loss after ``inner_steps`` steps) is for reporting and validation only.
    """

    name = "reptile"
    tasks = ("classification", "regression")

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_steps: int = 10,
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
            first_order=True,
            feature_dim=feature_dim,
            input_shape=input_shape,
            task=task,
        )
        del self.hparams["first_order"]  # not a Reptile hyper-parameter (always first-order)

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> StepResult:
        """Adapt every task on its support set, then step theta along ``mean_t phi_t - theta``.

        The reported loss and accuracy are those of the adapted weights on the queries
        (computed before the meta-step, at no extra inner-loop cost); for regression the
        squared error of the standardised query targets and the query R².
        """
        self.train()
        self.check_ways(batch.ways)
        support_y, query_y = self.episode_targets(batch)
        fast = self.adapt_detached(batch.support_x, support_y, self.inner_steps, batch.ways)
        with torch.no_grad():
            logits = self.task_logits(batch.query_x, fast, self.inner_steps, batch.ways)
            loss, accuracy = self.query_objective(logits, query_y)
        optimizer.zero_grad(set_to_none=True)
        for name, theta in self.adapted_parameters().items():
            theta.grad = theta.detach() - fast[name].mean(0)
        optimizer.step()
        return StepResult(float(loss), float(accuracy.mean()))
