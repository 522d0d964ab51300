"""Episodic meta-training with validation on held-out classes, best-checkpoint selection,
atomic checkpoints, exact resume, CSV/JSON logs, mixed precision on CUDA and data-parallel
training over several processes (:mod:`medmeta.train.distributed`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medmeta.algorithms.base import MetaLearner, StepResult
from medmeta.algorithms.protonet import evaluating
from medmeta.algorithms.segmenter import dice_scores
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler
from medmeta.data.errors import check_count
from medmeta.data.segmentation_episodes import SegmentationEpisodeSampler
from medmeta.eval import regression
from medmeta.eval.evaluate import predict_episodes, predict_sharded
from medmeta.eval.metrics import mean_ci95
from medmeta.eval.regression import predict_regression_episodes, predict_regression_sharded
from medmeta.train import distributed as D
from medmeta.train.checkpoint import (
    FORMAT,
    atomic_save,
    get_rng_state,
    load_checkpoint,
    set_rng_state,
)
from medmeta.train.logs import TrainLog, jsonable

__all__ = ["FitResult", "meta_fit"]

logger = logging.getLogger(__name__)

OptimizerArg = (
    torch.optim.Optimizer | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
)
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: Offset between the training seed and the seed of the validation episodes.
VAL_SEED_OFFSET = 1


@dataclass
class FitResult:
    """What :func:`meta_fit` returns.

    Attributes:
        learner: the trained learner; with a validation set it holds the weights of the
            best validation step.
        history: logged rows (see :mod:`medmeta.train.logs`).
        best_step, best_accuracy, best_ci95: the best validation step and its accuracy with
            the 95% CI half-width (``None`` without a validation set); for regression
            learners the mean validation R² of the step with the lowest validation MSE.
        last_step: the number of steps trained in total.
        resumed_from: the step of the checkpoint the run resumed from, if any.
        out_dir, last_path, best_path, csv_path, json_path: files written (``None`` without
            ``out_dir``; ``best_path`` also without a validation set).
    """

    learner: MetaLearner
    history: list[dict[str, Any]]
    best_step: int | None
    best_accuracy: float | None
    best_ci95: float | None
    last_step: int
    resumed_from: int | None = None
    out_dir: Path | None = None
    last_path: Path | None = None
    best_path: Path | None = None
    csv_path: Path | None = None
    json_path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _amp_dtype(amp: bool | None, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; ``None`` (full precision) off CUDA."""
    if amp is False or device.type != "cuda":
        if amp and device.type != "cuda":
            logger.info("amp=True has no effect on %s; training in full precision", device)
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _uses_default_step(learner: MetaLearner) -> bool:
    return type(learner).meta_train_step is MetaLearner.meta_train_step


def _train_step(
    learner: MetaLearner,
    batch: EpisodeBatch,
    optimizer: torch.optim.Optimizer,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> StepResult:
    """One meta-update; under autocast (and with loss scaling for fp16) when ``amp_dtype``."""
    if amp_dtype is None:
        return learner.meta_train_step(batch, optimizer)
    if not _uses_default_step(learner):
        # the method's own update (e.g. Reptile) runs whole under autocast, without scaling
        with torch.autocast(device.type, dtype=amp_dtype):
            return learner.meta_train_step(batch, optimizer)
    learner.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype):
        loss, accuracy = learner.meta_loss(batch)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return StepResult(float(loss.detach().float()), float(accuracy.detach().float().mean()))


def _validate(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    seed: int,
    episodes: int,
    batch_size: int,
    device: torch.device,
    ctx: D.DistContext | None = None,
) -> tuple[float, float, float]:
    """(accuracy, 95% CI half-width, NLL) on the same ``episodes`` validation episodes
    (shared by the processes of ``ctx``, their predictions gathered)."""
    sampler.generator.manual_seed(seed)
    if ctx is not None:
        preds = predict_sharded(learner, sampler, episodes, batch_size, ctx)
    else:
        preds = predict_episodes(learner, sampler, episodes, batch_size, device)
    per_episode = (preds.logits.argmax(-1) == preds.labels).double().mean(-1)
    acc, ci = mean_ci95(per_episode.numpy())
    loss = torch.nn.functional.cross_entropy(
        preds.logits.flatten(0, 1).double(), preds.labels.flatten()
    )
    return acc, ci, float(loss)


def _validate_regression(
    learner: MetaLearner,
    sampler: Any,
    seed: int,
    episodes: int,
    batch_size: int,
    device: torch.device,
    ctx: D.DistContext | None = None,
) -> tuple[float, float, float]:
    """(mean query R², its 95% CI half-width, query MSE) on the same ``episodes``
    validation episodes (shared by the processes of ``ctx``, their predictions gathered);
    R² over the episodes where it is defined (0 if none is)."""
    sampler.generator.manual_seed(seed)
    if ctx is not None:
        preds = predict_regression_sharded(learner, sampler, episodes, batch_size, ctx)
    else:
        preds = predict_regression_episodes(learner, sampler, episodes, batch_size, device)
    per_r2 = regression.r2(preds.pred.numpy(), preds.target.numpy())
    defined = per_r2[np.isfinite(per_r2)]
    r2_mean, r2_ci = mean_ci95(defined) if defined.size else (0.0, 0.0)
    return r2_mean, r2_ci, float(regression.mse(preds.pred.numpy(), preds.target.numpy()).mean())


def _check_task_data(learner: MetaLearner, train_set: Any, val_set: Any | None) -> None:
    """A regression learner trains on regression tasks, and only a regression learner does."""
    for name, data in (("train_set", train_set), ("val_set", val_set)):
        if data is None:
            continue
        data_task = getattr(data, "task", None)
        if learner.task == "regression" and data_task != "regression":
            raise ValueError(
                f"{learner.name} is a regression learner: {name} must be regression tasks "
                f"(medmeta.data.regression_tasks.RegressionTasks), got {type(data).__name__}"
            )
        if data_task == "regression" and learner.task != "regression":
            raise ValueError(
                f"{name} holds regression tasks but {learner.name} is a {learner.task} "
                f"learner; build it with task='regression' (available: "
                "medmeta.algorithms.available('regression'))"
            )


def _validate_segmentation(
    learner: MetaLearner, sampler: Any, seed: int, episodes: int, device: torch.device,
    ctx: D.DistContext | None = None,
) -> tuple[float, float, float]:  # fmt: skip
    """(mean foreground Dice, 95% CI half-width, pixel NLL) on ``episodes`` episodes
    (each process of ``ctx`` scores its shard; the per-episode scores are gathered)."""
    sampler.generator.manual_seed(seed)
    mine = range(episodes) if ctx is None else range(*ctx.shard(episodes))
    scores: list[tuple[float, float]] = []
    with torch.no_grad(), evaluating(learner):
        for index in range(mine.stop):
            episode = sampler.sample()  # every episode is drawn: the same ones on any shard
            if index not in mine:
                continue
            b = episode.to(device)
            logits = learner.predict(b.support_x, b.support_labels, b.query_x)
            nll = float(F.cross_entropy(logits[0].double(), b.query_masks[0]))
            dice = dice_scores(logits.argmax(2), b.query_masks, b.ways + 1)
            scores.append((float(torch.nan_to_num(dice, nan=1.0).mean()), nll))
    rows = torch.tensor(scores, dtype=torch.float64).reshape(-1, 2)
    if ctx is not None:
        rows = D.all_gather_rows(ctx, rows, ctx.counts(episodes), "the all-gather of the validation Dice").cpu()  # fmt: skip
    mean, ci = mean_ci95(rows[:, 0].numpy())
    return mean, ci, float(rows[:, 1].mean())


def _self_supervised(learner: MetaLearner, train_set: Any, flag: bool | None) -> bool:
    """Whether a segmentation learner trains on superpixels (see :func:`meta_fit`)."""
    if learner.task != "segmentation":
        if flag:
            raise ValueError(
                f"self_supervised=True needs a segmentation learner (panet, alpnet); "
                f"{learner.name} is a {learner.task} learner"
            )
        return False
    if flag is None:
        return getattr(train_set, "masks", None) is None
    return bool(flag)


def _samplers(
    learner: MetaLearner, train_set: Any, val_set: Any | None, ways: int, val_ways: int,
    shots: int, queries: int, meta_batch: int, seed: int, self_supervised: bool,
) -> tuple[Any, Any | None]:  # fmt: skip
    """The training sampler and the validation sampler (``None`` without ``val_set``).

    A data set with an ``episode_sampler(ways, shots, queries, *, batch_size, generator)``
    method (e.g. assay tasks, regression tasks) makes its own
    :class:`~medmeta.data.episodes.SeededSampler`."""
    val_seed = seed + VAL_SEED_OFFSET
    if hasattr(train_set, "episode_sampler"):
        train = train_set.episode_sampler(
            ways, shots, queries, batch_size=meta_batch, generator=seed
        )
        val = (
            val_set.episode_sampler(val_ways, shots, queries, batch_size=1, generator=val_seed)
            if val_set is not None
            else None
        )
        return train, val
    if learner.task == "segmentation":
        if self_supervised:
            from medmeta.data.superpixel_episodes import SuperpixelEpisodeSampler as kind
        else:
            kind = SegmentationEpisodeSampler
        train = kind(train_set, ways, shots, queries, batch_size=meta_batch, generator=seed)
        val = (
            SegmentationEpisodeSampler(val_set, val_ways, shots, queries, generator=val_seed)
            if val_set is not None
            else None
        )
        return train, val
    train = EpisodeSampler(train_set, ways, shots, queries, batch_size=meta_batch, generator=seed)
    val = (
        EpisodeSampler(val_set, val_ways, shots, queries, batch_size=1, generator=val_seed)
        if val_set is not None
        else None
    )
    return train, val


def _improves(
    learner: MetaLearner, best: Mapping[str, Any], val_score: float, val_loss: float
) -> bool:
    """Whether a validation beats the best so far: a higher accuracy (Dice), or for
    regression a lower MSE."""
    if best["accuracy"] is None:
        return True
    if learner.task == "regression":
        return val_loss < best.get("loss", math.inf)
    return val_score > best["accuracy"]


def _restore_best(
    best_path: Path, best: Mapping[str, Any], last_path: Path
) -> dict[str, torch.Tensor] | None:
    """The weights of the best step recorded in ``last.pt``, from ``best.pt``; ``None``
    (with a warning) when ``best.pt`` is missing, unreadable or of another step. The
    recorded best is then forgotten, so the next validation (there is one at the last
    step) writes a new ``best.pt`` and the weights returned, ``best.pt`` and the model card
    always agree."""
    reason = "is missing"
    if best_path.exists():
        try:
            best_ckpt = load_checkpoint(best_path)
        except (OSError, RuntimeError, ValueError, EOFError) as err:
            reason = f"cannot be read ({err})"
        else:
            if best_ckpt["step"] == best["step"]:
                return best_ckpt["learner"]["state_dict"]
            reason = f"holds step {best_ckpt['step']}"
    logger.warning(
        "%s %s, not the best step %d recorded in %s: that step is forgotten and the best "
        "step is chosen again from the validations after resuming",
        best_path, reason, best["step"], last_path,
    )  # fmt: skip
    return None


def _make_optimizer(
    learner: MetaLearner, optimizer: OptimizerArg | None, lr: float
) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(learner.parameters(), lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        ours = {id(p) for p in learner.parameters()}
        theirs = [p for g in optimizer.param_groups for p in g["params"]]
        if not theirs or any(id(p) not in ours for p in theirs):
            raise ValueError("optimizer must optimise the learner's parameters")
        return optimizer
    if callable(optimizer):
        return optimizer(learner.parameters())
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a factory of one, got {type(optimizer).__name__}"
    )


def _trajectory_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (``steps`` may grow)."""
    keys = ("learner", "learner_class", "ways", "shots", "queries", "meta_batch", "seed",
            "val_ways", "val_every", "val_episodes", "amp_dtype", "self_supervised")  # fmt: skip
    out = jsonable({k: config.get(k) for k in keys})
    out["self_supervised"] = bool(out["self_supervised"])  # absent before segmentation
    return out


def meta_fit(
    learner: MetaLearner,
    train_set: Any,
    val_set: Any | None = None,
    *,
    ways: int,
    shots: int,
    queries: int,
    steps: int,
    meta_batch: int,
    seed: int,
    lr: float = 1e-3,
    optimizer: OptimizerArg | None = None,
    scheduler: SchedulerFactory | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    val_every: int = 500,
    val_episodes: int = 200,
    val_ways: int | None = None,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    progress: bool = True,
    resume: bool = True,
    log_every: int = 50,
    checkpoint_every: int | None = None,
    backbone_spec: Mapping[str, Any] | None = None,
    self_supervised: bool | None = None,
    distributed: bool | None = None,
) -> FitResult:
    """Meta-train ``learner`` on episodes of ``train_set`` for ``steps`` meta-updates.

    Each step samples ``meta_batch`` N-way K-shot Q-query episodes (``[B, N*K, ...]``
    support and ``[B, N*Q, ...]`` query tensors) from a sampler seeded with ``seed`` and
    calls ``learner.meta_train_step``. Every ``val_every`` steps (and at the last step) the
    learner predicts the same ``val_episodes`` episodes of ``val_set`` (seeded with
    ``seed + 1``); the step with the best validation accuracy is kept (``best.pt``) and its
    weights are loaded into the learner at the end.

    With ``out_dir``, ``last.pt`` is written atomically every ``checkpoint_every`` steps
    (default: ``val_every``) and at the end, together with ``log.csv`` and ``log.json``.
    With ``resume=True`` an existing ``last.pt`` is restored (weights, optimizer,
    scheduler, grad scaler, step, sampler generator, torch/numpy/Python RNG states, history)
    and the learner's own generators (:meth:`~medmeta.algorithms.MetaLearner.generators`,
    e.g. SNAIL's support shuffling) and training continues to ``steps``: the result is
    bit-identical to an uninterrupted run on the same device and thread settings, for every
    registered algorithm (tested). If ``best.pt`` does not hold the best step recorded in
    ``last.pt``, that step is forgotten (with a warning) and the best is chosen again from
    the validations after resuming (one runs at the last step).

    Training runs in a forked torch RNG seeded with ``seed`` (dropout etc.), so the
    caller's global torch RNG is left as it was.

    Args:
        learner: the :class:`~medmeta.algorithms.base.MetaLearner` to train (in place).
        train_set: meta-training data (an :class:`~medmeta.data.ArrayDataset`).
        val_set: meta-validation data with classes disjoint from ``train_set`` (optional).
        ways, shots, queries: N, K and Q of the training (and validation) episodes.
        steps: total number of meta-updates (>= 1).
        meta_batch: episodes per meta-update B.
        seed: seeds the training episodes, the training RNG and the validation episodes.
        lr: learning rate of the default Adam optimiser.
        optimizer: an optimiser over the learner's parameters, or a factory
            ``params -> optimizer`` (default ``Adam(lr)``).
        scheduler: a factory ``optimizer -> LR scheduler``, stepped after every update.
        out_dir: folder for checkpoints and logs (nothing written when ``None``).
        val_every: validate every this many steps.
        val_episodes: number of validation episodes.
        val_ways: N of the validation episodes (default ``ways``; validation sets often
            have fewer classes, and every learner validates fewer ways than it trains).
        device: where to train; the learner is moved there.
        amp: mixed precision: ``None`` = on CUDA only; bf16 autocast where supported,
            else fp16 with a ``GradScaler``. No effect on CPU.
        progress: show a tqdm progress bar.
        resume: continue from ``out_dir/last.pt`` when it exists (else it is overwritten).
        log_every: add a history/CSV row (means since the previous row) every this many steps.
        checkpoint_every: write ``last.pt`` every this many steps.
        backbone_spec: description of the backbone stored in checkpoints so
            :func:`~medmeta.train.load_learner` can rebuild it, e.g.
            ``{"name": "conv4", "input_shape": [3, 28, 28], "kwargs": {"hidden": 32}}``.
        self_supervised: segmentation learners only: train on superpixel pseudo-classes of
            the images (SSL-ALPNet, :class:`~medmeta.data.SuperpixelEpisodeSampler`), using
            no label. ``None`` (default): self-supervised exactly when ``train_set`` holds
            no label maps (raw images or a dataset without ``masks``).
        distributed: train as one of several ``torch.distributed`` processes (see below).
            ``None`` (default): when a process group of several processes exists or
            ``torchrun`` started this process with ``WORLD_SIZE > 1``; ``False``: alone.

    Regression learners (``learner.task == "regression"``: MAML, first-order MAML, Meta-SGD,
    Reptile built with ``task="regression"``) train on a
    :class:`~medmeta.data.regression_tasks.RegressionTasks` (``ways=1``, ``shots`` support
    and ``queries`` query rows per episode). Their ``accuracy`` (history, progress bar,
    ``best_accuracy``) is the query R² (in training: of the standardised targets, 0 for an
    episode whose query targets are constant; in validation: the mean over validation
    episodes, with ``val_ci95``), ``val_loss`` is the validation MSE in the targets' units,
    and the best step is the one with the lowest validation MSE (``best`` also records it
    as ``loss``).

    Segmentation learners (``learner.task == "segmentation"``: PANet, ALPNet) train on
    :class:`~medmeta.data.SegmentationEpisodeBatch` es of ``train_set`` (a
    :class:`~medmeta.data.SegmentationDataset`, ``ways`` organs per episode, ``shots``
    support and ``queries`` query slices; or superpixel episodes, see
    ``self_supervised``); their ``accuracy`` (in the history, the progress bar and the
    best-step choice) is the mean foreground Dice of the query label maps, validated on
    episodes of the labelled ``val_set``.

    Several processes (``torchrun --standalone --nproc-per-node P``, or
    ``medmeta train --nproc P``; see :mod:`medmeta.train.distributed`): every process
    draws the same global meta-batch of ``meta_batch`` episodes, trains on its shard and
    the meta-gradients are all-reduced before each step, so the model equals the
    single-process one within float tolerance (for networks without cross-episode batch
    norm or dropout). Validation episodes are shared too and their predictions gathered.
    Only rank 0 writes checkpoints and logs (the others wait at a barrier); a resumed run
    may use another number of processes. Every process returns the same
    :class:`FitResult`. ``meta_batch`` must be at least the number of processes; fp16 loss
    scaling is not supported (bf16 is). Regression validation runs whole on every process.

    Returns:
        :class:`FitResult`.

    Raises:
        DataError: the data cannot supply the episodes (e.g. ``ways`` above the number of
            classes), raised before any training.
        ValueError: bad arguments (e.g. ``ways`` or ``val_ways`` above what a learner with an
            N-way output layer has), or a checkpoint in ``out_dir`` from different settings.
        FloatingPointError: the training loss became NaN/inf.
        DistributedError: another process died, raised or stopped answering (timeout).
    """
    checkpoint_every = _check_arguments(
        learner, steps=steps, meta_batch=meta_batch, val_every=val_every,
        val_episodes=val_episodes, log_every=log_every, checkpoint_every=checkpoint_every,
        seed=seed, lr=lr,
    )  # fmt: skip
    ctx = D.resolve(distributed, device)
    dev = torch.device(device) if ctx is None else ctx.device
    amp_dtype = _amp_dtype(amp, dev)
    val_n = ways if val_ways is None else val_ways
    for n in (ways, val_n):  # before any training: a fixed-width learner's limit
        learner.check_ways(n)
    _check_task_data(learner, train_set, val_set)
    self_supervised = _self_supervised(learner, train_set, self_supervised)
    train_sampler, val_sampler = _samplers(
        learner, train_set, val_set, ways, val_n, shots, queries, meta_batch, seed,
        self_supervised,
    )  # fmt: skip
    learner.to(dev)
    opt = _make_optimizer(learner, optimizer, lr)
    sched = scheduler(opt) if scheduler is not None else None
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    if amp_dtype == torch.float16 and not _uses_default_step(learner):
        logger.warning(
            "%s has its own meta_train_step: fp16 autocast runs without loss scaling",
            type(learner).__name__,
        )
    if ctx is not None:
        _check_distributed(ctx, meta_batch, scaler)
    config: dict[str, Any] = {
        "learner": learner.spec(),
        "learner_class": f"{type(learner).__module__}.{type(learner).__qualname__}",
        "backbone": dict(backbone_spec) if backbone_spec is not None else None,
        "ways": ways, "shots": shots, "queries": queries, "steps": steps,
        "meta_batch": meta_batch, "seed": seed, "lr": float(lr),
        "optimizer": type(opt).__name__, "task": learner.task,
        "self_supervised": self_supervised,
        "val_ways": val_n if val_set is not None else None,
        "val_every": val_every,
        "val_episodes": val_episodes if val_set is not None else None,
        "device": str(dev),
        "amp_dtype": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "log_every": log_every, "checkpoint_every": checkpoint_every,
        "processes": 1 if ctx is None else ctx.world_size,
    }  # fmt: skip
    schedule = _Schedule(steps, val_every, val_episodes, seed + VAL_SEED_OFFSET, meta_batch,
                         log_every, checkpoint_every)  # fmt: skip
    run = _Run(learner, train_sampler, val_sampler, opt, sched, scaler, amp_dtype, dev, config,
               schedule, ctx, _RunFiles(Path(out_dir), ctx) if out_dir is not None else None)  # fmt: skip
    cuda_devices = (
        [dev.index if dev.index is not None else torch.cuda.current_device()]
        if dev.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        run.begin(resume)
        show = progress and (ctx is None or ctx.is_main)
        bar = tqdm(total=steps, initial=run.state.step, disable=not show, desc="meta-train",
                   dynamic_ncols=True)  # fmt: skip
        try:
            while run.state.step < steps:
                run.step(bar)
                bar.update(1)
        finally:
            bar.close()
            run.close()
    return run.finish()


def _check_arguments(
    learner: MetaLearner, *, steps: int, meta_batch: int, val_every: int, val_episodes: int,
    log_every: int, checkpoint_every: int | None, seed: int, lr: float,
) -> int:  # fmt: skip
    """Refuse bad :func:`meta_fit` arguments; returns ``checkpoint_every`` with its default."""
    check_count("steps", steps, 1)
    check_count("meta_batch", meta_batch, 1)
    check_count("val_every", val_every, 1)
    check_count("val_episodes", val_episodes, 1)
    check_count("log_every", log_every, 1)
    checkpoint_every = val_every if checkpoint_every is None else checkpoint_every
    check_count("checkpoint_every", checkpoint_every, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(learner, MetaLearner):
        raise TypeError(f"learner must be a MetaLearner, got {type(learner).__name__}")
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (lr > 0 and math.isfinite(lr))
    ):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return checkpoint_every


def _check_distributed(
    ctx: D.DistContext, meta_batch: int, scaler: torch.amp.GradScaler | None
) -> None:
    """What sharded training needs: a shard for every process, no fp16 loss scaling (its
    per-process inf checks would let the processes skip different steps)."""
    if meta_batch < ctx.world_size:
        raise ValueError(
            f"meta_batch={meta_batch} is below the number of processes ({ctx.world_size}): "
            "every process trains on a shard of the meta-batch"
        )
    if scaler is not None:
        raise ValueError(
            "fp16 mixed precision (with loss scaling) is not supported with several "
            "processes: pass amp=False, or use a GPU with bf16"
        )


@dataclass(frozen=True)
class _Schedule:
    """When :class:`_Run` validates, logs and checkpoints."""

    steps: int
    val_every: int
    val_episodes: int
    val_seed: int
    meta_batch: int
    log_every: int
    checkpoint_every: int


def _no_best() -> dict[str, Any]:
    return {"step": None, "accuracy": None, "ci95": None}


def _fresh_accum() -> dict[str, Any]:
    return {"loss": 0.0, "accuracy": 0.0, "n": 0, "extra": {}}


@dataclass
class _State:
    """What a run carries from step to step besides the weights and optimiser (all of it
    goes into ``last.pt``)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=_no_best)
    best_state: dict[str, torch.Tensor] | None = None
    accum: dict[str, Any] = field(default_factory=_fresh_accum)
    elapsed: float = 0.0
    resumed_from: int | None = None
    t_start: float = field(default_factory=time.perf_counter)

    def elapsed_now(self) -> float:
        return self.elapsed + time.perf_counter() - self.t_start


class _RunFiles:
    """``last.pt``, ``best.pt``, ``log.csv`` and ``log.json`` of a run folder. With several
    processes only rank 0 writes; the others wait at a barrier until it has."""

    def __init__(self, out: Path, ctx: D.DistContext | None) -> None:
        self.out, self.ctx = out, ctx
        self.last, self.best = out / "last.pt", out / "best.pt"
        self.log = TrainLog(out)
        self.writes = ctx is None or ctx.is_main

    def wrote(self, what: str) -> None:
        """The others wait here until rank 0 has written ``what``."""
        if self.ctx is not None:
            D.barrier(self.ctx, f"waiting for rank 0 to write {what}")

    def start_fresh(self) -> None:
        if self.writes:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in (self.last, self.best):
                if stale.exists():
                    logger.info("starting afresh: removing %s", stale)
                    stale.unlink()
            self.log.reset([])
        self.wrote(f"a fresh {self.out}")


class _Run:
    """One :func:`meta_fit` run: its objects, its :class:`_State` and the steps."""

    def __init__(
        self, learner: MetaLearner, sampler: Any, val_sampler: Any | None,
        opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler | None,
        amp_dtype: torch.dtype | None, dev: torch.device, config: dict[str, Any],
        schedule: _Schedule, ctx: D.DistContext | None, files: _RunFiles | None,
    ) -> None:  # fmt: skip
        self.learner, self.sampler, self.val_sampler = learner, sampler, val_sampler
        self.opt, self.sched, self.scaler, self.amp_dtype = opt, sched, scaler, amp_dtype
        self.dev, self.config, self.schedule = dev, config, schedule
        self.ctx, self.files = ctx, files
        self.state = _State()
        self.reducer = D.GradientAllReduce(opt, ctx) if ctx is not None else None

    def close(self) -> None:
        """Unhook the gradient all-reduce from the (possibly caller's) optimizer."""
        if self.reducer is not None:
            self.reducer.remove()

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint(self, kind: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": kind,
            "step": self.state.step,
            "learner": {
                "spec": self.learner.spec(),
                "class": self.config["learner_class"],
                "state_dict": self.learner.state_dict(),
            },
            "backbone": self.config["backbone"],
            "config": self.config,
            "torch_version": str(torch.__version__),
        }

    def save_last(self) -> None:
        assert self.files is not None
        st = self.state
        ckpt = self.checkpoint("last")
        ckpt.update(
            optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict() if self.sched is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            sampler=self.sampler.state_dict(),
            rng=get_rng_state(self.dev),
            learner_generators=self.learner.generator_states(),
            history=st.history,
            best=st.best,
            accum=st.accum,
            elapsed=st.elapsed_now(),
        )
        atomic_save(ckpt, self.files.last)
        self.write_log_json()

    def write_log_json(self) -> None:
        """``log.json`` from the state: after each ``last.pt``, and on resuming (a run killed
        between the two finds it a step behind)."""
        assert self.files is not None
        st = self.state
        self.files.log.write_json(
            {"format": "medmeta.trainlog/1", "config": self.config, "step": st.step,
             "finished": st.step >= self.schedule.steps, "best": st.best, "history": st.history}
        )  # fmt: skip

    def begin(self, resume: bool) -> None:
        """Resume from ``last.pt`` (when asked and present) or start afresh."""
        files = self.files
        if files is not None and resume and files.last.exists():
            self.restore(files.last)
        elif files is not None:
            files.start_fresh()
        if self.ctx is not None:
            D.agree(self.ctx, self.state.step, "the step to resume from")
        self.state.t_start = time.perf_counter()

    def restore(self, last_path: Path) -> None:
        """Weights, optimiser, scheduler, scaler, sampler, RNG and :class:`_State` from
        ``last.pt`` (every process reads it)."""
        assert self.files is not None
        ckpt = load_checkpoint(last_path)
        ours, theirs = _trajectory_config(self.config), _trajectory_config(ckpt["config"])
        if theirs != ours:
            raise ValueError(
                f"{last_path} was written with other settings ({theirs}) than this run "
                f"({ours}); use another out_dir or resume=False"
            )
        if ckpt["step"] > self.schedule.steps:
            raise ValueError(f"{last_path} is at step {ckpt['step']}, beyond steps={self.schedule.steps}")  # fmt: skip
        learner = self.learner
        learner.load_state_dict(ckpt["learner"]["state_dict"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.sched is not None and ckpt["scheduler"] is not None:
            self.sched.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"], self.dev)
        if "learner_generators" in ckpt:
            learner.load_generator_states(ckpt["learner_generators"])
        elif learner.generators():
            logger.warning(
                "%s predates saved learner generators: %s start afresh, so the resumed "
                "run is not bit-identical to an uninterrupted one",
                last_path, ", ".join(learner.generators()),
            )  # fmt: skip
        st = self.state
        st.step = st.resumed_from = int(ckpt["step"])
        st.history = [dict(r) for r in ckpt["history"]]
        st.best, st.accum = dict(ckpt["best"]), dict(ckpt["accum"])
        st.elapsed = float(ckpt["elapsed"])
        if st.best["step"] is not None:
            st.best_state = _restore_best(self.files.best, st.best, last_path)
            if st.best_state is None:
                st.best = _no_best()
        if self.files.writes:
            self.files.log.reset(st.history)
            self.write_log_json()
        logger.info("resuming from %s at step %d", last_path, st.step)

    # -- one step ------------------------------------------------------------------
    def train_step(self) -> StepResult:
        """Sample the global meta-batch, train on this process's shard, all-reduce."""
        batch = self.sampler.sample()
        weight = 1.0
        if self.ctx is not None:
            total = batch.batch_size
            batch = D.shard_batch(batch, self.ctx.rank, self.ctx.world_size)
            weight = batch.batch_size / total
            assert self.reducer is not None
            self.reducer.weight = weight
        batch = batch.to(self.dev, non_blocking=True)
        result = _train_step(self.learner, batch, self.opt, self.amp_dtype, self.scaler, self.dev)
        if self.ctx is not None:
            result = D.reduce_after_step(self.ctx, result, weight, self.learner)
        return result

    def step(self, bar: Any) -> None:
        """One meta-update, then validation, a log row and checkpoints when due."""
        st, sc = self.state, self.schedule
        lr_now = float(self.opt.param_groups[0]["lr"])
        result = self.train_step()
        if not math.isfinite(result.loss):
            raise FloatingPointError(
                f"training loss is {result.loss} at step {st.step + 1}; lower lr or check the data"
            )
        if self.sched is not None:
            self.sched.step()
        st.step += 1
        st.accum["loss"] += result.loss
        st.accum["accuracy"] += result.accuracy
        st.accum["n"] += 1
        for k, v in result.extra.items():
            st.accum["extra"][k] = st.accum["extra"].get(k, 0.0) + float(v)
        validate = self.val_sampler is not None and (st.step % sc.val_every == 0 or st.step == sc.steps)  # fmt: skip
        val = self.validate() if validate else (None, None, None)
        improved = validate and self.update_best(*val)
        if validate or st.step % sc.log_every == 0 or st.step == sc.steps:
            self.add_row(val, lr_now, bar)
        # also after a new best.pt, so that best.pt is never newer than last.pt
        if self.files is not None and (improved or st.step % sc.checkpoint_every == 0 or st.step == sc.steps):  # fmt: skip
            if self.files.writes:
                self.save_last()
            self.files.wrote(f"the checkpoints of step {st.step}")

    def validate(self) -> tuple[float, float, float]:
        """(accuracy or Dice or R², its 95% CI half-width, loss) on the validation episodes."""
        learner, sc, dev, ctx = self.learner, self.schedule, self.dev, self.ctx
        if learner.task == "segmentation":
            val = _validate_segmentation(learner, self.val_sampler, sc.val_seed, sc.val_episodes, dev, ctx)  # fmt: skip
        elif learner.task == "regression":
            val = _validate_regression(learner, self.val_sampler, sc.val_seed, sc.val_episodes, sc.meta_batch, dev, ctx)  # fmt: skip
        else:
            val = _validate(learner, self.val_sampler, sc.val_seed, sc.val_episodes, sc.meta_batch, dev, ctx)  # fmt: skip
        acc, ci, loss = val
        if learner.task == "regression":
            logger.info("step %d: val MSE %.4g, R² %.3f ± %.3f (%d episodes)",
                        self.state.step, loss, acc, ci, sc.val_episodes)  # fmt: skip
        else:
            logger.info("step %d: val accuracy %.2f ± %.2f%% (%d episodes)",
                        self.state.step, 100 * acc, 100 * ci, sc.val_episodes)  # fmt: skip
        return acc, ci, loss

    def update_best(self, acc: float, ci: float, loss: float) -> bool:
        """Record a better validation (and write ``best.pt``); whether it was better."""
        st = self.state
        if not _improves(self.learner, st.best, acc, loss):
            return False
        st.best = {"step": st.step, "accuracy": acc, "ci95": ci}
        if self.learner.task == "regression":
            st.best["loss"] = loss
        st.best_state = {k: v.detach().clone() for k, v in self.learner.state_dict().items()}
        if self.files is not None and self.files.writes:
            ckpt = self.checkpoint("best")
            ckpt.update(val_accuracy=acc, val_ci95=ci, val_loss=loss)
            atomic_save(ckpt, self.files.best)
        return True

    def add_row(self, val: tuple[Any, Any, Any], lr_now: float, bar: Any) -> None:
        """A history (and CSV) row with the means since the previous one."""
        st = self.state
        n = max(st.accum["n"], 1)
        row = {
            "step": st.step,
            "loss": st.accum["loss"] / n,
            "accuracy": st.accum["accuracy"] / n,
            "val_accuracy": val[0],
            "val_ci95": val[1],
            "val_loss": val[2],
            "lr": lr_now,
            "time": st.elapsed_now(),
            "extra": {k: v / n for k, v in st.accum["extra"].items()},
        }
        st.history.append(row)
        st.accum = _fresh_accum()
        if self.files is not None and self.files.writes:
            self.files.log.append(row)
        post = {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.3f}"}
        if st.best["accuracy"] is not None:
            post["best_val"] = f"{st.best['accuracy']:.3f}"
        bar.set_postfix(post, refresh=False)

    # -- the end -------------------------------------------------------------------
    def finish(self) -> FitResult:
        """Load the best validated weights and describe the run."""
        st, learner, files = self.state, self.learner, self.files
        if self.val_sampler is not None and st.best_state is not None:
            learner.load_state_dict(st.best_state)
            if learner.task == "regression":
                logger.info("loaded the best validation step %d (MSE %.4g, R² %.3f)",
                            st.best["step"], st.best["loss"], st.best["accuracy"])  # fmt: skip
            else:
                logger.info("loaded the best validation step %d (accuracy %.2f%%)",
                            st.best["step"], 100 * st.best["accuracy"])  # fmt: skip
        return FitResult(
            learner=learner,
            history=st.history,
            best_step=st.best["step"],
            best_accuracy=st.best["accuracy"],
            best_ci95=st.best["ci95"],
            last_step=st.step,
            resumed_from=st.resumed_from,
            out_dir=files.out if files else None,
            last_path=files.last if files else None,
            best_path=files.best if (files is not None and st.best["step"] is not None) else None,
            csv_path=files.log.csv_path if files else None,
            json_path=files.log.json_path if files else None,
            config=self.config,
        )
