"""The MAML family written the ways a user could write it in PyTorch, beside medmeta's
task-batched implementation: shared by the gradient-correctness suite
(:mod:`benchmarks.maml_gradients`) and the throughput suite (:mod:`benchmarks.algorithms`).

Every formulation maps ``(learner, batch)`` -- a medmeta learner (its meta-parameters,
hyper-parameters and modules are reused, never its task-batched code path) and an
:class:`~medmeta.data.episodes.EpisodeBatch` of B tasks -- to the meta-gradient of one
meta-batch: ``{parameter name of the learner: gradient}``, summed over the tasks as
``autograd`` would accumulate it. The second-order MAML ones keep the historical signature
``(learner, batch, steps, lr)`` of :mod:`benchmarks.maml_gradients`.

* per-task loops (``torch.func.functional_call`` + ``torch.autograd.grad``, one task at a
  time): MAML (Finn et al. 2017), first-order MAML, Reptile (Nichol et al. 2018), Meta-SGD
  (Li et al. 2017), ANIL (Raghu et al. 2020), MAML++ (Antoniou et al. 2019);
* ``torch.func.vmap`` over tasks (MAML; wrong with batch norm, pytorch/functorch#534);
* peers, each only where it imports: learn2learn (``MAML`` second- and first-order,
  ``MetaSGD``, ANIL as its ``MAML`` wrapper on the head), higher and TorchOpt (MAML).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from medmeta.algorithms._fast_weights import FastWeightLearner
from medmeta.algorithms.maml import MAML
from medmeta.algorithms.mamlpp import msl_weights
from medmeta.data.episodes import EpisodeBatch

Grads = dict[str, torch.Tensor]
TaskLoss = Callable[[int], torch.Tensor]


def _plain_model(learner: FastWeightLearner) -> nn.Sequential:
    """The learner's backbone and head as one module with the learner's parameter names."""
    return nn.Sequential(OrderedDict(backbone=learner.backbone, head=learner.head))


# ----------------------------------------------------------------------------- second-order MAML


def medmeta_batched(learner: MAML, batch: EpisodeBatch, steps: int, lr: float) -> Grads:
    loss, _ = learner.meta_loss(batch)
    params = dict(learner.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


def per_task_loop(learner: MAML, batch: EpisodeBatch, steps: int, lr: float) -> Grads:
    """The reference: ``functional_call`` + ``autograd.grad(create_graph=True)`` per task."""
    model = _plain_model(learner)
    theta = dict(model.named_parameters())

    def task_loss(t: int) -> torch.Tensor:
        def forward(p: Grads, x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, p, (x,))

        fast = _sgd_steps(forward, theta, batch.support_x[t], batch.support_y[t], steps,
                          lambda _step, _i: lr, second_order=True)  # fmt: skip
        return F.cross_entropy(forward(fast, batch.query_x[t]), batch.query_y[t])

    return _sum_task_grads(model, batch.batch_size, task_loss)


def vmap_model(learner: MAML) -> nn.Module:
    """A copy of the learner's model whose batch norms keep no running statistics (vmap
    cannot update them); :func:`func_vmap` gives it the live parameters."""
    model = copy.deepcopy(_plain_model(learner))
    torch.func.replace_all_batch_norm_modules_(model)
    return model


def func_vmap(
    learner: MAML, batch: EpisodeBatch, steps: int, lr: float, model: nn.Module | None = None
) -> Grads:
    """``torch.func.vmap`` over tasks; ``model``: :func:`vmap_model` of the learner, made
    once by a caller that times this function."""
    model = vmap_model(learner) if model is None else model
    theta = {k: v.detach() for k, v in _plain_model(learner).named_parameters()}

    def task_loss(params: Grads, x_s, y_s, x_q, y_q) -> torch.Tensor:
        def support(p: Grads) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, p, (x_s,)), y_s)

        fast = params
        for _ in range(steps):
            g = torch.func.grad(support)(fast)
            fast = {k: fast[k] - lr * g[k] for k in fast}
        return F.cross_entropy(functional_call(model, fast, (x_q,)), y_q)

    def meta_loss(params: Grads) -> torch.Tensor:
        losses = torch.func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(
            params, batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        return losses.mean()

    return torch.func.grad(meta_loss)(theta)


def learn2learn_maml(
    learner: MAML, batch: EpisodeBatch, steps: int, lr: float, first_order: bool = False
) -> Grads:
    import learn2learn as l2l

    model = _plain_model(learner)
    maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)

    def task_loss(t: int) -> torch.Tensor:
        clone = maml.clone()
        for _ in range(steps):
            clone.adapt(F.cross_entropy(clone(batch.support_x[t]), batch.support_y[t]))
        return F.cross_entropy(clone(batch.query_x[t]), batch.query_y[t])

    return _sum_task_grads(model, batch.batch_size, task_loss)


def higher_maml(learner: MAML, batch: EpisodeBatch, steps: int, lr: float) -> Grads:
    import higher

    model = _plain_model(learner)
    inner = torch.optim.SGD(model.parameters(), lr=lr)

    def task_loss(t: int) -> torch.Tensor:
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
            return F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t])

    return _sum_task_grads(model, batch.batch_size, task_loss)


def torchopt_maml(learner: MAML, batch: EpisodeBatch, steps: int, lr: float) -> Grads:
    import torchopt

    model = _plain_model(learner)
    names = [k for k, _ in model.named_parameters()]
    sgd = torchopt.sgd(lr)

    def task_loss(t: int) -> torch.Tensor:
        params = tuple(p for _, p in model.named_parameters())
        state = sgd.init(params)
        for _ in range(steps):
            logits = functional_call(
                model, dict(zip(names, params, strict=True)), (batch.support_x[t],)
            )
            loss = F.cross_entropy(logits, batch.support_y[t])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            updates, state = sgd.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        logits = functional_call(model, dict(zip(names, params, strict=True)), (batch.query_x[t],))
        return F.cross_entropy(logits, batch.query_y[t])

    return _sum_task_grads(model, batch.batch_size, task_loss)


# ----------------------------------------------------------------------------- the other loops


def _sum_task_grads(learner: nn.Module, tasks: int, task_loss: TaskLoss) -> Grads:
    """Sum over tasks of the gradients of ``task_loss(t) / tasks`` with respect to every
    trainable parameter of ``learner`` (one ``autograd.grad`` per task, so each task's graph
    is freed before the next is built, as in a training loop calling ``backward`` per task)."""
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for t in range(tasks):
        grads = torch.autograd.grad(task_loss(t) / tasks, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                total[k] += g
    return total


def _sgd_steps(
    forward: Callable[[Grads, torch.Tensor], torch.Tensor],
    params: Grads,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    rate: Callable[[int, int], float | torch.Tensor],
    second_order: bool,
    on_step: Callable[[int, Grads], None] | None = None,
) -> Grads:
    """``steps`` SGD steps of one task: ``p <- p - rate(step, i) * grad_i`` on the cross-entropy
    of ``forward(params, x)``; differentiable in ``params`` (through the gradients too when
    ``second_order``). ``on_step(k, fast)`` is called after step k = 1..steps."""
    fast = dict(params)
    for step in range(steps):
        loss = F.cross_entropy(forward(fast, x), y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
        fast = {
            k: p - rate(step, i) * g
            for i, ((k, p), g) in enumerate(zip(fast.items(), grads, strict=True))
        }
        if on_step is not None:
            on_step(step + 1, fast)
    return fast


def fomaml_loop(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """First-order MAML (Finn et al. 2017, sec. 5.2), one task at a time: the inner
    gradients are constants, so the meta-gradient is the query gradient at the adapted
    weights."""
    model = _plain_model(learner)
    theta = dict(model.named_parameters())
    lr = learner.inner_lr

    def task_loss(t: int) -> torch.Tensor:
        fast = _sgd_steps(
            lambda p, x: functional_call(model, p, (x,)),
            theta,
            batch.support_x[t],
            batch.support_y[t],
            learner.inner_steps,
            lambda step, i: lr,
            second_order=False,
        )
        return F.cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])

    return _sum_task_grads(learner, batch.batch_size, task_loss)


def reptile_loop(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """Reptile (Nichol et al. 2018), one task at a time: ``inner_steps`` SGD steps from
    theta on the support set (in place, no graph to theta), the query loss of the adapted
    weights for reporting (as medmeta's step computes it), and the pseudo-gradient
    ``theta - mean_t phi_t``."""
    model = _plain_model(learner)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    phi_sum = {k: torch.zeros_like(p) for k, p in theta.items()}
    for t in range(batch.batch_size):
        fast = {k: p.clone().requires_grad_() for k, p in theta.items()}
        leaves = list(fast.values())
        for _ in range(learner.inner_steps):
            logits = functional_call(model, fast, (batch.support_x[t],))
            grads = torch.autograd.grad(F.cross_entropy(logits, batch.support_y[t]), leaves)
            with torch.no_grad():
                torch._foreach_add_(leaves, grads, alpha=-learner.inner_lr)
        with torch.no_grad():
            F.cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
            torch._foreach_add_(list(phi_sum.values()), leaves)
    return {k: theta[k] - phi_sum[k] / batch.batch_size for k in theta}


def metasgd_loop(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """Meta-SGD (Li et al. 2017), one task at a time: per-element learned rates
    ``learner.alpha`` (meta-parameters too), second order unless ``first_order``."""
    model = _plain_model(learner)
    theta = dict(model.named_parameters())
    alpha = list(learner.alpha)

    def task_loss(t: int) -> torch.Tensor:
        fast = _sgd_steps(
            lambda p, x: functional_call(model, p, (x,)),
            theta,
            batch.support_x[t],
            batch.support_y[t],
            learner.inner_steps,
            lambda step, i: alpha[i],
            second_order=not learner.first_order,
        )
        return F.cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])

    return _sum_task_grads(learner, batch.batch_size, task_loss)


def body_features(
    learner: nn.Module, batch: EpisodeBatch, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task t's support ``[S, D]`` and query ``[Q, D]`` features from one backbone forward
    over both (batch norm statistics of the task's support and query inputs together, as
    medmeta's ANIL and its metric learners)."""
    S = batch.support_x.shape[1]
    features = learner.backbone(torch.cat([batch.support_x[t], batch.query_x[t]]))
    return features[:S], features[S:]


def anil_loop(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """ANIL (Raghu et al. 2020), one task at a time: body features once, then the head's
    inner steps (second order unless ``first_order``)."""
    head = learner.head
    theta = dict(head.named_parameters())
    lr = learner.inner_lr

    def task_loss(t: int) -> torch.Tensor:
        support, query = body_features(learner, batch, t)
        fast = _sgd_steps(
            lambda p, x: functional_call(head, p, (x,)),
            theta,
            support,
            batch.support_y[t],
            learner.inner_steps,
            lambda step, i: lr,
            second_order=not learner.first_order,
        )
        return F.cross_entropy(functional_call(head, fast, (query,)), batch.query_y[t])

    return _sum_task_grads(learner, batch.batch_size, task_loss)


def mamlpp_loop(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """MAML++ (Antoniou et al. 2019), one task at a time, as ``meta_train_step`` does it:
    per-step per-layer learned rates ``lslr``, per-version batch-norm affine parameters,
    the multi-step loss while it anneals, derivative order by ``meta_step``; advances
    ``meta_step`` like the learner's step. (It does not record the per-version running
    statistics, which only an eval-mode ``bn_running_stats`` learner uses.)"""
    model = _plain_model(learner)
    names = learner.adapted_names()
    named = dict(learner.named_parameters())
    theta = {k: named[k] for k in names}
    steps = learner.inner_steps
    weights = msl_weights(steps, int(learner.meta_step), learner.msl_steps)
    bn = learner.bn

    def version(v: int) -> Grads:
        out: Grads = {}
        for layer, w, b in zip(bn.affine_names, bn.weight, bn.bias, strict=True):
            out[f"{layer}.weight"], out[f"{layer}.bias"] = w[v], b[v]
        return out

    def forward(p: Grads, x: torch.Tensor, v: int) -> torch.Tensor:
        return functional_call(model, {**p, **version(v)}, (x,))

    def task_loss(t: int) -> torch.Tensor:
        x_q, y_q = batch.query_x[t], batch.query_y[t]
        step_losses: list[torch.Tensor] = []
        fast = dict(theta)
        for k in range(steps):
            loss = F.cross_entropy(forward(fast, batch.support_x[t], k), batch.support_y[t])
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=learner.second_order
            )
            rates = learner.lslr[k]
            fast = {
                n: p - rates[i] * g
                for i, ((n, p), g) in enumerate(zip(fast.items(), grads, strict=True))
            }
            if weights is not None and k + 1 < steps:
                step_losses.append(weights[k] * F.cross_entropy(forward(fast, x_q, k + 1), y_q))
        final = F.cross_entropy(forward(fast, x_q, steps), y_q)
        if weights is None:
            return final
        return torch.stack(step_losses).sum() + weights[-1] * final if step_losses else final

    grads = _sum_task_grads(learner, batch.batch_size, task_loss)
    learner.meta_step += 1
    return grads


# ----------------------------------------------------------------------------- more peers


def learn2learn_metasgd(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """learn2learn's ``MetaSGD`` with the learner's rates as its ``lrs`` (so both learn the
    same tensors), clone/adapt per task."""
    import learn2learn as l2l

    model = _plain_model(learner)
    meta = l2l.algorithms.MetaSGD(model, first_order=learner.first_order, lrs=learner.alpha)

    def task_loss(t: int) -> torch.Tensor:
        clone = meta.clone()
        for _ in range(learner.inner_steps):
            clone.adapt(F.cross_entropy(clone(batch.support_x[t]), batch.support_y[t]))
        return F.cross_entropy(clone(batch.query_x[t]), batch.query_y[t])

    return _sum_task_grads(learner, batch.batch_size, task_loss)


def learn2learn_anil(learner: FastWeightLearner, batch: EpisodeBatch) -> Grads:
    """ANIL the learn2learn way (its ANIL examples): body features per task, the head
    wrapped in ``l2l.algorithms.MAML`` and cloned/adapted per task."""
    import learn2learn as l2l

    head = l2l.algorithms.MAML(learner.head, lr=learner.inner_lr, first_order=learner.first_order)

    def task_loss(t: int) -> torch.Tensor:
        support, query = body_features(learner, batch, t)
        clone = head.clone()
        for _ in range(learner.inner_steps):
            clone.adapt(F.cross_entropy(clone(support), batch.support_y[t]))
        return F.cross_entropy(clone(query), batch.query_y[t])

    return _sum_task_grads(learner, batch.batch_size, task_loss)
