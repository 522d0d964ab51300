"""Few-shot regression tasks: many small regression problems sharing one input space.

A task is one regression problem (e.g. one gene's expression in one cell type): rows with
inputs ``x [n, F]`` and one float target each, ``y [n]``. An episode draws K support and Q
query rows of one task; a meta-batch of B episodes is an
:class:`~medmeta.data.episodes.EpisodeBatch` with float targets:

* ``support_x [B, K, F]``, ``support_y [B, K]`` (float32),
* ``query_x [B, Q, F]``, ``query_y [B, Q]`` (float32),
* ``classes [B, 1]``: the index of each episode's task in the task set, ``ways = 1``.

so :func:`~medmeta.train.meta_fit`, checkpoints and ``.to(device)`` work unchanged
(:meth:`RegressionTasks.episode_sampler` is the hook ``meta_fit`` calls).

Targets are standardised per episode with the statistics of its *support* set only
(:func:`support_statistics`, :func:`standardise`): no statistic of the queries reaches the
model. The learners do this themselves, so they take and return targets in the original
units (:mod:`medmeta.algorithms.regressor`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .episodes import EpisodeBatch, SeededSampler
from .errors import DataError, check_count

__all__ = [
    "MIN_SCALE",
    "RegressionEpisodeSampler",
    "RegressionTask",
    "RegressionTasks",
    "standardise",
    "support_statistics",
    "unstandardise",
]

#: A support set whose targets vary by less than this (relative to ``1 + |mean|``) is
#: treated as constant: its targets are centred but not scaled (scale 1).
MIN_SCALE = 1e-6


# ------------------------------------------------------------------- standardisation


def support_statistics(support_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale of each support set's targets, ``support_y [..., K]`` -> ``[...]``.

    The scale is the (biased) standard deviation over the K support targets, or 1 where
    they are (nearly) constant (below :data:`MIN_SCALE` relative to ``1 + |mean|``, e.g.
    K = 1). Only the support set enters, so nothing of the queries leaks into the targets a
    model is trained on or into the map back to the original units.
    """
    mean = support_y.mean(-1)
    std = support_y.std(-1, unbiased=False) if support_y.shape[-1] > 1 else torch.zeros_like(mean)
    constant = std <= MIN_SCALE * (1 + mean.abs())
    return mean, torch.where(constant, torch.ones_like(std), std)


def standardise(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(y - mean) / scale`` per episode: ``y [..., n]``, ``mean`` and ``scale`` ``[...]``."""
    return (y - mean.unsqueeze(-1)) / scale.unsqueeze(-1)


def unstandardise(z: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`standardise`: ``z * scale + mean`` per episode."""
    return z * scale.unsqueeze(-1) + mean.unsqueeze(-1)


# ------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class RegressionTask:
    """One regression problem.

    Attributes:
        name: e.g. ``"CD19+ B / HLA-DRA"``.
        x: inputs ``[n, F]`` (float32).
        y: targets ``[n]`` (float32).
        group: the population the rows come from (cell type, clinic), for reports.
        target: what is predicted (gene, lab value), for reports.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    group: str = ""
    target: str = ""

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _as_float_tensor(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"expected real numbers, got dtype {t.dtype}")
    return t.float().contiguous()


def _check_task(task: RegressionTask, features: int | None) -> RegressionTask:
    """``task`` with float32 tensors; a clear :class:`DataError` for bad shapes or values."""
    where = f"task {task.name!r}"
    try:
        x, y = _as_float_tensor(task.x), _as_float_tensor(task.y)
    except TypeError as err:
        raise DataError(f"inputs and targets must be real numbers ({err})", where) from err
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"x must be [n, F] and y [n] with the same n, got x {list(x.shape)} and "
            f"y {list(y.shape)}",
            where,
        )
    if features is not None and x.shape[1] != features:
        raise DataError(f"x has {x.shape[1]} features, the other tasks have {features}", where)
    bad_y = ~torch.isfinite(y)
    if bool(bad_y.any()):
        row = int(bad_y.nonzero()[0])
        raise DataError(
            f"target (y) is {float(y[row])} at row {row} ({int(bad_y.sum())} non-finite "
            "targets); drop the rows whose target is missing before making the task",
            where,
        )
    bad_x = ~torch.isfinite(x)
    if bool(bad_x.any()):
        row, col = (int(v) for v in bad_x.nonzero()[0])
        raise DataError(
            f"input x[{row}, {col}] is {float(x[row, col])}; impute or encode missing "
            "inputs (e.g. TableEncoder's __missing indicators) before making the task",
            where,
        )
    return RegressionTask(task.name, x, y, task.group, task.target)


class RegressionTasks:
    """A set of few-shot regression tasks with one input width ``F``.

    Args:
        tasks: the tasks (at least one; names unique).
        feature_names: names of the ``F`` input columns (optional, for reports).
        name: what the set is, for messages and reports.

    Raises:
        DataError: no task, duplicate names, tasks of different widths, or a non-finite
            input or target (named by task, row and column).
    """

    #: What :func:`~medmeta.train.meta_fit` trains on this data: a regression learner.
    task = "regression"

    def __init__(
        self,
        tasks: Sequence[RegressionTask],
        *,
        feature_names: Sequence[str] | None = None,
        name: str = "regression tasks",
    ) -> None:
        if not tasks:
            raise DataError("a task set needs at least one task", name)
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"task names must be unique, repeated: {dup[:5]}", name)
        checked: list[RegressionTask] = []
        for t in tasks:
            checked.append(_check_task(t, checked[0].x.shape[1] if checked else None))
        self.tasks = tuple(checked)
        self.name = name
        self.num_features = int(self.tasks[0].x.shape[1])
        if feature_names is not None and len(feature_names) != self.num_features:
            raise DataError(
                f"{len(feature_names)} feature names for {self.num_features} features",
                "feature_names",
            )
        self.feature_names = None if feature_names is None else [str(f) for f in feature_names]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[RegressionTask]:
        return iter(self.tasks)

    def __getitem__(self, index: int) -> RegressionTask:
        return self.tasks[index]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def smallest(self) -> int:
        """Rows of the smallest task (episodes need ``shots + queries`` of them)."""
        return min(len(t) for t in self.tasks)

    def episode_sampler(
        self,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
    ) -> RegressionEpisodeSampler:
        """A seeded sampler of K-shot Q-query episodes (``ways`` must be 1: one target)."""
        return RegressionEpisodeSampler(
            self, ways, shots, queries, batch_size=batch_size, generator=generator
        )

    def __repr__(self) -> str:
        return (
            f"RegressionTasks(name={self.name!r}, tasks={len(self)}, "
            f"features={self.num_features}, rows={sum(len(t) for t in self.tasks)})"
        )


class RegressionEpisodeSampler(SeededSampler):
    """Meta-batches of K-shot Q-query regression episodes of a :class:`RegressionTasks`.

    Each episode picks a task uniformly at random, then K + Q distinct rows of it (support
    first). Sampling is reproducible from the generator, whose state is the sampler's state
    (:meth:`state_dict`), so :func:`~medmeta.train.meta_fit` resumes exactly.

    Args:
        tasks: the task set.
        ways: must be 1 (an episode has one regression target).
        shots, queries: K and Q.
        batch_size: episodes per meta-batch B.
        generator: a ``torch.Generator`` or an int seed.

    Attributes:
        class_names: the task names (``classes [B, 1]`` indexes them).
    """

    def __init__(
        self,
        tasks: RegressionTasks,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
    ) -> None:
        if ways != 1:
            raise DataError(
                f"regression episodes have one target: ways must be 1, got {ways!r}", "ways"
            )
        self.ways = 1
        self.shots = check_count("shots", shots, 1)
        self.queries = check_count("queries", queries, 1)
        self.batch_size = check_count("batch_size", batch_size, 1)
        need = shots + queries
        small = [f"{t.name!r} ({len(t)})" for t in tasks if len(t) < need]
        if small:
            raise DataError(
                f"{len(small)} task(s) have fewer than shots + queries = {shots} + {queries} = "
                f"{need} rows: {', '.join(small[:10])}{', ...' if len(small) > 10 else ''}",
                tasks.name,
            )
        self.tasks = tasks
        self.class_names = tasks.task_names
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            seed = 0 if generator is None else int(generator)
            self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> EpisodeBatch:
        """One meta-batch of ``batch_size`` episodes (float targets, ``ways = 1``)."""
        B, K, Q = self.batch_size, self.shots, self.queries
        g = self.generator
        chosen = torch.randint(len(self.tasks), (B,), generator=g)
        xs, ys = [], []
        for t in chosen.tolist():
            task = self.tasks[t]
            rows = torch.randperm(len(task), generator=g)[: K + Q]
            xs.append(task.x[rows])
            ys.append(task.y[rows])
        x, y = torch.stack(xs), torch.stack(ys)
        return EpisodeBatch(
            support_x=x[:, :K].contiguous(),
            support_y=y[:, :K].contiguous(),
            query_x=x[:, K:].contiguous(),
            query_y=y[:, K:].contiguous(),
            classes=chosen.unsqueeze(1),
            ways=1,
            shots=K,
            queries=Q,
        )
