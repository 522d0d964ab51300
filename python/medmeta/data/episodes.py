"""Few-shot episodes: disjoint class splits and an N-way K-shot Q-query sampler.

A meta-batch of B episodes is returned as tensors with a leading episode axis, so
algorithms process it with batched ops instead of a Python loop over tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .dataset import ArrayDataset, dataset_origin
from .errors import DataError


@dataclass(frozen=True)
class EpisodeBatch:
    """B episodes of an N-way K-shot Q-query task.

    Attributes:
        support_x: ``[B, N*K, ...]`` support inputs, class-major (K of class 0, then class 1, ...).
        support_y: ``[B, N*K]`` episode labels in ``[0, N)``.
        query_x: ``[B, N*Q, ...]`` query inputs, class-major.
        query_y: ``[B, N*Q]`` episode labels in ``[0, N)``.
        classes: ``[B, N]`` dataset class ids of the episode labels.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    ways: int
    shots: int
    queries: int

    @property
    def batch_size(self) -> int:
        return int(self.support_y.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EpisodeBatch:
        """The same episodes on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            support_x=move(self.support_x),
            support_y=move(self.support_y),
            query_x=move(self.query_x),
            query_y=move(self.query_y),
            classes=move(self.classes),
        )


def as_features(x: Any, *, series: bool = False) -> torch.Tensor:
    """Inputs as a float32 tensor: images ``[N, C, H, W]`` in [0, 1], vectors ``[N, F]``,
    signals ``[N, C, L]`` (``series=True``).

    uint8 / uint16 images are scaled to [0, 1]; channels-last RGB(A) ``[N, H, W, 3|4]`` is
    moved to channels-first; grayscale ``[N, H, W]`` gets a channel axis (not signals).
    """
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype in (torch.uint16, torch.int32) and t.dim() >= 3:
        t = t.float() / 65535.0
    else:
        t = t.float()
    if t.dim() == 3 and not series:  # [N, H, W] grayscale images
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def is_series(dataset: Any) -> bool:
    """Whether a data set holds signals ``[N, C, L]`` (``meta["format"] == "timeseries"``)."""
    return getattr(dataset, "meta", {}).get("format") == "timeseries"


def features_of(dataset: Any) -> torch.Tensor:
    """:func:`as_features` of ``dataset.x``, signals kept ``[N, C, L]``."""
    return as_features(dataset.x, series=is_series(dataset))


def split_classes(
    dataset: ArrayDataset,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    seed: int = 0,
    classes: Sequence[Sequence[int | str]] | None = None,
) -> tuple[ArrayDataset, ...]:
    """Split a dataset into parts with disjoint classes (meta-train / meta-val / meta-test).

    Args:
        dataset: the labelled data.
        fractions: share of the classes in each part (rounded; every part gets >= 1 class).
        seed: seeds the class permutation (reproducible splits).
        classes: explicit class lists per part (ids or names) instead of ``fractions``.

    Returns:
        One :class:`ArrayDataset` per part, keeping the original labels and class names;
        episode samplers draw only the classes present in each part.
    """
    names = list(dataset.class_names)
    if classes is not None:
        parts = [[_class_id(c, names) for c in part] for part in classes]
        flat = [c for part in parts for c in part]
        if len(flat) != len(set(flat)):
            raise DataError("class lists must be disjoint", "classes")
    else:
        n = len(names)
        if len(fractions) > n:
            raise DataError(f"cannot split {n} classes into {len(fractions)} parts", "fractions")
        order = np.random.default_rng(seed).permutation(n)
        sizes = [max(1, round(f * n)) for f in fractions]
        while sum(sizes) > n:
            sizes[int(np.argmax(sizes))] -= 1
        bounds = np.cumsum([0, *sizes])
        parts = [sorted(order[a:b].tolist()) for a, b in itertools.pairwise(bounds)]
    labels = dataset.labels
    return tuple(dataset.subset(np.flatnonzero(np.isin(labels, part))) for part in parts)


def _class_id(c: int | str, names: list[str]) -> int:
    if isinstance(c, str):
        if c not in names:
            raise DataError(f"unknown class {c!r}; classes are {names}", "classes")
        return names.index(c)
    if not 0 <= int(c) < len(names):
        raise DataError(f"class id {c} out of range [0, {len(names)})", "classes")
    return int(c)


class SeededSampler:
    """What every episode sampler shares: an endless stream of :meth:`sample` batches from
    one ``torch.Generator`` (``self.generator``), whose state is the sampler's state."""

    generator: torch.Generator

    def sample(self) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state: restoring it resumes the exact same episode stream."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class EpisodeSampler(SeededSampler):
    """Samples meta-batches of N-way K-shot Q-query episodes from a labelled dataset.

    Classes present in the dataset are eligible (use :func:`split_classes` for novel-class
    evaluation). Without ``groups`` a meta-batch is drawn with a few vectorised tensor ops;
    with ``groups`` (patient or source ids) the support and the query of each episode come
    from disjoint groups, so a model cannot match a query to the same patient's support.

    Args:
        dataset: an :class:`ArrayDataset` (or anything with ``x``, ``labels``, ``class_names``
            and ``groups``).
        ways, shots, queries: N, K and Q (queries per class).
        batch_size: episodes per meta-batch B.
        generator: a ``torch.Generator`` (or an int seed); sampling is reproducible from it
            and its state is saved by :meth:`state_dict` for exact resumption.
        features: the inputs as a tensor (default: ``features_of(dataset)``).
        use_groups: honour ``dataset.groups`` when present.
    """

    def __init__(
        self,
        dataset: Any,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
        features: torch.Tensor | None = None,
        use_groups: bool = True,
    ) -> None:
        for name, value, low in (
            ("ways", ways, 2),
            ("shots", shots, 1),
            ("queries", queries, 1),
            ("batch_size", batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"{name} must be an int >= {low}, got {value!r}", name)
        self.ways, self.shots, self.queries, self.batch_size = ways, shots, queries, batch_size
        self.features = features_of(dataset) if features is None else features
        labels = np.asarray(dataset.labels, dtype=np.int64)
        if len(labels) != len(self.features):
            raise DataError(
                f"features have {len(self.features)} rows but there are {len(labels)} labels",
                "features",
            )
        self.class_names = list(dataset.class_names)
        counts = np.bincount(labels, minlength=len(self.class_names))
        present = np.flatnonzero(counts > 0)
        need = shots + queries
        small = [f"{self.class_names[c]!r} ({counts[c]})" for c in present if counts[c] < need]
        if small:
            raise DataError(
                f"{len(small)} class(es) have fewer than shots + queries = {shots} + {queries} = {need} "
                f"examples: {', '.join(small)}",
                dataset_origin(dataset),
            )
        if len(present) < ways:
            raise DataError(
                f"{ways}-way episodes need {ways} classes, the dataset has {len(present)}", "ways"
            )
        self.class_ids = torch.as_tensor(present)
        # [C, max_count] example indices per eligible class, -1 padded
        per_class = [np.flatnonzero(labels == c) for c in present]
        width = max(len(ix) for ix in per_class)
        table = np.full((len(present), width), -1, dtype=np.int64)
        for i, ix in enumerate(per_class):
            table[i, : len(ix)] = ix
        self._table = torch.as_tensor(table)
        self._counts = torch.as_tensor([len(ix) for ix in per_class])
        groups = getattr(dataset, "groups", None)
        self._groups = np.asarray(groups) if (use_groups and groups is not None) else None
        self._labels = labels
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            self.generator = torch.Generator().manual_seed(
                0 if generator is None else int(generator)
            )

    def sample(self) -> EpisodeBatch:
        """One meta-batch of ``batch_size`` episodes."""
        B, N, K, Q = self.batch_size, self.ways, self.shots, self.queries
        g = self.generator
        chosen = torch.rand(B, len(self.class_ids), generator=g).argsort(-1)[:, :N]  # [B, N]
        if self._groups is None:
            keys = torch.rand(B, N, self._table.shape[1], generator=g)
            keys.masked_fill_(self._table[chosen] < 0, 2.0)  # padding sorts last
            pick = keys.argsort(-1)[..., : K + Q]
            idx = self._table[chosen].gather(-1, pick)  # [B, N, K+Q]
            support, query = idx[..., :K], idx[..., K:]
        else:
            support, query = self._sample_grouped(chosen, g)
        sy = torch.arange(N).repeat_interleave(K).expand(B, -1).contiguous()
        qy = torch.arange(N).repeat_interleave(Q).expand(B, -1).contiguous()
        return EpisodeBatch(
            support_x=self.features[support.reshape(B, N * K)],
            support_y=sy,
            query_x=self.features[query.reshape(B, N * Q)],
            query_y=qy,
            classes=self.class_ids[chosen],
            ways=N,
            shots=K,
            queries=Q,
        )

    def _sample_grouped(
        self, chosen: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query indices with no group (patient) shared between them."""
        B, N, K, Q = self.batch_size, self.ways, self.shots, self.queries
        support = torch.empty(B, N, K, dtype=torch.int64)
        query = torch.empty(B, N, Q, dtype=torch.int64)
        for b in range(B):
            used: set[Any] = set()
            members = [self._table[c, : self._counts[c]] for c in chosen[b].tolist()]
            for n, ix in enumerate(members):
                ix = ix[torch.randperm(len(ix), generator=g)]
                grp = self._groups[ix.numpy()]
                order = {gv: i for i, gv in enumerate(dict.fromkeys(grp.tolist()))}
                # whole groups in a random order until K examples are collected
                rank = torch.as_tensor([order[gv] for gv in grp.tolist()])
                ix = ix[rank.argsort(stable=True)]
                support[b, n] = ix[:K]
                used.update(self._groups[ix[:K].numpy()].tolist())
            for n, ix in enumerate(members):
                free = ix[
                    torch.as_tensor(
                        [gv not in used for gv in self._groups[ix.numpy()].tolist()],
                        dtype=torch.bool,
                    )
                ]
                if len(free) < Q:
                    name = self.class_names[int(self.class_ids[chosen[b, n]])]
                    raise DataError(
                        f"class {name!r} has only {len(free)} examples from patients outside the support set, "
                        f"need queries = {Q}",
                        "groups",
                    )
                query[b, n] = free[torch.randperm(len(free), generator=g)[:Q]]
        return support, query
