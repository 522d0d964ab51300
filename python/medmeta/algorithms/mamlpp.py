"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML", ICLR).

Second-order MAML with the paper's stabilising changes:

1. **Multi-step loss (MSL)**: the meta-loss is a weighted sum of the query losses after every
   inner step; the weights start uniform and are annealed towards the last step over
   ``msl_steps`` meta-steps, after which only the final step's loss is used (the schedule of
   the authors' code, with meta-steps in place of epochs).
2. **Per-step per-layer learned inner rates (LSLR)**: ``lslr [inner_steps, P]``, one scalar
   rate per adapted tensor and step, initialised to ``inner_lr`` and meta-learned; applied
   with one fused :func:`medmeta.ops.inner_update` per step (one-element rate tensors).
3. **Per-step batch norm**: the batch-norm affine parameters are meta-learned separately
   for every weight version (BNWB) and not adapted in the inner loop; running statistics are
   kept per version too (BNRS). Weight version k (the fast weights after k inner steps,
   k = 0..inner_steps) uses set k: the support forward of step k+1 and the query forward
   after step k. (The authors' code indexes the query forward after step k with set k-1;
   indexing by weight version keeps each set's statistics those of one set of weights.)
   During meta-training batch norm normalises with batch statistics and always records the
   running statistics of every version. With ``bn_running_stats=True``, :meth:`predict` in
   eval mode and the deployed model normalise with the per-version running statistics, so
   queries are classified independently of each other (not transductively). It is off by
   default: a model meta-trained with per-task batch statistics learns to rely on them, and
   normalising with population statistics shifts every task's features (Bronskill et al.
   2020, "TaskNorm"); on pbc_blood it drops held-out accuracy to chance. (The authors' code
   keeps the per-step statistics but normalises with batch statistics throughout.) By
   default evaluation is transductive as in MAML, and the deployed model normalises with the
   support set's statistics.
4. **Derivative-order annealing (DA)**: first-order meta-gradients for the first
   ``first_order_steps`` meta-steps, second-order afterwards.

The meta-step counter (``meta_step``, a buffer saved with the state dict) advances in
:meth:`MAMLPlusPlus.meta_train_step`. Cosine annealing of the meta learning rate (the paper's
CA) is the optimizer's business: ``torch.optim.lr_scheduler.CosineAnnealingLR``.
Test-time steps beyond ``inner_steps`` reuse the last step's rates and batch-norm set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medmeta.algorithms._fast_weights import (
    FastWeightLearner,
    Params,
    batch_norm_layers,
    broadcast,
    query_metrics,
    support_loss,
)
from medmeta.algorithms.base import StepResult, register
from medmeta.data.episodes import EpisodeBatch
from medmeta.nn.layers import pack, unpack

BatchNormMode = Literal["batch", "record", "running"]


def msl_weights(steps: int, meta_step: int, msl_steps: int) -> list[float] | None:
    """Importance of the query loss after each inner step (Antoniou et al. 2019, sec. 4).

    Uniform at ``meta_step`` 0; non-final weights decay linearly to a floor of
    ``0.03 / steps`` and the final one grows, over ``msl_steps`` meta-steps. ``None`` from
    then on: only the final step's loss counts.
    """
    if meta_step >= msl_steps:
        return None
    decay, floor = 1.0 / steps / msl_steps, 0.03 / steps
    weights = [max(1.0 / steps - meta_step * decay, floor) for _ in range(steps - 1)]
    last = min(1.0 / steps + meta_step * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return [*weights, last]


class PerStepBatchNorm(nn.Module):
    """Per-version batch-norm affine parameters (BNWB) and running statistics (BNRS).

    For each batch-norm layer of the model (``layers``: learner-level names and modules) and
    each of ``versions`` weight versions: ``weight[i] [versions, C]``, ``bias[i]`` (from the
    layer's initial values) and buffers ``running_mean_i`` / ``running_var_i``
    ``[versions, C]``. :meth:`affine` gives a version's parameters under the layers' names;
    :meth:`normalisation` makes the layers' ``forward_tasks`` record or use a version's
    running statistics.
    """

    def __init__(
        self, layers: Sequence[tuple[str, nn.modules.batchnorm._BatchNorm]], versions: int
    ) -> None:
        super().__init__()
        self.names = [name for name, _ in layers]
        self.layers = [layer for _, layer in layers]  # not registered: owned by the backbone
        self.affine_names = [name for name, layer in layers if layer.affine]
        self.weight = nn.ParameterList(
            nn.Parameter(layer.weight.detach().repeat(versions, 1))
            for _, layer in layers
            if layer.affine
        )
        self.bias = nn.ParameterList(
            nn.Parameter(layer.bias.detach().repeat(versions, 1))
            for _, layer in layers
            if layer.affine
        )
        for i, (_, layer) in enumerate(layers):
            C = layer.num_features
            self.register_buffer(f"running_mean_{i}", torch.zeros(versions, C))
            self.register_buffer(f"running_var_{i}", torch.ones(versions, C))
        self.versions = versions

    def affine(self, version: int, tasks: int) -> Params:
        """``{layer.weight, layer.bias: [tasks, C]}`` of weight version ``version``."""
        out: Params = {}
        for name, w, b in zip(self.affine_names, self.weight, self.bias, strict=True):
            C = w.shape[1]
            out[f"{name}.weight"] = w[version].unsqueeze(0).expand(tasks, C)
            out[f"{name}.bias"] = b[version].unsqueeze(0).expand(tasks, C)
        return out

    def running_statistics(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"running_mean_{i}"), getattr(self, f"running_var_{i}")

    @contextmanager
    def normalisation(self, version: int, mode: BatchNormMode) -> Iterator[None]:
        """Within the block the layers' ``forward_tasks`` normalise with batch statistics
        (``"batch"``, unchanged), with batch statistics while recording them into
        ``version``'s running statistics (``"record"``), or with ``version``'s running
        statistics (``"running"``). Implemented by shadowing the layers' bound method."""
        if mode == "batch" or not self.layers:
            yield
            return
        for i, layer in enumerate(self.layers):
            layer.forward_tasks = self._patched(i, layer, version, mode)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward_tasks

    def _patched(self, i: int, layer: nn.Module, version: int, mode: BatchNormMode):
        mean, var = self.running_statistics(i)
        momentum = layer.momentum if layer.momentum is not None else 0.1

        def flat(params: Params, key: str) -> torch.Tensor | None:
            return None if params.get(key) is None else params[key].reshape(-1)

        def record(x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
            # The normalising pass also updates [T*C] running statistics, every task's
            # starting from the version's: their mean over tasks is the version's lerp
            # towards the tasks' mean statistics, at no extra pass over the activations.
            T = x.shape[0]
            task_mean, task_var = mean[version].repeat(T), var[version].repeat(T)
            y = F.batch_norm(pack(x), task_mean, task_var, flat(params, prefix + "weight"),
                             flat(params, prefix + "bias"), training=True, momentum=momentum,
                             eps=layer.eps)  # fmt: skip
            mean[version].copy_(task_mean.view(T, -1).mean(0))
            var[version].copy_(task_var.view(T, -1).mean(0))
            return unpack(y, T)

        def running(x: torch.Tensor, params: Params, prefix: str = "") -> torch.Tensor:
            T = x.shape[0]
            y = F.batch_norm(
                pack(x),
                mean[version].repeat(T),
                var[version].repeat(T),
                flat(params, prefix + "weight"),
                flat(params, prefix + "bias"),
                training=False,
                eps=layer.eps,
            )
            return unpack(y, T)

        return record if mode == "record" else running


@register
class MAMLPlusPlus(FastWeightLearner):
    """MAML++ (Antoniou et al. 2019); see the module docstring.

    Args:
        backbone, ways: as for MAML.
        inner_lr: initial value of the learned per-step per-layer rates.
        inner_steps: inner steps in meta-training.
        eval_steps: inner steps at test time (default ``inner_steps``, as in the paper).
        msl_steps: meta-steps over which the multi-step loss anneals to the last step.
        first_order_steps: meta-steps trained first-order before switching to second order.
        bn_running_stats: in eval mode normalise with the per-step running statistics
            (and deploy them); by default batch statistics, and the support set's statistics
            at deployment (see the module docstring).
        feature_dim / input_shape: the backbone's embedding size, or an input shape to
            probe it with.
    """

    name = "mamlpp"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_steps: int | None = None,
        msl_steps: int = 1000,
        first_order_steps: int = 1000,
        bn_running_stats: bool = False,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            backbone,
            ways,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_steps=inner_steps if eval_steps is None else eval_steps,
            first_order=False,
            feature_dim=feature_dim,
            input_shape=input_shape,
            msl_steps=int(msl_steps),
            first_order_steps=int(first_order_steps),
            bn_running_stats=bool(bn_running_stats),
        )
        del self.hparams["first_order"]  # derivative order follows first_order_steps
        self.msl_steps, self.first_order_steps = int(msl_steps), int(first_order_steps)
        self.bn_running_stats = bool(bn_running_stats)
        layers = [(f"backbone.{n}", m) for n, m in batch_norm_layers(backbone)]
        for _, layer in layers:  # replaced by the per-step copies
            for p in layer.parameters(recurse=False):
                p.requires_grad_(False)
        self._bn_param_names = {f"{n}.{k}" for n, m in layers for k, _ in m.named_parameters()}
        self.bn = PerStepBatchNorm(layers, inner_steps + 1)
        self.lslr = nn.Parameter(
            torch.full((inner_steps, len(self.adapted_names())), float(inner_lr))
        )
        self.register_buffer("meta_step", torch.zeros((), dtype=torch.long))
        self._recording = False

    # -- MAML++ pieces -----------------------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Backbone and head parameters except batch norm's (per-step, not adapted)."""
        bn = getattr(self, "_bn_param_names", set())
        return [n for n in super().adapted_names() if n not in bn]

    def inner_rate(self, step: int) -> list[torch.Tensor]:
        """Step ``step``'s learned per-layer rates: one one-element tensor per parameter."""
        return list(self.lslr[min(step, self.inner_steps - 1)].split(1))

    def _bn_version(self, version: int) -> int:
        """The batch-norm version of fast weights after ``version`` steps. (Not named
        ``_version``: that is ``nn.Module``'s state-dict format number, and a method of that
        name put a bound method into every checkpoint, which ``weights_only`` loads refuse.)"""
        return min(version, self.inner_steps)

    def forward_fast(self, x: torch.Tensor, fast: Params, version: int) -> torch.Tensor:
        """Logits with the fast weights of ``version`` and that version's batch norm."""
        v = self._bn_version(version)
        mode: BatchNormMode = "batch"
        if self._recording:
            mode = "record"
        elif self.bn_running_stats and not self.training:
            mode = "running"
        with self.bn.normalisation(v, mode):
            return self.forward_tasks(x, {**fast, **self.bn.affine(v, x.shape[0])})

    @property
    def second_order(self) -> bool:
        """Derivative-order annealing: second order once ``first_order_steps`` are done."""
        return int(self.meta_step) >= self.first_order_steps

    # -- the MetaLearner interface -------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The multi-step loss (training, while annealing) or the final query loss, and the
        final query accuracy ``[B]``. Records per-step running statistics in training mode."""
        self.check_ways(batch.ways)
        weights = msl_weights(self.inner_steps, int(self.meta_step), self.msl_steps)
        weights = weights if self.training else None
        step_losses: list[torch.Tensor] = []

        def multi_step_loss(k: int, fast: Params) -> None:
            if k < self.inner_steps:  # the last step's loss is added below
                logits = self.task_logits(batch.query_x, fast, k, batch.ways)
                step_losses.append(weights[k - 1] * support_loss(logits, batch.query_y))

        self._recording = self.training
        try:
            fast = self.inner_loop(
                broadcast(self.adapted_parameters(), batch.batch_size),
                batch.support_x,
                batch.support_y,
                self.inner_steps,
                second_order=self.second_order,
                on_step=multi_step_loss if weights is not None else None,
                n_way=batch.ways,
            )
            logits = self.task_logits(batch.query_x, fast, self.inner_steps, batch.ways)
        finally:
            self._recording = False
        loss, accuracy = query_metrics(logits, batch.query_y)
        if weights is not None:
            tasks = batch.batch_size
            earlier = torch.stack(step_losses).sum() / tasks if step_losses else 0.0  # 1 step
            loss = earlier + weights[-1] * loss
        return loss, accuracy

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> StepResult:
        """One meta-update; advances the MSL / derivative-order schedules."""
        second_order = self.second_order
        result = super().meta_train_step(batch, optimizer)
        self.meta_step += 1
        result.extra["second_order"] = float(second_order)
        return result

    # -- deployment ------------------------------------------------------------------------------
    def single_task_model(self, weights: Params, version: int) -> nn.Sequential:
        """The adapted weights plus batch-norm affine parameters of the final version."""
        affine = {k: v[0] for k, v in self.bn.affine(self._bn_version(version), 1).items()}
        return super().single_task_model({**weights, **affine}, version)

    def set_deployment_statistics(self, net: nn.Module, support_x: torch.Tensor) -> None:
        """The final version's running statistics with ``bn_running_stats``, else the
        support set's (see :meth:`FastWeightLearner.adapt`)."""
        if not self.bn_running_stats:
            super().set_deployment_statistics(net, support_x)
            return
        v = self._bn_version(self.eval_steps)
        layers = dict(net.named_modules())
        with torch.no_grad():
            for i, name in enumerate(self.bn.names):
                mean, var = self.bn.running_statistics(i)
                layer = layers[name]
                layer.running_mean.copy_(mean[v])
                layer.running_var.copy_(var[v])
