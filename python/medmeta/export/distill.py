"""Episodic knowledge distillation: a smaller few-shot student taught by meta-trained teachers.

The student (by default a Prototypical Network on a narrower backbone, e.g.
``Conv4(hidden=16)``) is trained on the same kind of N-way K-shot episodes as its teachers,
with the loss of Hinton, Vinyals & Dean ("Distilling the Knowledge in a Neural Network",
2015):

    L = alpha * CE(z_s, y) + (1 - alpha) * T² * KL(p_T || softmax(z_s / T)),
    p_T = 1/M sum_m softmax(z_m / T)

where ``z_s`` are the student's episode logits ``[B, Q, N]`` from ``student.predict``, ``z_m``
the logits of teacher ``m`` on the *same* episode (an ensemble is averaged in probability
space), ``T`` the temperature (the ``T²`` keeps the soft term's gradient scale independent of
``T``, Hinton et al. sec. 2) and ``y`` the query labels. Tian et al. ("Rethinking Few-Shot
Image Classification: a Good Embedding Is All You Need?", ECCV 2020) showed that distilling a
few-shot embedding (there: sequential self-distillation of a pre-trained network) keeps or
improves novel-class accuracy; here the soft targets are the teachers' episode predictions,
so any learner with a ``predict`` can teach (MAML-family teachers included), while the
student must have a differentiable ``predict`` (the metric learners).

The student is then adapted and exported like any learner (:meth:`MetaLearner.adapt`,
:func:`medmeta.export.to_onnx`); :class:`DistillResult` carries the parameter counts and the
training history needed to put its accuracy and latency beside the teachers'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medmeta.algorithms.base import MetaLearner, create
from medmeta.algorithms.protonet import evaluating
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler
from medmeta.data.errors import check_count

__all__ = [
    "DistillResult",
    "distill",
    "distillation_loss",
    "parameter_count",
    "teacher_probabilities",
]

logger = logging.getLogger(__name__)

StudentArg = MetaLearner | nn.Module | Callable[[], MetaLearner | nn.Module]


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        student: the trained student learner (trained in place when one was passed).
        history: rows every ``log_every`` steps: ``step``, mean ``loss``, ``ce`` (query
            cross-entropy), ``kd`` (``T²``-scaled KL to the teachers), ``accuracy`` (student
            query accuracy) and ``teacher_agreement`` (student arg-max equals the teachers'
            ensemble arg-max), averaged since the previous row.
        student_parameters: number of student parameters.
        teacher_parameters: number of parameters of each teacher.
        seconds: wall time of the training loop.
        config: the settings (plain data).
    """

    student: MetaLearner
    history: list[dict[str, float]]
    student_parameters: int
    teacher_parameters: list[int]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def parameter_count(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinton et al. (2015) loss on episode queries.

    Args:
        student_logits: ``[B, Q, N]``.
        teacher_probs: ``[B, Q, N]`` tempered teacher probabilities (rows sum to 1).
        labels: ``[B, Q]`` query labels in ``[0, N)``.
        temperature: T.
        alpha: weight of the hard-label cross-entropy (``1 - alpha`` on the soft term).

    Returns:
        ``(loss, ce, kd)`` scalars: ``alpha * ce + (1 - alpha) * kd`` with
        ``kd = T² KL(teacher || softmax(student / T))`` averaged over queries.
    """
    n = student_logits.shape[-1]
    flat = student_logits.reshape(-1, n)
    ce = F.cross_entropy(flat, labels.reshape(-1))
    log_student = F.log_softmax(flat / temperature, dim=-1)
    kd = F.kl_div(log_student, teacher_probs.reshape(-1, n), reduction="batchmean")
    kd = kd * temperature**2
    return alpha * ce + (1 - alpha) * kd, ce, kd


def _check_float(name: str, value: Any, low: float, high: float, open_low: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"distill: '{name}' must be a finite number, got {value!r}")
    if (value <= low if open_low else value < low) or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"distill: '{name}' must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _teachers(teachers: Any, ways: int) -> list[MetaLearner]:
    group = [teachers] if isinstance(teachers, MetaLearner) else teachers
    if not isinstance(group, Sequence) or isinstance(group, (str, bytes)) or not group:
        raise TypeError(
            "distill: 'teachers' must be a MetaLearner or a non-empty sequence of them, "
            f"got {type(teachers).__name__}"
        )
    for i, t in enumerate(group):
        if not isinstance(t, MetaLearner):
            raise TypeError(f"distill: teachers[{i}] must be a MetaLearner, got {type(t).__name__}")
        try:  # metric teachers predict any N, those with an N-way output layer at most N
            t.check_ways(ways)
        except ValueError as err:
            raise ValueError(f"distill: teachers[{i}] cannot teach ways={ways}: {err}") from None
    return list(group)


def _student(student: Any, ways: int, metric: str) -> MetaLearner:
    made = student() if callable(student) and not isinstance(student, nn.Module) else student
    if isinstance(made, MetaLearner):
        if made.ways != ways:
            raise ValueError(f"distill: the student is {made.ways}-way, but ways={ways}")
        return made
    if isinstance(made, nn.Module):  # a backbone: a Prototypical Network on it
        return create("protonet", made, ways, metric=metric)
    raise TypeError(
        "distill: 'student' must be a MetaLearner, a backbone nn.Module or a function "
        f"returning one, got {type(made).__name__}"
    )


@torch.no_grad()
def teacher_probabilities(
    teachers: Sequence[MetaLearner], batch: EpisodeBatch, temperature: float
) -> torch.Tensor:
    """Mean over teachers of ``softmax(logits / T)`` on the batch's queries: ``[B, Q, N]``.

    Teachers predict in eval mode (batch norm on running statistics, as at test time);
    their training flags are restored afterwards.
    """
    probs = []
    for teacher in teachers:
        with evaluating(teacher):
            logits = teacher.predict(batch.support_x, batch.support_y, batch.query_x)
        probs.append(F.softmax(logits.float() / temperature, dim=-1))
    return torch.stack(probs).mean(0)


def distill(
    teachers: MetaLearner | Sequence[MetaLearner],
    train_set: Any,
    student: StudentArg,
    *,
    ways: int,
    shots: int,
    queries: int,
    steps: int,
    meta_batch: int,
    seed: int,
    temperature: float = 4.0,
    alpha: float = 0.5,
    lr: float = 1e-3,
    metric: str = "sqeuclidean",
    progress: bool = True,
    log_every: int = 50,
) -> DistillResult:
    """Train a (smaller) few-shot student on episodes to match its teachers (see module doc).

    Each of ``steps`` updates samples ``meta_batch`` episodes of ``train_set`` (an
    :class:`~medmeta.data.EpisodeSampler` seeded with ``seed``), runs every teacher's
    ``predict`` on them (no gradient), the student's ``predict`` in train mode, and takes
    an Adam step on :func:`distillation_loss`. Training runs in a forked torch RNG seeded
    with ``seed`` (the caller's global RNG is untouched), so the same arguments give the same
    student weights, bit for bit, on the same machine and thread settings.

    Args:
        teachers: one meta-trained learner or several (an ensemble), all ``ways``-way.
        train_set: meta-training data (:class:`~medmeta.data.ArrayDataset`), usually the
            teachers' own training classes.
        student: a :class:`MetaLearner` with a differentiable ``predict`` (metric learners),
            a backbone ``nn.Module`` (wrapped in a Prototypical Network with ``metric``), or a
            function returning either (called under the seeded RNG, so its initial weights
            are seeded too).
        ways, shots, queries: N, K, Q of the training episodes.
        steps: number of updates (>= 1).
        meta_batch: episodes per update.
        seed: seeds the episodes and the RNG.
        temperature: T of the soft targets (Hinton et al.; Tian et al. use 4).
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        lr: Adam learning rate.
        metric: distance of the Prototypical Network built around a backbone student.
        progress: show a tqdm bar.
        log_every: a history row every this many steps.

    Returns:
        :class:`DistillResult` (the student is in train mode, like after ``meta_fit``).

    Raises:
        TypeError / ValueError: bad arguments (teachers of another ``ways``, a student whose
            ``predict`` is not differentiable, out-of-range numbers), before training.
        DataError: ``train_set`` cannot supply the episodes.
        FloatingPointError: the loss became NaN/inf.
    """
    ways = check_count("ways", ways, 2, "distill")
    check_count("shots", shots, 1, "distill")
    check_count("queries", queries, 1, "distill")
    steps = check_count("steps", steps, 1, "distill")
    check_count("meta_batch", meta_batch, 1, "distill")
    log_every = check_count("log_every", log_every, 1, "distill")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"distill: 'seed' must be an int, got {seed!r}")
    temperature = _check_float("temperature", temperature, 0.0, math.inf, open_low=True)
    alpha = _check_float("alpha", alpha, 0.0, 1.0, open_low=False)
    lr = _check_float("lr", lr, 0.0, math.inf, open_low=True)
    group = _teachers(teachers, ways)
    sampler = EpisodeSampler(train_set, ways, shots, queries, batch_size=meta_batch, generator=seed)

    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        learner = _student(student, ways, metric)
        if any(learner is t for t in group):
            raise ValueError("distill: the student must not be one of the teachers")
        opt = torch.optim.Adam(learner.parameters(), lr=lr)
        sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "accuracy": 0.0, "teacher_agreement": 0.0}
        count = 0
        start = time.perf_counter()
        bar = tqdm(total=steps, disable=not progress, desc="distill", dynamic_ncols=True)
        try:
            for step in range(1, steps + 1):
                batch = sampler.sample()
                soft = teacher_probabilities(group, batch, temperature)  # [B, Q, N]
                learner.train()
                logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
                if step == 1 and not logits.requires_grad:
                    raise TypeError(
                        f"distill: the student ({learner.name}) has no differentiable predict; "
                        "use a metric learner (e.g. protonet) or pass a backbone"
                    )
                loss, ce, kd = distillation_loss(
                    logits, soft, batch.query_y, temperature=temperature, alpha=alpha
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"distill: loss is {float(loss)} at step {step}; lower lr or check data"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    pred = logits.argmax(-1)
                    sums["loss"] += float(loss)
                    sums["ce"] += float(ce)
                    sums["kd"] += float(kd)
                    sums["accuracy"] += float((pred == batch.query_y).float().mean())
                    agree = (pred == soft.argmax(-1)).float().mean()
                    sums["teacher_agreement"] += float(agree)
                count += 1
                if step % log_every == 0 or step == steps:
                    row = {"step": float(step)} | {k: v / count for k, v in sums.items()}
                    history.append(row)
                    bar.set_postfix(
                        {k: f"{row[k]:.3f}" for k in ("loss", "accuracy", "teacher_agreement")},
                        refresh=False,
                    )
                    logger.info(
                        "distill step %d: loss %.4f (ce %.4f, kd %.4f) accuracy %.3f "
                        "teacher agreement %.3f",
                        step, row["loss"], row["ce"], row["kd"], row["accuracy"],
                        row["teacher_agreement"],
                    )  # fmt: skip
                    sums = dict.fromkeys(sums, 0.0)
                    count = 0
                bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
    result = DistillResult(
        student=learner,
        history=history,
        student_parameters=parameter_count(learner),
        teacher_parameters=[parameter_count(t) for t in group],
        seconds=seconds,
        config={
            "teachers": [t.spec() for t in group],
            "student": learner.spec(),
            "ways": ways,
            "shots": shots,
            "queries": queries,
            "steps": steps,
            "meta_batch": meta_batch,
            "seed": seed,
            "temperature": temperature,
            "alpha": alpha,
            "lr": lr,
        },
    )
    logger.info(
        "distilled a %d-parameter student from %d teacher(s) of %s parameters in %.1f s",
        result.student_parameters, len(group), result.teacher_parameters, seconds,
    )  # fmt: skip
    return result
