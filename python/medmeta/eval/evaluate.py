"""Few-shot evaluation on seeded episodes: accuracy with its 95% CI, balanced accuracy,
macro-F1, one-vs-rest AUROC, per-class sensitivity/specificity, a confusion matrix over
dataset classes, and calibration (ECE with reliability-diagram data, NLL, Brier).

Episodes are drawn one at a time from a generator seeded with ``seed``, so the same seed
gives the same episodes whatever ``batch_size``, ``device`` or number of processes: under
``torchrun`` the episodes are shared among the processes and their predictions gathered
(:func:`predict_sharded`), so the mean and CI equal one process's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medmeta.algorithms.base import MetaLearner
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler
from medmeta.data.errors import check_count
from medmeta.eval import metrics as M
from medmeta.eval.calibration import Reliability, brier_score, nll, reliability, softmax

__all__ = [
    "EpisodePredictions",
    "EvalResult",
    "collect_predictions",
    "evaluate",
    "iter_episodes",
    "predict_episodes",
    "predict_sharded",
    "summarize",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodePredictions:
    """Query logits of ``E`` episodes (CPU float32).

    Attributes:
        logits: ``[E, M, N]`` query logits (``M = N * queries``).
        labels: ``[E, M]`` true episode labels in ``[0, N)``.
        classes: ``[E, N]`` dataset class id of each episode label.
        class_names: names of the dataset classes (indexed by class id).
    """

    logits: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def episodes(self) -> int:
        return int(self.labels.shape[0])


def iter_episodes(
    sampler: EpisodeSampler, episodes: int, batch_size: int, select: range | None = None
) -> Iterator[EpisodeBatch]:
    """``episodes`` episodes of a ``batch_size=1`` sampler, stacked into batches of up to
    ``batch_size`` (the last one smaller), so the episodes do not depend on ``batch_size``.

    ``select`` (a contiguous range of episode indices): yield only those episodes; the
    episodes before them are still drawn, so the selected ones are the same as without it
    (one process's shard of a distributed evaluation)."""
    if sampler.batch_size != 1:
        raise ValueError("iter_episodes needs a sampler with batch_size=1")
    select = range(episodes) if select is None else select
    if select and (select.start < 0 or select.stop > episodes or select.step != 1):
        raise ValueError(f"select must be a contiguous range within [0, {episodes}), got {select}")
    parts: list[EpisodeBatch] = []
    for index in range(select.stop if select else 0):
        episode = sampler.sample()
        if index in select:
            parts.append(episode)
        if parts and (len(parts) == batch_size or index == select.stop - 1):
            yield _stack(parts)
            parts = []


def _stack(parts: list[EpisodeBatch]) -> EpisodeBatch:
    """One batch of single-episode batches."""
    first = parts[0]
    return EpisodeBatch(
        support_x=torch.cat([p.support_x for p in parts]),
        support_y=torch.cat([p.support_y for p in parts]),
        query_x=torch.cat([p.query_x for p in parts]),
        query_y=torch.cat([p.query_y for p in parts]),
        classes=torch.cat([p.classes for p in parts]),
        ways=first.ways,
        shots=first.shots,
        queries=first.queries,
    )


def predict_episodes(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    episodes: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    select: range | None = None,
) -> EpisodePredictions:
    """Run ``learner.predict`` (in eval mode) on ``episodes`` episodes of ``sampler``
    (only those of ``select``, see :func:`iter_episodes`, when given).

    Autograd stays enabled: optimisation-based learners adapt by gradient steps inside
    ``predict``. The outputs are detached. ``progress`` shows a tqdm bar over episodes.
    """
    was_training = learner.training
    learner.eval()
    logits, labels, classes = [], [], []
    total = episodes if select is None else len(select)
    bar = tqdm(total=total, desc="evaluate", unit="episode", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    try:
        for batch in iter_episodes(sampler, episodes, batch_size, select):
            b = batch.to(device)
            out = learner.predict(b.support_x, b.support_y, b.query_x)
            expected = (b.batch_size, b.query_y.shape[1], b.ways)
            if tuple(out.shape) != expected:
                raise ValueError(
                    f"{type(learner).__name__}.predict returned logits of shape "
                    f"{tuple(out.shape)}, expected [B, Q, N] = {list(expected)}"
                )
            logits.append(out.detach().float().cpu())
            labels.append(batch.query_y)
            classes.append(batch.classes)
            bar.update(batch.batch_size)
    finally:
        bar.close()
        learner.train(was_training)
    if not logits:  # an empty shard: no episode for this process
        n, m = sampler.ways, sampler.ways * sampler.queries
        logits, labels, classes = [torch.empty(0, m, n)], [torch.empty(0, m, dtype=torch.int64)], [torch.empty(0, n, dtype=torch.int64)]  # fmt: skip
    return EpisodePredictions(
        logits=torch.cat(logits),
        labels=torch.cat(labels),
        classes=torch.cat(classes),
        class_names=tuple(sampler.class_names),
    )


def predict_sharded(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    episodes: int,
    batch_size: int,
    ctx: Any,
    progress: bool = False,
) -> EpisodePredictions:
    """:func:`predict_episodes` with the episodes shared by the processes of ``ctx`` (a
    :class:`~medmeta.train.distributed.DistContext`): each predicts its contiguous shard,
    then the predictions are all-gathered in episode order, so every process holds the
    same ``[E, M, N]`` logits as one process computes (up to floating-point reassociation
    inside the learner) and :func:`summarize` gives the same mean and CI. Every process
    must call it."""
    from medmeta.train.distributed import all_gather_rows

    mine = predict_episodes(learner, sampler, episodes, batch_size, ctx.device,
                            progress and ctx.is_main, range(*ctx.shard(episodes)))  # fmt: skip
    e, m, n = mine.logits.shape
    rows = torch.cat([mine.logits.double().reshape(e, m * n), mine.labels.double(),
                      mine.classes.double()], 1)  # fmt: skip
    rows = all_gather_rows(ctx, rows, ctx.counts(episodes), "the all-gather of the predictions").cpu()  # fmt: skip
    return EpisodePredictions(
        logits=rows[:, : m * n].float().reshape(-1, m, n),
        labels=rows[:, m * n : m * n + m].long(),
        classes=rows[:, m * n + m :].long(),
        class_names=mine.class_names,
    )


def collect_predictions(
    learner: MetaLearner,
    dataset: Any,
    *,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 600,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    distributed: bool | None = None,
) -> EpisodePredictions:
    """Query logits of ``episodes`` seeded N-way K-shot Q-query episodes of ``dataset``.

    The learner is moved to ``device``. Raises :class:`~medmeta.data.DataError` when the
    dataset cannot supply such episodes (e.g. ``ways`` above its number of classes).

    ``distributed``: share the episodes among the processes of a ``torch.distributed``
    group (:func:`predict_sharded`; every process must call this with the same
    arguments). ``None``: when a group of several processes exists or ``torchrun``
    started this one (see :func:`medmeta.train.distributed.resolve`); ``False``: never.
    """
    check_count("episodes", episodes, 1)
    check_count("batch_size", batch_size, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    sampler = EpisodeSampler(dataset, ways, shots, queries, batch_size=1, generator=seed)
    ctx = _dist_context(distributed, device)
    dev = torch.device(device) if ctx is None else ctx.device
    learner.to(dev)
    if ctx is not None:
        return predict_sharded(learner, sampler, episodes, batch_size, ctx, progress)
    return predict_episodes(learner, sampler, episodes, batch_size, dev, progress)


def _dist_context(distributed: bool | None, device: str | torch.device) -> Any:
    """The process group to shard over (:func:`medmeta.train.distributed.resolve`), or
    ``None``; without torch.distributed in use nothing is imported."""
    if distributed is False:
        return None
    from medmeta.train.distributed import resolve

    return resolve(distributed, device)


@dataclass
class EvalResult:
    """Metrics of a few-shot evaluation (see :func:`evaluate`).

    Scalar metrics are means over episodes unless noted. ``class_names``/``class_ids`` list
    the dataset classes that occur in the evaluated data; ``confusion`` (``[C, C]``, rows =
    true class, columns = predicted class) and ``sensitivity``/``specificity``/``support``
    (``[C]``) follow that order.
    """

    accuracy: float
    ci95: float
    accuracy_std: float
    balanced_accuracy: float
    macro_f1: float
    auroc: float
    ece: float
    nll: float
    brier: float
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int | None
    temperature: float | None
    class_names: list[str]
    class_ids: list[int]
    confusion: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    support: np.ndarray
    reliability: Reliability
    episode_accuracy: np.ndarray = field(repr=False)
    auroc_ci95: float = math.nan
    sensitivity_ci: np.ndarray | None = field(default=None, repr=False)  # [C, 2], 95%
    specificity_ci: np.ndarray | None = field(default=None, repr=False)  # [C, 2], 95%
    images: np.ndarray | None = field(default=None, repr=False)  # [C] distinct test images

    @property
    def distinct_images(self) -> int | None:
        """Distinct test images the episodes drew their queries from (``support`` counts the
        query draws, which repeat images), or None when unknown."""
        return None if self.images is None else int(self.images.sum())

    @property
    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        """``{class name: {"sensitivity", "specificity", "support", "sensitivity_ci",
        "specificity_ci"}}`` (None when undefined; the CIs are 95% ``[low, high]`` over
        episodes, see :func:`medmeta.eval.metrics.bootstrap_class_rates`)."""

        def ci(bounds: np.ndarray | None, i: int) -> list[float | None] | None:
            return None if bounds is None else [_num(bounds[i, 0]), _num(bounds[i, 1])]

        return {
            name: {
                "sensitivity": _num(self.sensitivity[i]),
                "specificity": _num(self.specificity[i]),
                "support": int(self.support[i]),
                "images": None if self.images is None else int(self.images[i]),
                "sensitivity_ci": ci(self.sensitivity_ci, i),
                "specificity_ci": ci(self.specificity_ci, i),
            }
            for i, name in enumerate(self.class_names)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN becomes None)."""
        return {
            "accuracy": _num(self.accuracy),
            "ci95": _num(self.ci95),
            "accuracy_std": _num(self.accuracy_std),
            "balanced_accuracy": _num(self.balanced_accuracy),
            "macro_f1": _num(self.macro_f1),
            "auroc": _num(self.auroc),
            "auroc_ci95": _num(self.auroc_ci95),
            "ece": _num(self.ece),
            "nll": _num(self.nll),
            "brier": _num(self.brier),
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "episodes": self.episodes,
            "distinct_images": self.distinct_images,
            "seed": self.seed,
            "temperature": self.temperature,
            "class_names": list(self.class_names),
            "class_ids": list(self.class_ids),
            "confusion": self.confusion.astype(int).tolist(),
            "per_class": self.per_class,
            "reliability": self.reliability.to_dict(),
            "episode_accuracy": [float(v) for v in self.episode_accuracy],
        }

    def summary(self) -> str:
        """One line: accuracy ± CI and the main secondary metrics."""
        return (
            f"{self.ways}-way {self.shots}-shot, {self.episodes} episodes: accuracy "
            f"{100 * self.accuracy:.2f} ± {100 * self.ci95:.2f}%, balanced "
            f"{100 * self.balanced_accuracy:.2f}%, macro-F1 {self.macro_f1:.3f}, AUROC "
            f"{self.auroc:.3f} ± {self.auroc_ci95:.3f}, ECE {self.ece:.3f}, NLL {self.nll:.3f}, Brier {self.brier:.3f}"
        )


def _num(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) else f


def summarize(
    preds: EpisodePredictions,
    *,
    shots: int,
    queries: int,
    seed: int | None = None,
    temperature: float | None = None,
    bins: int = 15,
    progress: bool = False,
) -> EvalResult:
    """All metrics of :class:`EvalResult` from collected predictions.

    Args:
        preds: logits ``[E, M, N]``, labels ``[E, M]``, classes ``[E, N]``.
        shots, queries: recorded in the result.
        seed: recorded in the result.
        temperature: divide the logits by it first (``None``: no scaling).
        bins: ECE bins.
    """
    logits = preds.logits.double().numpy()
    if temperature is not None:
        logits = logits / _check_temperature(temperature)
    y = preds.labels.numpy().astype(np.int64)
    cls = preds.classes.numpy().astype(np.int64)
    E, _, N = logits.shape
    probs = softmax(logits)
    pred = probs.argmax(-1)
    correct = pred == y
    ep_acc = correct.mean(-1)
    acc, ci = M.mean_ci95(ep_acc)

    present = np.unique(cls)
    remap = np.full(len(preds.class_names), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    true_ds = remap[np.take_along_axis(cls, y, axis=1)]
    pred_ds = remap[np.take_along_axis(cls, pred, axis=1)]
    confusion = M.confusion_matrix(true_ds, pred_ds, len(present))
    counts = M.class_counts(pred, y, remap[cls], len(present))
    rel = reliability(probs.max(-1).reshape(-1), correct.reshape(-1), bins)
    ep_auroc = M.episode_macro_auroc(probs, y)
    finite = ep_auroc[np.isfinite(ep_auroc)]
    auroc_ci = M.mean_ci95(finite)[1] if len(finite) else math.nan
    sens_ci, spec_ci = M.bootstrap_class_rates(pred, y, remap[cls], len(present), seed=seed or 0)
    return EvalResult(
        accuracy=acc,
        ci95=ci,
        accuracy_std=float(ep_acc.std()),
        balanced_accuracy=float(np.nanmean(counts.sensitivity)),
        macro_f1=float(M.episode_macro_f1(pred, y, N).mean()),
        auroc=float(np.nanmean(ep_auroc)),
        ece=rel.ece,
        nll=nll(logits, y),
        brier=brier_score(probs, y),
        ways=N,
        shots=shots,
        queries=queries,
        episodes=E,
        seed=seed,
        temperature=None if temperature is None else float(temperature),
        class_names=[preds.class_names[c] for c in present],
        class_ids=[int(c) for c in present],
        confusion=confusion,
        sensitivity=counts.sensitivity,
        specificity=counts.specificity,
        support=counts.support,
        reliability=rel,
        episode_accuracy=ep_acc,
        auroc_ci95=float(auroc_ci),
        sensitivity_ci=sens_ci,
        specificity_ci=spec_ci,
    )


def _check_temperature(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    return float(t)


def evaluate(
    learner: MetaLearner,
    test_set: Any,
    *,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 600,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    temperature: float | None = None,
    bins: int = 15,
    progress: bool = False,
    distributed: bool | None = None,
) -> EvalResult:
    """Evaluate a learner on ``episodes`` seeded N-way K-shot Q-query episodes of ``test_set``.

    Args:
        learner: any :class:`~medmeta.algorithms.base.MetaLearner` (moved to ``device``; run
            in eval mode, its mode restored afterwards).
        test_set: an :class:`~medmeta.data.ArrayDataset` (typically novel classes from
            :func:`~medmeta.data.episodes.split_classes`).
        ways, shots, queries: N, K and Q (queries per class).
        episodes: number of episodes (600 is the usual protocol).
        seed: seeds the episodes; the same seed gives the same episodes and numbers.
        batch_size: episodes per ``predict`` call (memory vs speed; no effect on results
            beyond floating-point reassociation inside the learner).
        device: where the learner runs.
        temperature: divide the logits by it before the softmax (temperature scaling; see
            :func:`~medmeta.eval.calibration.fit_temperature`).
        bins: number of ECE bins.
        progress: show a tqdm progress bar over the episodes.
        distributed: share the episodes among the processes of a ``torch.distributed``
            group (each predicts its shard, the predictions are gathered, every process
            returns the same result, equal to one process's); ``None`` = when a group of
            several processes exists or ``torchrun`` started this one. Every process of
            the group must then call :func:`evaluate` with the same arguments.

    Returns:
        :class:`EvalResult`. Accuracy is averaged over episodes with CI ``1.96 std / sqrt(E)``;
        balanced accuracy is the mean over dataset classes of their pooled sensitivity;
        macro-F1 and one-vs-rest AUROC (probabilities, midranks) are macro-averaged over an
        episode's classes, then over episodes; sensitivity/specificity of a class pool the
        episodes in which it appears; ECE/NLL/Brier pool all queries.

    Raises:
        DataError: the test set cannot supply such episodes (too few classes or examples).
        ValueError: bad ``episodes``, ``batch_size``, ``seed`` or ``temperature``.
    """
    if temperature is not None:
        _check_temperature(temperature)
    preds = collect_predictions(
        learner,
        test_set,
        ways=ways,
        shots=shots,
        queries=queries,
        episodes=episodes,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        distributed=distributed,
    )
    result = summarize(
        preds, shots=shots, queries=queries, seed=seed, temperature=temperature, bins=bins
    )
    labels = np.asarray(test_set.labels, dtype=np.int64)
    result.images = np.bincount(labels, minlength=max(result.class_ids) + 1)[result.class_ids]
    logger.info("evaluate: %s", result.summary())
    return result
