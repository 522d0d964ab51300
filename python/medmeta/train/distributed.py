"""Data-parallel meta-training on ``torch.distributed``: the process group, sharded
meta-batches, the meta-gradient all-reduce and the collectives :func:`~medmeta.train.meta_fit`
and :func:`~medmeta.eval.evaluate` use when started by ``torchrun``.

Design (the synchronous data parallelism of Goyal et al. 2017, "Accurate, Large Minibatch
SGD", applied to the tasks of a meta-batch): every process draws the same global
meta-batch of ``B`` episodes from the same seeded sampler (so the sampler state, saved in
checkpoints, does not depend on the number of processes), keeps its contiguous shard of
``n_r`` episodes (:func:`shard_batch`) and runs the learner's own ``meta_train_step`` on it.
An optimizer step pre-hook (:class:`GradientAllReduce`) then replaces every process's
gradient ``g_r`` (the mean over its shard) by ``sum_r (n_r / B) g_r`` (one all-reduce),
before the step: the mean over all ``B`` episodes, as one process computes it. That holds
for every learner whose step is "mean loss over episodes -> backward -> one optimizer step"
(the metric learners, MAML of any order) and for Reptile, whose pseudo-gradient
``theta - mean_t phi_t`` is linear in the episodes too. Loss, accuracy and the step's extra
statistics are averaged with the same weights, and so are the floating-point buffers
(batch-norm running statistics, :func:`reduce_after_step`), so every process holds the same
model after every step.

What is *not* equal to one process: batch norm in training mode normalises with the
statistics of the episodes a process holds (as DDP without ``SyncBatchNorm``), so a network
normalising across the episodes of a meta-batch trains slightly differently; so does one
drawing random numbers inside the step (dropout, SNAIL's support shuffling), whose streams
are consumed per shard. Networks without batch norm (``MLP(batch_norm=False)``) or with
per-episode normalisation and without dropout train to the single-process model within
float tolerance (tested for ProtoNet, second-order MAML and Reptile).

Failures: collectives run with a timeout (``MEDMETA_DIST_TIMEOUT`` seconds, default
:data:`DEFAULT_TIMEOUT_S`) and a failed one (a process died, was killed, raised, or
did not answer in time) raises :class:`DistributedError` naming the operation, instead of
hanging.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from medmeta.algorithms.base import StepResult

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_BACKEND",
    "ENV_TIMEOUT",
    "DistContext",
    "DistributedError",
    "GradientAllReduce",
    "agree",
    "all_gather_rows",
    "barrier",
    "env_world_size",
    "init_from_env",
    "reduce_after_step",
    "resolve",
    "shard_batch",
    "shard_bounds",
]

logger = logging.getLogger(__name__)

#: Seconds a collective waits for the other processes before failing.
DEFAULT_TIMEOUT_S = 300.0
#: Environment variable overriding :data:`DEFAULT_TIMEOUT_S`.
ENV_TIMEOUT = "MEDMETA_DIST_TIMEOUT"
#: Environment variable choosing the backend (default: ``nccl`` on CUDA, ``gloo`` on CPU).
ENV_BACKEND = "MEDMETA_DIST_BACKEND"

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

Batch = TypeVar("Batch")


class DistributedError(RuntimeError):
    """A collective operation failed: another process died, raised, or timed out."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group.

    Attributes:
        rank, world_size: the process's index and the number of processes.
        local_rank: its index on this machine (selects the GPU).
        backend: ``"gloo"`` or ``"nccl"``.
        device: where this process trains (``cuda:<local_rank>`` for ``cuda``).
        timeout_s: how long a collective waits for the others.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    timeout_s: float

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and results (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This process's ``[start, stop)`` of ``n`` items (:func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.world_size)

    def counts(self, n: int) -> list[int]:
        """How many of ``n`` items each process holds, by rank."""
        return [b - a for a, b in (shard_bounds(n, r, self.world_size) for r in range(self.world_size))]  # fmt: skip


# -- process group ---------------------------------------------------------------------


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when absent or unreadable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is None:
        text = os.environ.get(ENV_TIMEOUT)
        if text is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(text)
        except ValueError:
            raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"the distributed timeout must be a number of seconds > 0, got {timeout_s!r}")  # fmt: skip
    return float(timeout_s)


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def _device_for(device: str | torch.device, local_rank: int) -> torch.device:
    """``cuda`` without an index becomes ``cuda:<local_rank>`` (one GPU per process)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"device cuda: process {local_rank} on this machine needs GPU {local_rank}, "
                f"but {count} GPU(s) are visible; start at most {count} processes per machine"
            )
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init_from_env(
    device: str | torch.device = "cpu",
    *,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> DistContext:
    """Join (or reuse) the default process group from ``torchrun``'s environment.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; the group is created with the ``env://`` rendezvous, the backend
    ``backend`` (else ``$MEDMETA_DIST_BACKEND``, else ``nccl`` on CUDA and ``gloo`` on CPU)
    and a timeout of ``timeout_s`` (else ``$MEDMETA_DIST_TIMEOUT``, else
    :data:`DEFAULT_TIMEOUT_S` seconds) for every collective. A group that already exists
    is reused as it is.

    Raises:
        ValueError: a variable is missing or malformed (the message names it).
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    timeout = _timeout_s(timeout_s)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, str(dist.get_backend()),
                           _device_for(device, local), timeout)  # fmt: skip
    missing = [name for name in _REQUIRED_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"distributed training needs the environment variables {', '.join(_REQUIRED_ENV)} "
            f"(set by torchrun); {', '.join(missing)} missing. Start with: torchrun "
            "--standalone --nproc-per-node N -m medmeta train ... (or medmeta train --nproc N)"
        )
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    dev = _device_for(device, local)
    backend = backend or os.environ.get(ENV_BACKEND) or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )  # fmt: skip
    atexit.register(_shutdown)
    logger.info("process %d of %d joined the %s process group (timeout %g s)",
                rank, world, backend, timeout)  # fmt: skip
    return DistContext(rank, world, local, backend, dev, timeout)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve(distributed: bool | None, device: str | torch.device) -> DistContext | None:
    """The process group a training run uses, or ``None`` for one process.

    ``distributed=None`` (automatic): an existing group of several processes, else the one
    ``torchrun``'s environment describes when ``WORLD_SIZE > 1``, else none. ``True``
    requires the environment (any ``WORLD_SIZE``); ``False`` trains alone.
    """
    if distributed is False:
        return None
    if distributed is None:
        initialised = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if initialised else env_world_size()
        if world <= 1:
            return None
    return init_from_env(device)


# -- sharding ----------------------------------------------------------------------------


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of process ``rank``'s contiguous share of ``n`` items: the first
    ``n % world_size`` processes hold one more; shards in rank order cover ``0..n``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Process ``rank``'s episodes of a meta-batch: every tensor field of a batch dataclass
    (:class:`~medmeta.data.episodes.EpisodeBatch`,
    :class:`~medmeta.data.segmentation_episodes.SegmentationEpisodeBatch`; each ``[B, ...]``)
    sliced to ``[n_r, ...]``, the other fields (ways, shots, queries) kept.

    Raises:
        ValueError: the shard would be empty (``B < world_size``).
    """
    tensors = {f.name: getattr(batch, f.name) for f in fields(batch)}  # type: ignore[arg-type]
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    sizes = {int(v.shape[0]) for v in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"{type(batch).__name__}: tensor fields disagree on the episode count: {sizes}")  # fmt: skip
    (total,) = sizes
    start, stop = shard_bounds(total, rank, world_size)
    if stop <= start:
        raise ValueError(
            f"a meta-batch of {total} episodes cannot be shared by {world_size} processes: "
            f"meta_batch must be at least the number of processes"
        )
    return replace(batch, **{k: v[start:stop] for k, v in tensors.items()})  # type: ignore[type-var]


# -- collectives -------------------------------------------------------------------------


@contextmanager
def _collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn a failed collective into a :class:`DistributedError` naming ``what``."""
    try:
        yield
    except RuntimeError as err:  # DistBackendError, gloo's "Connection closed by peer", timeouts
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DistributedError(
            f"{what} failed in process {ctx.rank} of {ctx.world_size}: another process "
            f"stopped (it died, was killed or raised an error; its own output says why) or "
            f"did not answer within the {ctx.timeout_s:g} s timeout (${ENV_TIMEOUT}). "
            f"Cause: {first}"
        ) from err


def barrier(ctx: DistContext, what: str) -> None:
    """Wait until every process arrives (e.g. while rank 0 writes a checkpoint)."""
    flag = torch.zeros(1, device=ctx.device)
    with _collective(ctx, what):
        dist.all_reduce(flag)


def agree(ctx: DistContext, value: int, what: str) -> int:
    """``value``, after checking that every process holds the same one (one all-reduce).

    Raises:
        DistributedError: the processes disagree (e.g. they see different files).
    """
    t = torch.tensor([value, -value], dtype=torch.float64, device=ctx.device)
    with _collective(ctx, f"checking {what}"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    high, low = float(t[0]), -float(t[1])
    if high != low:
        raise DistributedError(
            f"the processes disagree about {what} (from {low:g} to {high:g}); every process "
            "must see the same files and settings"
        )
    return value


def all_gather_rows(ctx: DistContext, rows: torch.Tensor, counts: Sequence[int], what: str) -> torch.Tensor:  # fmt: skip
    """Concatenate every process's ``rows [counts[rank], ...]`` in rank order (padded to the
    largest share for the all-gather), on this process's device.

    Returns:
        ``[sum(counts), ...]``, identical on every process.
    """
    if rows.shape[0] != counts[ctx.rank]:
        raise ValueError(f"process {ctx.rank} holds {rows.shape[0]} rows, expected {counts[ctx.rank]}")  # fmt: skip
    rows = rows.to(ctx.device)
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in counts]
    with _collective(ctx, what):
        dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


class GradientAllReduce:
    """Optimizer step pre-hook: before every ``optimizer.step()``, every parameter's
    gradient becomes ``sum_r w_r g_r`` over the processes (one all-reduce per dtype and
    device), where ``w_r`` (:attr:`weight`, set per step to ``n_r / B``) is this process's
    share of the meta-batch. A parameter without a gradient on any process keeps none (as
    the optimizer would skip it in one process); one with a gradient somewhere gets zeros
    where it had none.

    Attributes:
        weight: this process's ``n_r / B`` for the current step.
        seconds, calls: time spent in the all-reduce (including waiting for the slowest
            process; CUDA synchronised before and after when ``timed``) and its count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, ctx: DistContext, *, timed: bool = False) -> None:  # fmt: skip
        self.ctx, self.timed = ctx, timed
        self.weight = 1.0 / ctx.world_size
        self.seconds, self.calls = 0.0, 0
        self._handle = optimizer.register_step_pre_hook(self._hook)

    def remove(self) -> None:
        """Unregister the hook (the optimizer steps alone again)."""
        self._handle.remove()

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.all_reduce(optimizer)

    def all_reduce(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace the gradients of ``optimizer``'s parameters by their weighted sum."""
        params = list({id(p): p for g in optimizer.param_groups for p in g["params"]}.values())
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError("distributed meta-training does not support sparse gradients")
            groups.setdefault((p.dtype, p.device), []).append(p)
        start = time.perf_counter()
        self._sync()
        for (dtype, device), ps in groups.items():
            present = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=device)
            grads = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps
            ]
            flat = torch.cat([*grads, present])
            n = flat.numel() - len(ps)
            flat[:n].mul_(self.weight)
            with _collective(self.ctx, "the all-reduce of the meta-gradients"):
                dist.all_reduce(flat)
            self._unpack(ps, flat)
        self._sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1

    @staticmethod
    def _unpack(ps: list[torch.Tensor], flat: torch.Tensor) -> None:
        present = flat[flat.numel() - len(ps) :] > 0
        offset = 0
        for p, has in zip(ps, present.tolist(), strict=True):
            piece = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if not has:
                p.grad = None
            elif p.grad is None:
                p.grad = piece.clone()
            else:
                p.grad.copy_(piece)

    def _sync(self) -> None:
        if self.timed and self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)


def reduce_after_step(
    ctx: DistContext, result: StepResult, weight: float, module: nn.Module
) -> StepResult:
    """After a sharded step: loss, accuracy and extra statistics averaged over the
    processes with weights ``n_r / B`` (as one process reports them), and ``module``'s
    floating-point buffers (batch-norm running statistics) replaced by their weighted
    average, so every process keeps the same model. One all-reduce (float64).
    """
    keys = sorted(result.extra)
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    stats = torch.tensor([result.loss, result.accuracy, *(float(result.extra[k]) for k in keys)],
                         dtype=torch.float64, device=ctx.device)  # fmt: skip
    packed = torch.cat([stats, *(b.detach().to(ctx.device, torch.float64).reshape(-1) for b in buffers)])  # fmt: skip
    packed.mul_(weight)
    with _collective(ctx, "the all-reduce of the step's loss, accuracy and buffers"):
        dist.all_reduce(packed)
    offset = stats.numel()
    with torch.no_grad():
        for b in buffers:
            b.copy_(packed[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
    values = packed[: stats.numel()].tolist()
    return StepResult(values[0], values[1], dict(zip(keys, values[2:], strict=True)))
