"""Shared by the MAML-family tests (importable as ``maml_helpers``: tests/ is on the path).

* :func:`random_batch`: a small random :class:`EpisodeBatch`.
* :func:`loop_meta_loss`: the per-task reference: one task at a time with
  ``torch.func.functional_call`` and plain autograd (``create_graph=second_order``), the
  inner step written out as ``p - rate * g``. Batched implementations must match it.
* :func:`assert_grads_match`: meta-gradients of a learner's ``meta_loss`` vs the loop.
* :func:`meta_train_and_evaluate`: short meta-training on ``pbc_blood`` (classes 0-4) and
  mean query accuracy on held-out classes 5-7.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from helpers import torch_threads  # noqa: F401  (the MAML tests import it from here)
from medmeta.data import load
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler, split_classes

Params = dict[str, torch.Tensor]


Model = Callable[[Params, torch.Tensor], torch.Tensor]  # (params, x [n, ...]) -> logits [n, N]
Rate = Callable[[int, str], float | torch.Tensor]  # (step, name) -> inner learning rate


def random_batch(
    B: int,
    ways: int,
    shots: int,
    queries: int,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int = 0,
) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    S, Q = ways * shots, ways * queries
    return EpisodeBatch(
        support_x=torch.randn(B, S, *shape, generator=g).to(dtype),
        support_y=torch.arange(ways).repeat_interleave(shots).expand(B, -1).contiguous(),
        query_x=torch.randn(B, Q, *shape, generator=g).to(dtype),
        query_y=torch.arange(ways).repeat_interleave(queries).expand(B, -1).contiguous(),
        classes=torch.arange(ways).expand(B, -1),
        ways=ways,
        shots=shots,
        queries=queries,
    )


def module_model(module: torch.nn.Module) -> Model:
    """``(params, x) -> functional_call(module, params, (x,))`` (missing names: the module's)."""
    return lambda params, x: functional_call(module, params, (x,))


def loop_task_loss(
    model: Model,
    adapted: Params,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_q: torch.Tensor,
    y_q: torch.Tensor,
    *,
    steps: int,
    rate: Rate,
    second_order: bool,
    extra: Callable[[int], Params] = lambda version: {},
    step_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """One task's query loss after ``steps`` inner steps (the written-out reference).

    ``extra(version)`` adds non-adapted per-version parameters (MAML++ per-step batch norm);
    ``step_weights`` (MAML++ multi-step loss) weights the query loss after every step.
    """
    fast = dict(adapted)
    losses = []
    for step in range(steps):
        loss = F.cross_entropy(model({**fast, **extra(step)}, x_s), y_s)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
        fast = {k: p - rate(step, k) * g for (k, p), g in zip(fast.items(), grads, strict=True)}
        if step_weights is not None:
            query = F.cross_entropy(model({**fast, **extra(step + 1)}, x_q), y_q)
            losses.append(step_weights[step] * query)
    if step_weights is None:
        losses.append(F.cross_entropy(model({**fast, **extra(steps)}, x_q), y_q))
    return torch.stack(losses).sum()


def loop_meta_grads(
    wrt: Mapping[str, torch.Tensor],
    task_loss: Callable[[int], torch.Tensor],
    tasks: int,
) -> Params:
    """Gradients of ``mean_t task_loss(t)`` with respect to ``wrt``, one task at a time."""
    total = {k: torch.zeros_like(v) for k, v in wrt.items()}
    for t in range(tasks):
        grads = torch.autograd.grad(task_loss(t) / tasks, list(wrt.values()), allow_unused=True)
        for k, g in zip(wrt, grads, strict=True):
            if g is not None:
                total[k] += g
    return total


def assert_grads_match(learner, batch: EpisodeBatch, reference: Params, tol: float) -> None:
    """The learner's ``meta_loss`` gradients equal ``reference`` (name -> gradient)."""
    wanted = dict(learner.named_parameters())
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, [wanted[k] for k in reference], allow_unused=True)
    assert reference and max(float(g.abs().max()) for g in reference.values()) > 0
    for (name, ref), got in zip(reference.items(), grads, strict=True):
        got = torch.zeros_like(ref) if got is None else got
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


def trainable(learner) -> Params:
    """The learner's parameters that require grad, by name."""
    return {k: v for k, v in learner.named_parameters() if v.requires_grad}


# -------------------------------------------------------------------- learning on real data

TRAIN_CLASSES, TEST_CLASSES = [0, 1, 2, 3, 4], [5, 6, 7]


@functools.cache
def pbc_splits():
    """(meta-train, meta-test) parts of pbc_blood: classes 0-4 and 5-7."""
    return split_classes(load("pbc_blood"), classes=[TRAIN_CLASSES, TEST_CLASSES])


@dataclass
class LearningResult:
    accuracy: float  # mean query accuracy on held-out-class episodes
    loss: float  # mean query cross-entropy on them
    untrained_accuracy: float  # the same before meta-training
    untrained_loss: float
    seconds: float  # meta-training time
    losses: list[float]  # meta-training losses


def evaluate(
    learner, ways: int, shots: int, episodes: int = 48, seed: int = 123
) -> tuple[float, float]:
    """(mean query accuracy, mean query cross-entropy) over ``episodes`` held-out-class
    episodes, predicted ``episodes / 4`` at a time; the same episodes for a given seed."""
    _, test = pbc_splits()
    sampler = EpisodeSampler(test, ways, shots, 5, batch_size=episodes // 4, generator=seed)
    learner.eval()
    correct, losses = [], []
    with torch.no_grad():
        for _ in range(4):
            b = sampler.sample()
            logits = learner.predict(b.support_x, b.support_y, b.query_x)
            correct.append((logits.argmax(-1) == b.query_y).float().mean(1))
            losses.append(F.cross_entropy(logits.flatten(0, 1), b.query_y.flatten()))
    return float(torch.cat(correct).mean()), float(torch.stack(losses).mean())


def meta_train_and_evaluate(
    learner, *, ways: int = 3, shots: int = 5, steps: int = 50, lr: float = 3e-3, seed: int = 0
) -> LearningResult:
    """``steps`` Adam meta-steps (B=4, 5 queries per class) on pbc_blood classes 0-4, then
    accuracy on 48 episodes of classes 5-7."""
    train, _ = pbc_splits()
    before = evaluate(learner, ways, shots)
    sampler = EpisodeSampler(train, ways, shots, 5, batch_size=4, generator=seed)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=lr)
    start = time.perf_counter()
    losses = [learner.meta_train_step(sampler.sample(), optimizer).loss for _ in range(steps)]
    seconds = time.perf_counter() - start
    after = evaluate(learner, ways, shots)
    return LearningResult(*after, *before, seconds, losses)


# -------------------------------------------------------------------- interface checks


def check_adapt_matches_predict(learner, batch: EpisodeBatch, atol: float = 1e-5) -> None:
    """For one task: ``adapt(support)`` on the support set equals ``predict`` with the
    support set as queries (support batch-norm statistics), inputs are classified one at a
    time, and ``predict`` builds no graph even with gradients enabled."""
    learner.eval()
    xs, ys = batch.support_x[:1], batch.support_y[:1]
    predicted = learner.predict(xs, ys, xs)[0]
    assert not predicted.requires_grad
    adapted = learner.adapt(xs[0], ys[0])
    assert not adapted.training
    with torch.no_grad():
        deployed = adapted(xs[0])
        one_at_a_time = torch.cat([adapted(x[None]) for x in xs[0]])
    torch.testing.assert_close(deployed, predicted, atol=atol, rtol=atol)
    torch.testing.assert_close(one_at_a_time, deployed, atol=atol, rtol=atol)
    assert adapted.ways == learner.ways and deployed.shape == (xs.shape[1], learner.ways)


def check_spec_round_trip(
    learner, batch: EpisodeBatch, make_backbone: Callable[[], torch.nn.Module]
) -> None:
    """``create(**spec)`` + ``load_state_dict`` rebuilds a learner that predicts the same."""
    import json

    from medmeta.algorithms import create

    spec = learner.spec()
    assert json.loads(json.dumps(spec)) == spec
    clone = create(spec["algorithm"], make_backbone(), spec["ways"], **spec["hparams"])
    assert type(clone) is type(learner) and clone.spec() == spec
    clone.load_state_dict(learner.state_dict())
    learner.eval(), clone.eval()
    args = (batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(clone.predict(*args), learner.predict(*args), atol=0, rtol=0)


def check_deterministic(make_learner: Callable[[], torch.nn.Module], steps: int = 3) -> None:
    """Two learners built and trained from the same seeds give identical losses and weights."""
    train, _ = pbc_splits()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        learner = make_learner()
        sampler = EpisodeSampler(train, 3, 1, 2, batch_size=2, generator=5)
        optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-3)
        losses = [learner.meta_train_step(sampler.sample(), optimizer).loss for _ in range(steps)]
        runs.append((losses, {k: v.clone() for k, v in learner.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def check_learns(result: LearningResult, chance: float = 1 / 3) -> None:
    """Held-out accuracy clearly above chance, and meta-training helped: a lower held-out
    query loss (by 15 %) and no lower accuracy than the untrained learner."""
    assert result.accuracy > chance + 0.15, result
    assert result.loss < 0.85 * result.untrained_loss, result
    assert result.accuracy >= result.untrained_accuracy, result
