"""Task-batched fast weights: the inner loop shared by the MAML family.

MAML (Finn et al. 2017), first-order MAML, Reptile (Nichol et al. 2018), Meta-SGD (Li et al.
2017), ANIL (Raghu et al. 2020) and MAML++ (Antoniou et al. 2019) all adapt a copy of the
model's weights to each task with a few gradient steps on its support set. Here the B tasks
of a meta-batch are adapted *together*:

* the fast weights are a dict ``name -> [B, *param.shape]`` (one slice per task), starting
  as broadcast views of the meta-parameters, so gradients flow back to them summed over
  tasks;
* the model runs all tasks in one call with ``forward_tasks`` (grouped convolutions, batch
  norm statistics computed per task exactly; see :mod:`medmeta.nn.layers`). This batching is
  differentiable to any order with plain autograd, unlike ``torch.func.vmap`` through batch
  norm (pytorch/functorch#534);
* the inner loss is the *sum* over tasks of each task's mean cross-entropy, so one
  ``torch.autograd.grad`` call gives every task its own gradient;
* one fused :func:`medmeta.ops.inner_update` call steps every tensor of every task.

There is no per-task Python loop. Second-order meta-gradients build the inner gradients with
``create_graph=True``; first-order ones use plain (detached) inner gradients, so the
meta-gradient is the query gradient at the adapted weights. At test time the adaptation
runs without a graph and updates in place (:func:`medmeta.ops.inner_update_`).

Fewer ways than the head has: an n-way task (n <= ``ways``) uses the head's first n outputs
(:meth:`FastWeightLearner.task_logits`), in the inner loop, for the queries and in the
deployed model (whose head keeps the first n rows), so logits are always ``[..., n]``; the
other rows get no gradient and are left as they are. Class slots are interchangeable (the
episode sampler permutes classes), so any n of them serve. More ways than ``ways`` are
refused.

Regression (``task="regression"``, ``ways=1``; see :mod:`medmeta.algorithms.regressor`): the
head has one output, the inner and outer losses are the mean squared error on targets
standardised with each support set's statistics (:func:`regression_support_loss`,
:func:`regression_query_metrics`), :meth:`FastWeightLearner.predict` returns ``[B, Q]``
predictions in the targets' units and :meth:`FastWeightLearner.adapt` an
:class:`~medmeta.algorithms.regressor.AdaptedRegressor`.

Batch norm is transductive during meta-training and in :meth:`FastWeightLearner.predict`
(statistics of the batch being normalised, per task, as in MAML). A model returned by
:meth:`FastWeightLearner.adapt` runs in eval mode with running statistics set to the
support set's batch statistics, so it classifies single images, and on the support set it
gives exactly what the batched model gives.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner
from medmeta.algorithms.regressor import (
    AdaptedRegressor,
    check_regression_episode,
    check_regression_task,
    check_targets,
    r2_per_task,
)
from medmeta.data.episodes import EpisodeBatch
from medmeta.data.regression_tasks import standardise, support_statistics, unstandardise
from medmeta.nn.backbones import embedding_dim
from medmeta.nn.layers import Linear

Params = dict[str, torch.Tensor]
LearningRate = float | list[torch.Tensor]
StepCallback = Callable[[int, Params], None]


# ------------------------------------------------------------------------------ losses


def support_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of each task's mean cross-entropy.

    ``logits [T, n, N]``, ``labels [T, n]`` -> a scalar whose gradient with respect to task
    t's fast weights is task t's own mean-loss gradient (the tasks do not interact).
    """
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return flat / labels.shape[1]


def query_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over tasks of the mean cross-entropy (scalar), accuracy per task ``[T]``)."""
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    accuracy = (logits.detach().argmax(-1) == labels).float().mean(1)
    return loss, accuracy


def regression_support_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of each task's mean squared error: ``outputs [T, n, 1]``, ``targets
    [T, n]`` -> a scalar (task t's gradient is its own mean-loss gradient, as in
    :func:`support_loss`)."""
    return (outputs[..., 0] - targets).pow(2).mean(1).sum()


def regression_query_metrics(
    outputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over tasks of the mean squared error (scalar), R² per task ``[T]``, 0 where
    the query targets are constant)."""
    loss = (outputs[..., 0] - targets).pow(2).mean()
    r2 = torch.nan_to_num(r2_per_task(outputs.detach()[..., 0], targets), nan=0.0)
    return loss, r2


# ------------------------------------------------------------------------------ helpers


def head_input_dim(
    backbone: nn.Module, feature_dim: int | None, input_shape: Sequence[int] | None
) -> int:
    """The embedding size of ``backbone``: ``feature_dim`` or probed with ``input_shape``."""
    if feature_dim is not None:
        return int(feature_dim)
    if input_shape is None:
        raise ValueError(
            "the MAML family needs the backbone's embedding size for its linear head: "
            "pass input_shape=[C, H, W] (or [F], [C, L]) or feature_dim=D"
        )
    return embedding_dim(backbone, tuple(int(s) for s in input_shape))


@torch.no_grad()
def first_outputs(head: Linear, n: int) -> Linear:
    """A copy of ``head`` keeping its first ``n`` outputs (rows)."""
    sliced = Linear(head.in_features, n, bias=head.bias is not None).to(head.weight)
    sliced.weight.copy_(head.weight[:n])
    if head.bias is not None:
        sliced.bias.copy_(head.bias[:n])
    return sliced


def broadcast(params: Params, tasks: int) -> Params:
    """``name -> [tasks, *shape]`` views of ``params`` (gradients sum back over tasks)."""
    return {k: p.unsqueeze(0).expand(tasks, *p.shape) for k, p in params.items()}


def detached_copies(params: Params, tasks: int) -> Params:
    """Contiguous ``[tasks, *shape]`` leaf copies that require grad (test-time fast weights)."""
    return {
        k: p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())).requires_grad_()
        for k, p in params.items()
    }


def batch_norm_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The ``(name, layer)`` of every batch-norm layer of ``module``."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@torch.no_grad()
def set_batch_norm_statistics(net: nn.Module, x: torch.Tensor) -> None:
    """Set every batch-norm layer's running statistics to those of the batch ``x [n, ...]``.

    The mean and the *biased* variance of each layer's input (what batch norm normalises
    with in training mode) become ``running_mean`` / ``running_var``, so in eval mode ``net``
    gives on ``x`` exactly its training-mode output, and it can classify one input at a time.
    Layers are calibrated in order during one eval-mode forward pass.
    """

    def calibrate(layer: nn.modules.batchnorm._BatchNorm, inputs: tuple[torch.Tensor]) -> None:
        h = inputs[0]
        dims = [0, *range(2, h.dim())]
        layer.running_mean.copy_(h.mean(dims))
        layer.running_var.copy_(h.var(dims, unbiased=False))

    hooks = [
        layer.register_forward_pre_hook(calibrate)
        for _, layer in batch_norm_layers(net)
        if layer.track_running_stats
    ]
    was_training = net.training
    try:
        net.eval()
        net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)


# ------------------------------------------------------------------------------ base class


class FastWeightLearner(MetaLearner):
    """Base of the MAML family: a backbone plus a task-batched linear head, adapted per task.

    The model is ``head(backbone(x))`` with ``head = medmeta.nn.layers.Linear(D, ways)``;
    parameters are named ``backbone.*`` and ``head.*``. Subclasses choose which parameters
    the inner loop adapts (:meth:`adapted_names`), the inner learning rate of each step
    (:meth:`inner_rate`), and may add per-step parameters to the forward
    (:meth:`forward_fast`).

    Hyper-parameters (all keyword):
        inner_lr: inner-loop step size alpha (MAML) or its initial value (learned rates).
        inner_steps: inner steps during meta-training.
        eval_steps: inner steps at test time (:meth:`predict`, :meth:`adapt`).
        first_order: drop the second-order terms (first-order MAML).
        feature_dim / input_shape: the backbone's embedding size D, or an input shape
            (no batch axis) to probe it with; one is required.
        task: ``"classification"`` (default) or, for the methods listing it in ``tasks``,
            ``"regression"`` (needs ``ways=1``; stored in ``hparams`` only then).
    """

    fixed_ways = True
    shape_hparams = ("feature_dim", "input_shape")

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        inner_lr: float,
        inner_steps: int,
        eval_steps: int,
        first_order: bool,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        task: str = "classification",
        **hparams: Any,
    ) -> None:
        if inner_steps < 1 or eval_steps < 1:
            raise ValueError(
                f"inner_steps and eval_steps must be >= 1, got {inner_steps}, {eval_steps}"
            )
        if task not in type(self).tasks:
            raise ValueError(f"{self.name} supports task in {type(self).tasks}, got {task!r}")
        if task == "regression" and ways != 1:
            raise ValueError(
                f"{self.name} regression predicts one target (a 1-unit output layer): build it "
                f"with ways=1, got ways={ways}"
            )
        if task != "classification":
            hparams = {"task": task, **hparams}
        super().__init__(
            backbone,
            ways,
            inner_lr=float(inner_lr),
            inner_steps=int(inner_steps),
            eval_steps=int(eval_steps),
            first_order=bool(first_order),
            feature_dim=None if feature_dim is None else int(feature_dim),
            input_shape=None if input_shape is None else [int(s) for s in input_shape],
            **hparams,
        )
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_steps = int(eval_steps)
        self.first_order = bool(first_order)
        self.task = task
        self.head = Linear(head_input_dim(backbone, feature_dim, input_shape), ways)

    # -- the model ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-task logits ``[n, N]`` with the meta-parameters (no adaptation)."""
        return self.head(self.backbone(x))

    def forward_tasks(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Logits ``[T, n, N]`` of ``x [T, n, ...]`` with per-task ``params [T, ...]``."""
        features = self.backbone.forward_tasks(x, params, "backbone.")
        return self.head.forward_tasks(features, params, "head.")

    def forward_fast(self, x: torch.Tensor, fast: Params, version: int) -> torch.Tensor:
        """Logits ``[T, n, N]`` with fast weights after ``version`` inner steps."""
        return self.forward_tasks(x, fast)

    def task_logits(
        self, x: torch.Tensor, fast: Params, version: int, n_way: int | None
    ) -> torch.Tensor:
        """:meth:`forward_fast` for ``n_way``-way tasks: the first ``n_way`` outputs
        ``[T, n, n_way]`` (all ``ways`` of them when ``None``)."""
        logits = self.forward_fast(x, fast, version)
        return logits if n_way is None or n_way == logits.shape[-1] else logits[..., :n_way]

    def adapted_names(self) -> list[str]:
        """Names of the parameters the inner loop adapts (default: backbone and head)."""
        return [n for n, _ in self.named_parameters() if n.startswith(("backbone.", "head."))]

    def adapted_parameters(self) -> Params:
        named = dict(self.named_parameters())
        return {n: named[n] for n in self.adapted_names()}

    def task_inputs(
        self, support_x: torch.Tensor, query_x: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What :meth:`forward_fast` consumes: the inputs themselves (ANIL: body features)."""
        return support_x, query_x

    def inner_rate(self, step: int) -> LearningRate:
        """The inner learning rate of step ``step`` (a float or one tensor per parameter)."""
        return self.inner_lr

    def check_ways(self, n: int) -> None:
        """Refuse ``n``-way episodes the head cannot take (a regressor takes only 1)."""
        if self.task == "regression" and n != 1:
            raise ValueError(
                f"{self.name} is a regression learner (one target per episode): ways must "
                f"be 1, got {n}"
            )
        super().check_ways(n)

    # -- the losses --------------------------------------------------------------------
    def inner_objective(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The support loss summed over tasks: cross-entropy, or the squared error."""
        if self.task == "regression":
            return regression_support_loss(outputs, targets)
        return support_loss(outputs, targets)

    def query_objective(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query loss, score per task ``[T]``): accuracy, or R² for regression."""
        if self.task == "regression":
            return regression_query_metrics(outputs, targets)
        return query_metrics(outputs, targets)

    def episode_targets(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query targets as the losses take them: the labels, or for regression
        the targets standardised with each support set's mean and scale."""
        if self.task != "regression":
            return batch.support_y, batch.query_y
        check_targets(self.name, "support_y", batch.support_y)
        mean, scale = support_statistics(batch.support_y)
        return standardise(batch.support_y, mean, scale), standardise(batch.query_y, mean, scale)

    # -- the inner loop ------------------------------------------------------------------
    def inner_loop(
        self,
        fast: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        *,
        second_order: bool,
        on_step: StepCallback | None = None,
        n_way: int | None = None,
    ) -> Params:
        """``steps`` differentiable inner steps for all tasks at once.

        Args:
            fast: fast weights ``name -> [T, ...]`` (e.g. :func:`broadcast` meta-parameters).
            x, y: support inputs ``[T, S, ...]`` and labels ``[T, S]``.
            second_order: build the inner gradients with ``create_graph=True``.
            on_step: called as ``on_step(k, fast)`` after step k = 1..steps.
            n_way: N of the tasks (default ``ways``; see :meth:`task_logits`).

        Returns:
            The adapted fast weights ``name -> [T, ...]``, differentiable in the
            meta-parameters (and in learned inner rates).
        """
        names = list(fast)
        for step in range(steps):
            loss = self.inner_objective(self.task_logits(x, fast, step, n_way), y)
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=second_order, materialize_grads=True
            )
            updated = ops.inner_update(list(fast.values()), list(grads), self.inner_rate(step))
            fast = dict(zip(names, updated, strict=True))
            if on_step is not None:
                on_step(step + 1, fast)
        return fast

    def adapt_detached(
        self, x: torch.Tensor, y: torch.Tensor, steps: int, n_way: int | None = None
    ) -> Params:
        """Test-time (and Reptile) adaptation: first-order, no graph to the meta-parameters,
        updated in place with :func:`medmeta.ops.inner_update_`. Returns detached fast
        weights ``name -> [T, ...]`` for ``x [T, S, ...]``, ``y [T, S]`` of ``n_way``-way
        tasks (default ``ways``). Gradients are enabled inside, also under
        ``torch.no_grad`` or ``torch.inference_mode``."""
        with torch.inference_mode(False), torch.enable_grad():
            x, y = (t.clone() if t.is_inference() else t for t in (x, y))
            fast = detached_copies(self.adapted_parameters(), x.shape[0])
            leaves = list(fast.values())
            for step in range(steps):
                loss = self.inner_objective(self.task_logits(x, fast, step, n_way), y)
                grads = torch.autograd.grad(loss, leaves, materialize_grads=True)
                rate = self.inner_rate(step)
                if not isinstance(rate, float):
                    rate = [a.detach() for a in rate]
                with torch.no_grad():
                    ops.inner_update_(leaves, list(grads), rate)
        return {k: v.detach() for k, v in fast.items()}

    # -- the MetaLearner interface --------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query cross-entropy after ``inner_steps`` inner steps on each support set
        (MAML's meta-objective, Finn et al. 2017, eq. 1) and the query accuracy ``[B]``;
        for regression the mean squared error of the standardised query targets and the
        query R² ``[B]``."""
        self.check_ways(batch.ways)
        support_y, query_y = self.episode_targets(batch)
        support, query = self.task_inputs(batch.support_x, batch.query_x)
        fast = broadcast(self.adapted_parameters(), batch.batch_size)
        fast = self.inner_loop(
            fast, support, support_y, self.inner_steps,
            second_order=not self.first_order, n_way=batch.ways,
        )  # fmt: skip
        logits = self.task_logits(query, fast, self.inner_steps, batch.ways)
        return self.query_objective(logits, query_y)

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Query logits ``[B, Q, N]`` after ``eval_steps`` steps on each support set (N from
        the support labels, at most ``ways``).

        Adaptation needs gradients, so it runs under ``torch.enable_grad`` even when called
        under ``torch.no_grad``; no graph to the meta-parameters is built. Logits are detached.

        Regression: predictions ``[B, Q]`` in the units of ``support_y [B, K]`` (float).
        """
        if self.task == "regression":
            return self.predict_regression(support_x, support_y, query_x)
        n_way = self.task_ways(support_y)
        with torch.no_grad():
            support, query = self.task_inputs(support_x, query_x)
        fast = self.adapt_detached(support, support_y, self.eval_steps, n_way)
        with torch.no_grad():
            return self.task_logits(query, fast, self.eval_steps, n_way)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted | AdaptedRegressor:
        """A stand-alone classifier for one task (``support_x [S, ...]``, ``support_y [S]``).

        A plain copy of backbone and head (``nn.Sequential`` with children ``backbone`` and
        ``head``) with the weights after ``eval_steps`` steps, in eval mode. Batch norm at
        deployment: its running statistics are set to the support set's batch statistics
        (:func:`set_batch_norm_statistics`), so single inputs can be classified, and on the
        support set the output equals :meth:`predict` with ``query_x = support_x``. For an
        n-way support set with n < ``ways`` the deployed head keeps the first n rows.

        Regression: an :class:`~medmeta.algorithms.regressor.AdaptedRegressor` (the same
        network, mapping back to the units of ``support_y``).
        """
        if self.task == "regression":
            return self.adapt_regression(support_x, support_y)
        n_way = self.task_ways(support_y)
        with torch.no_grad():
            support, _ = self.task_inputs(support_x.unsqueeze(0), None)
        fast = self.adapt_detached(support, support_y.unsqueeze(0), self.eval_steps, n_way)
        net = self.single_task_model({k: v[0] for k, v in fast.items()}, self.eval_steps)
        self.set_deployment_statistics(net, support_x)
        if n_way < self.ways:
            net.head = first_outputs(net.head, n_way)
        return Adapted(net, n_way).eval()

    # -- regression ------------------------------------------------------------------------
    def predict_regression(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Query predictions ``[B, Q]`` after ``eval_steps`` steps on each support set's
        standardised targets, mapped back to the targets' units (detached)."""
        check_regression_episode(self.name, support_x, support_y, query_x)
        mean, scale = support_statistics(support_y)
        with torch.no_grad():
            support, query = self.task_inputs(support_x, query_x)
        fast = self.adapt_detached(support, standardise(support_y, mean, scale), self.eval_steps, 1)
        with torch.no_grad():
            out = self.task_logits(query, fast, self.eval_steps, 1)[..., 0]
            return unstandardise(out, mean, scale)

    def adapt_regression(
        self, support_x: torch.Tensor, support_y: torch.Tensor
    ) -> AdaptedRegressor:
        """A stand-alone regressor for one task (``support_x [K, ...]``, ``support_y [K]``)."""
        check_regression_task(self.name, support_x, support_y)
        mean, scale = support_statistics(support_y)
        with torch.no_grad():
            support, _ = self.task_inputs(support_x.unsqueeze(0), None)
        z = standardise(support_y, mean, scale).unsqueeze(0)
        fast = self.adapt_detached(support, z, self.eval_steps, 1)
        net = self.single_task_model({k: v[0] for k, v in fast.items()}, self.eval_steps)
        self.set_deployment_statistics(net, support_x)
        return AdaptedRegressor(net, mean, scale).eval()

    # -- deployment helpers ----------------------------------------------------------------
    def single_task_model(self, weights: Params, version: int) -> nn.Sequential:
        """A detached ``Sequential(backbone, head)`` copy with ``weights`` loaded."""
        net = nn.Sequential(
            OrderedDict(backbone=copy.deepcopy(self.backbone), head=copy.deepcopy(self.head))
        )
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name in weights:
                    p.copy_(weights[name])
        return net

    def set_deployment_statistics(self, net: nn.Module, support_x: torch.Tensor) -> None:
        """Batch-norm statistics of the deployed model: the support set's (see :meth:`adapt`)."""
        set_batch_norm_statistics(net, support_x)
