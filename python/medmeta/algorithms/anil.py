"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or
Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR).

Only the linear head is adapted in the inner loop; the body (backbone) is meta-learned but
fixed within a task. The body's features of every task's support and query sets are computed
once per meta-batch (one backbone forward over all tasks), and the head's inner loop runs on
those features, which is much cheaper than MAML. The meta-gradient is second-order through
the head's inner steps and reaches the body through both the support features (which shape
the adapted head) and the query features.

Batch norm in the body uses each task's statistics over its support and query inputs
together (the one forward sees both), per task exactly; at deployment (:meth:`adapt`) the
support set's statistics. :meth:`predict` with ``query_x = support_x`` therefore equals the
adapted model on the support set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmeta.algorithms._fast_weights import FastWeightLearner, Params, batch_norm_layers, broadcast
from medmeta.algorithms.base import register


@register
class ANIL(FastWeightLearner):
    """ANIL (Raghu et al. 2020): MAML with only the head adapted.

    Args:
        backbone, ways: as for MAML.
        inner_lr: inner step size of the head.
        inner_steps / eval_steps: head steps in meta-training / at test time.
        first_order: drop second-order terms.
        feature_dim / input_shape: the backbone's embedding size, or an input shape to
            probe it with.
    """

    name = "anil"

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
        )
        self._per_task_statistics = bool(batch_norm_layers(backbone))

    def adapted_names(self) -> list[str]:
        """Only the head is adapted."""
        return [n for n, _ in self.named_parameters() if n.startswith("head.")]

    def task_inputs(
        self, support_x: torch.Tensor, query_x: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Body features ``[B, S, D]`` and ``[B, Q, D]`` from one backbone forward.

        With batch norm the forward is task-batched (statistics per task over its support
        and query inputs); without, one plain forward over all ``B * (S + Q)`` inputs.
        """
        B, S = support_x.shape[:2]
        x = support_x if query_x is None else torch.cat([support_x, query_x], 1)
        if self._per_task_statistics:
            body = broadcast(dict(self.backbone.named_parameters()), B)
            features = self.backbone.forward_tasks(x, body)
        else:
            features = self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return features[:, :S], (None if query_x is None else features[:, S:])

    def forward_fast(self, x: torch.Tensor, fast: Params, version: int) -> torch.Tensor:
        """Head logits ``[T, n, N]`` of body features ``x [T, n, D]``."""
        return self.head.forward_tasks(x, fast, "head.")
