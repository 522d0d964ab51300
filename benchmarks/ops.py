"""Benchmark of the native episode ops against the best pure-PyTorch formulations.

    python -m benchmarks ops [--device cpu|cuda] [--quick] [--threads 2] [--out benchmarks/results]
    python -m benchmarks.ops ...                      (same)

For every op, forward and forward+backward, at episode shapes that cover B 1-256,
N 5-20, K 1-10, Q 15-75, D 64-1600 (and realistic parameter lists for the inner update),
medmeta is timed beside the PyTorch formulations a user would otherwise write, on the
same input tensors, after checking every formulation, medmeta included, against the
float64 reference (``medmeta.ops._reference`` on float64 copies of the inputs): the
outputs for the forward, every input gradient for forward+backward, within a float32
tolerance that grows with the length of the op's sums (:func:`float32_tolerance`). A
medmeta disagreement fails the run; a baseline that disagrees is recorded with its error
and not timed.

Writes ``ops-<device>.json`` (environment, one record per op/pass/shape/formulation, the
per-point comparison and the per-op summary), ``ops-<device>.png`` (speedup of medmeta over
the best torch formulation against size, one panel per op and pass) and ``ops-<device>.md``
(summary tables and the targets). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import _harness as H

FWD = "forward"
FWD_BWD = "forward+backward"
PASSES = (FWD, FWD_BWD)

OPS = ("pairwise_distance", "prototypical_loss", "prototypes", "masked_prototypes", "inner_update")
X_LABELS = {op: "B (episodes)" for op in OPS} | {"inner_update": "T (tasks)"}

SHAPE_SETS = ("default", "segmentation")
# The segmentation set sweeps the spatial size of one episode (B = 1) instead of B.
SEGMENTATION_X_LABELS = {
    "masked_prototypes": "H·W (cells per support feature map)",
    "pairwise_distance": "n·h·w (query feature positions)",
}
SEGMENTATION_PREFIX = "seg "  # starts the series name of every segmentation-set point


def x_name(op: str, series: str) -> str:
    """The name of a point's sweep variable: B, T, or H·W / n·h·w for the segmentation set."""
    segmentation = series.startswith(SEGMENTATION_PREFIX)
    label = (SEGMENTATION_X_LABELS if segmentation else X_LABELS).get(op, "x")
    return label.split(" ")[0]


BROADCAST_MAX_ELEMENTS = 2**23  # the [B,Q,N,D] broadcast formulation only below this
EASYFSL_MAX_B = 32  # easyfsl's single-episode loop, run over B episodes, only up to here

LOOP_FORMULATIONS = (  # the per-tensor loops of the inner update (the ≥5× GPU target)
    "loop: p - lr*g",
    "loop: torch.add(p, g, alpha=-lr)",
    "loop: p - a*g",
    "loop: torch.addcmul(p, g, a, value=-1)",
    "loop: p.add_(g, alpha=-lr)",
)


# --------------------------------------------------------------------------- problem model


@dataclass
class Formulation:
    """One way of computing the op on a problem's inputs."""

    name: str
    kind: str  # one of the H.KIND_* constants
    fn: Callable[[], Any] | None  # returns the outputs (tensor or nested list/tuple)
    why_not: str = ""  # why fn is None ("not available: ..." / "skipped: ...")
    passes: tuple[str, ...] = PASSES


@dataclass
class Problem:
    """The inputs of one benchmark point and the formulations that compute the same thing.

    ``diff_inputs`` are leaf tensors: they get ``requires_grad`` for the forward+backward
    pass (which differentiates the first ``n_diff_outputs`` outputs with respect to them)
    and lose it for the forward pass.
    """

    op: str
    series: str
    x: int
    shape: dict[str, Any]
    formulations: list[Formulation]
    diff_inputs: list[torch.Tensor]
    n_diff_outputs: int
    bytes: dict[str, int]  # minimal bytes moved per call, per pass
    passes: tuple[str, ...] = PASSES
    atol_abs: list[float | None] | None = None  # per forward output, see H.reference_error
    check: Callable[[str], Any] | None = None  # name -> outputs on fresh inputs (in-place ops)
    grad_outputs: list[torch.Tensor] | None = None  # fixed upstream gradients (made lazily)
    # The float64 reference: called with float64 copies of ``ref_inputs`` (default
    # ``diff_inputs``, which lead), it returns what the formulations return.
    reference: Callable[..., Any] | None = None
    ref_inputs: list[torch.Tensor] | None = None
    reduction: int = 1  # the longest sum behind one output entry (the float32 tolerance)


FLOAT32_EPS = torch.finfo(torch.float32).eps


def float32_tolerance(reduction: int) -> float:
    """Largest |error| allowed to a float32 result, relative to the largest entry of the
    float64 reference: 32 float32 ulps × √(length of the sums behind one entry), between
    1e-5 and 1e-3. Over the full CPU grid float32 formulations use at most 2.4% of it
    (see benchmarks/README.md); a kernel bug errs by far more."""
    return min(1e-3, max(1e-5, 32 * FLOAT32_EPS * math.sqrt(max(1, reduction))))


class MedmetaCheckFailed(RuntimeError):
    """medmeta's result disagrees with the float64 reference at a benchmarked size."""


def _checks_off(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with medmeta's data-reading value checks disabled for the call."""
    import medmeta.ops as mm

    def run() -> Any:
        mm.set_value_checks(False)
        try:
            return fn()
        finally:
            mm.set_value_checks(True)

    return run


def _ours(fn: Callable[[], Any], checks_off: bool) -> list[Formulation]:
    out = [Formulation("medmeta", H.KIND_OURS, fn)]
    if checks_off:
        out.append(Formulation("medmeta [checks off]", H.KIND_OURS_VARIANT, _checks_off(fn)))
    return out


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _ref() -> Any:
    """``medmeta.ops._reference``: the pure-torch formulas the kernels must match."""
    from medmeta.ops import _reference

    return _reference


# --------------------------------------------------------------------------- peers


@dataclass
class Peers:
    """Optional libraries: a callable or the reason it is not available."""

    keops_lazy: Any = None  # pykeops.torch.LazyTensor
    keops_why: str = ""
    easyfsl_prototypes: Callable[..., torch.Tensor] | None = None
    easyfsl_why: str = ""

    def status(self) -> dict[str, Any]:
        return {
            "pykeops": "available" if self.keops_lazy else f"not available: {self.keops_why}",
            "easyfsl": "available"
            if self.easyfsl_prototypes
            else f"not available: {self.easyfsl_why}",
        }


def load_peers(device: torch.device, keops: bool) -> Peers:
    """Import the peer libraries that are installed; KeOps is smoke-tested (it JIT-compiles)."""
    peers = Peers()
    if not keops:
        peers.keops_why = "disabled (--no-keops, or --quick without --keops)"
    else:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                import pykeops
                from pykeops.torch import LazyTensor

                pykeops.set_verbose(False)
                a = torch.randn(1, 3, 1, 2, device=device)
                b = torch.randn(1, 1, 4, 2, device=device)
                (LazyTensor(a).sqdist(LazyTensor(b))).sum(dim=2)
            peers.keops_lazy = LazyTensor
        except Exception as e:  # import or JIT compile failure: reported, never fatal
            peers.keops_why = H.short_error(e)
    try:
        from easyfsl.methods.utils import compute_prototypes

        peers.easyfsl_prototypes = compute_prototypes
    except Exception as e:
        peers.easyfsl_why = H.short_error(e)
    return peers


# --------------------------------------------------------------------------- distances


def _sq_baddbmm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x|² + |y|² - 2 x·y with one baddbmm, clamped at 0."""
    xx = x.pow(2).sum(-1, keepdim=True)
    yy = y.pow(2).sum(-1).unsqueeze(1)
    return torch.baddbmm(xx + yy, x, y.transpose(1, 2), alpha=-2).clamp_min(0)


def _cos_bmm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos via normalised rows and one bmm (norm floor 1e-8 as medmeta)."""
    xn = F.normalize(x, dim=-1, eps=1e-8)
    yn = F.normalize(y, dim=-1, eps=1e-8)
    return 1 - torch.bmm(xn, yn.transpose(1, 2))


def torch_distances(metric: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The general pure-torch formulations of one metric, by name."""
    if metric == "sqeuclidean":
        return {
            "baddbmm expansion": _sq_baddbmm,
            "torch.cdist ** 2": lambda x, y: torch.cdist(x, y).square(),
            "broadcast (x-y)²": lambda x, y: (x[:, :, None] - y[:, None]).pow(2).sum(-1),
        }
    if metric == "euclidean":
        return {
            "baddbmm expansion + sqrt": lambda x, y: _sq_baddbmm(x, y).sqrt(),
            "torch.cdist": torch.cdist,
            "broadcast (x-y)² + sqrt": lambda x, y: (
                (x[:, :, None] - y[:, None]).pow(2).sum(-1).sqrt()
            ),
        }
    if metric == "cosine":
        return {
            "normalize + bmm": _cos_bmm,
            "F.cosine_similarity (broadcast)": lambda x, y: (
                1 - F.cosine_similarity(x[:, :, None], y[:, None], dim=-1, eps=1e-8)
            ),
        }
    if metric == "dot":
        return {"bmm": lambda x, y: -torch.bmm(x, y.transpose(1, 2))}
    raise ValueError(metric)


def _cos_bmm_divide(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - x·y / (|x| |y|): the bmm of the raw rows, divided by the outer product of the
    norms (floored at 1e-8 as F.normalize), so no normalised copy of x is written."""
    nx = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    ny = torch.linalg.vector_norm(y, dim=-1).clamp_min(1e-8).unsqueeze(1)
    return 1 - torch.bmm(x, y.transpose(1, 2)) / (nx * ny)


def _cos_normalize_y_bmm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - x·ŷ / |x|: only the (few) prototypes normalised, the bmm divided by |x|."""
    nx = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    return 1 - torch.bmm(x, F.normalize(y, dim=-1, eps=1e-8).transpose(1, 2)) / nx


def torch_cosine_one_episode() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """More cosine formulations, for one episode of many rows (the segmentation score head:
    every query feature position against a few prototypes): beyond ``torch_distances``'s."""
    return {
        "bmm / (|x|·|y|)": _cos_bmm_divide,
        "normalize(y) + bmm / |x|": _cos_normalize_y_bmm,
        "normalize + F.linear (B=1)": lambda x, y: (
            1 - F.linear(F.normalize(x, dim=-1, eps=1e-8), F.normalize(y[0], dim=-1, eps=1e-8))
        ),
        "normalize + torch.cdist² / 2": lambda x, y: (
            torch.cdist(F.normalize(x, dim=-1, eps=1e-8), F.normalize(y, dim=-1, eps=1e-8))
            .square()
            .mul(0.5)
        ),
    }


def _keops_sqdist(lazy: Any, x: torch.Tensor, y: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Dense [B,Q,N] squared distances from KeOps: sum_j d(x_i, y_j) e_j (e_j one-hot)."""
    d = lazy(x[:, :, None, :]).sqdist(lazy(y[:, None, :, :]))
    return (d * lazy(eye)).sum(dim=2)


@dataclass(frozen=True)
class EpisodeShape:
    """Queries [B,Q,D] against prototypes [B,N,D] under ``metric``."""

    B: int
    Q: int
    N: int
    D: int
    metric: str = "sqeuclidean"

    @property
    def x(self) -> int:
        return self.B

    passes = PASSES

    def series(self) -> str:
        m = "" if self.metric == "sqeuclidean" else f"{self.metric} "
        return f"{m}N={self.N} Q={self.Q} D={self.D}"

    def shape(self) -> dict[str, Any]:
        return {"B": self.B, "Q": self.Q, "N": self.N, "D": self.D, "metric": self.metric}


@dataclass(frozen=True)
class SegDistanceShape:
    """The segmentation score head (PANet/ALPNet): every query feature position, n queries
    of ``side``×``side`` cells, ``[1, n·side², D]``, against the episode's P prototypes
    ``[1, P, D]`` under the cosine metric."""

    n: int
    side: int
    P: int
    D: int
    metric: str = "cosine"
    B = 1
    passes = PASSES

    @property
    def Q(self) -> int:
        return self.n * self.side * self.side

    @property
    def N(self) -> int:
        return self.P

    @property
    def x(self) -> int:
        return self.Q

    def series(self) -> str:
        return f"{SEGMENTATION_PREFIX}{self.metric} P={self.P} D={self.D}"

    def shape(self) -> dict[str, Any]:
        return {"B": 1, "Q": self.Q, "N": self.P, "D": self.D, "metric": self.metric,
                "n": self.n, "h": self.side, "w": self.side}  # fmt: skip


def _episode_tensors(
    s: EpisodeShape, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prototypes, queries clustered around them (rows of norm ~1) and the query targets."""
    protos = torch.randn(s.B, s.N, s.D, device=device, dtype=dtype) / math.sqrt(s.D)
    targets = torch.randint(0, s.N, (s.B, s.Q), device=device)
    centres = torch.gather(protos, 1, targets.unsqueeze(-1).expand(-1, -1, s.D))
    noise = torch.randn(s.B, s.Q, s.D, device=device, dtype=dtype) / math.sqrt(s.D)
    return centres + 0.8 * noise, protos, targets


def distance_problem(
    s: EpisodeShape | SegDistanceShape,
    device: torch.device,
    dtype: torch.dtype,
    peers: Peers,
    checks_off: bool,
) -> Problem:
    import medmeta.ops as mm

    x, y, _ = _episode_tensors(s, device, dtype)
    del checks_off  # pairwise_distance reads no data for its checks: nothing to turn off
    forms = _ours(lambda: mm.pairwise_distance(x, y, s.metric), checks_off=False)
    big = s.B * s.Q * s.N * s.D > BROADCAST_MAX_ELEMENTS
    candidates = dict(torch_distances(s.metric))
    if isinstance(s, SegDistanceShape) and s.metric == "cosine":
        candidates.update(torch_cosine_one_episode())
    for name, f in candidates.items():
        if "broadcast" in name and big:
            why = f"skipped: B·Q·N·D > {BROADCAST_MAX_ELEMENTS} (a [B,Q,N,D] temporary)"
            forms.append(Formulation(name, H.KIND_TORCH, None, why))
        else:
            forms.append(Formulation(name, H.KIND_TORCH, lambda f=f: f(x, y)))
    if s.metric == "sqeuclidean":
        if peers.keops_lazy is None:
            forms.append(
                Formulation("pykeops", H.KIND_PEER, None, f"not available: {peers.keops_why}")
            )
        else:
            eye = torch.eye(s.N, device=device, dtype=dtype).expand(s.B, 1, s.N, s.N).contiguous()
            forms.append(
                Formulation(
                    "pykeops", H.KIND_PEER, lambda: _keops_sqdist(peers.keops_lazy, x, y, eye)
                )
            )
    io_fwd = _nbytes(x, y) + s.B * s.Q * s.N * x.element_size()
    io_bwd = s.B * s.Q * s.N * x.element_size() + 2 * _nbytes(x, y)
    return Problem(
        "pairwise_distance",
        s.series(),
        s.x,
        s.shape(),
        forms,
        [x, y],
        1,
        {FWD: io_fwd, FWD_BWD: io_fwd + io_bwd},
        reference=lambda x64, y64: _ref().pairwise_distance(x64, y64, s.metric),
        reduction=max(s.D, s.Q, s.N),
    )


# --------------------------------------------------------------------------- fused loss


def _loss_from_distances(
    dist: torch.Tensor, targets: torch.Tensor, temperature: float, how: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [B], accuracy [B]) from distances [B,Q,N] by a composite of torch ops."""
    B, Q, N = dist.shape
    logits = dist * (-1.0 / temperature)
    flat, t = logits.reshape(B * Q, N), targets.reshape(B * Q)
    if how == "nll":
        nll = F.nll_loss(flat.log_softmax(-1), t, reduction="none")
    else:
        nll = F.cross_entropy(flat, t, reduction="none")
    accuracy = (logits.argmax(-1) == targets).to(dist.dtype).mean(-1)
    return nll.view(B, Q).mean(-1), accuracy


def torch_losses(metric: str) -> dict[str, tuple[Callable, str]]:
    """Composite loss formulations: name -> (distance function, "nll" | "ce")."""
    if metric == "sqeuclidean":
        d = torch_distances(metric)
        return {
            "baddbmm → log_softmax → nll_loss": (d["baddbmm expansion"], "nll"),
            "baddbmm → F.cross_entropy": (d["baddbmm expansion"], "ce"),
            "cdist² → F.cross_entropy": (d["torch.cdist ** 2"], "ce"),
        }
    if metric == "cosine":
        return {
            "normalize·bmm → log_softmax → nll_loss": (_cos_bmm, "nll"),
            "normalize·bmm → F.cross_entropy": (_cos_bmm, "ce"),
        }
    (name, dist), *_ = torch_distances(metric).items()
    return {
        f"{name} → log_softmax → nll_loss": (dist, "nll"),
        f"{name} → F.cross_entropy": (dist, "ce"),
    }


def loss_problem(
    s: EpisodeShape, device: torch.device, dtype: torch.dtype, peers: Peers, checks_off: bool
) -> Problem:
    import medmeta.ops as mm

    del peers
    q, p, t = _episode_tensors(s, device, dtype)
    temperature = 1.0
    forms = _ours(lambda: mm.prototypical_loss(q, p, t, s.metric, temperature), checks_off)
    for name, (dist, how) in torch_losses(s.metric).items():
        forms.append(
            Formulation(
                name,
                H.KIND_TORCH,
                lambda dist=dist, how=how: _loss_from_distances(dist(q, p), t, temperature, how),
            )
        )
    io_fwd = _nbytes(q, p, t) + 2 * s.B * q.element_size()
    io_bwd = 2 * _nbytes(q, p) + _nbytes(t)
    return Problem(
        "prototypical_loss",
        s.series(),
        s.B,
        s.shape(),
        forms,
        [q, p],
        1,
        {FWD: io_fwd, FWD_BWD: io_fwd + io_bwd},
        atol_abs=[None, 1.0 / s.Q + 1e-6],  # accuracy: one query may flip on a near-tie
        reference=lambda q64, p64: _ref().prototypical_loss(q64, p64, t, s.metric, temperature),
        reduction=max(s.D, s.Q, s.N),
    )


# --------------------------------------------------------------------------- prototypes


@dataclass(frozen=True)
class SupportShape:
    """Support embeddings [B, S=N·K, D], labels grouped by class (K shots each)."""

    B: int
    N: int
    K: int
    D: int

    @property
    def x(self) -> int:
        return self.B

    passes = PASSES

    def series(self) -> str:
        return f"N={self.N} K={self.K} D={self.D}"

    def shape(self) -> dict[str, Any]:
        return {"B": self.B, "N": self.N, "K": self.K, "S": self.N * self.K, "D": self.D}


def _protos_one_hot_bmm(emb: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    assign = F.one_hot(labels, n).to(emb.dtype)  # [B,S,N]
    sums = torch.bmm(assign.transpose(1, 2), emb)
    return sums / assign.sum(1).unsqueeze(-1)


def _protos_index_add(emb: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    B, S, D = emb.shape
    idx = (labels + n * torch.arange(B, device=labels.device).unsqueeze(1)).reshape(-1)
    sums = emb.new_zeros(B * n, D).index_add(0, idx, emb.reshape(B * S, D))
    counts = torch.bincount(idx, minlength=B * n).to(emb.dtype)
    return (sums / counts.unsqueeze(1)).view(B, n, D)


def _protos_scatter_add(emb: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    B, S, D = emb.shape
    sums = emb.new_zeros(B, n, D).scatter_add(1, labels.unsqueeze(-1).expand(B, S, D), emb)
    counts = emb.new_zeros(B, n).scatter_add_(1, labels, emb.new_ones(B, S))
    return sums / counts.unsqueeze(-1)


def _protos_reshape_mean(emb: torch.Tensor, n: int) -> torch.Tensor:
    """Only valid when every episode's support is grouped by class with equal shots."""
    B, S, D = emb.shape
    return emb.view(B, n, S // n, D).mean(2)


def prototypes_problem(
    s: SupportShape, device: torch.device, dtype: torch.dtype, peers: Peers, checks_off: bool
) -> Problem:
    import medmeta.ops as mm

    S = s.N * s.K
    emb = torch.randn(s.B, S, s.D, device=device, dtype=dtype)
    labels = torch.arange(s.N, device=device).repeat_interleave(s.K).expand(s.B, S).contiguous()
    forms = _ours(lambda: mm.prototypes(emb, labels, s.N), checks_off)
    forms += [
        Formulation("one-hot bmm", H.KIND_TORCH, lambda: _protos_one_hot_bmm(emb, labels, s.N)),
        Formulation("index_add", H.KIND_TORCH, lambda: _protos_index_add(emb, labels, s.N)),
        Formulation("scatter_add", H.KIND_TORCH, lambda: _protos_scatter_add(emb, labels, s.N)),
        Formulation(
            "view(B,N,K,D).mean (class-grouped only)",
            H.KIND_TORCH_STRUCTURED,
            lambda: _protos_reshape_mean(emb, s.N),
        ),
    ]
    cp = peers.easyfsl_prototypes
    if cp is None:
        forms.append(
            Formulation(
                "easyfsl (loop over B)", H.KIND_PEER, None, f"not available: {peers.easyfsl_why}"
            )
        )
    elif s.B > EASYFSL_MAX_B:
        forms.append(
            Formulation("easyfsl (loop over B)", H.KIND_PEER, None, f"skipped: B > {EASYFSL_MAX_B}")
        )
    else:
        forms.append(
            Formulation(
                "easyfsl (loop over B)",
                H.KIND_PEER,
                lambda: torch.stack([cp(emb[b], labels[b]) for b in range(s.B)]),
            )
        )
    out_bytes = s.B * s.N * s.D * emb.element_size()
    return Problem(
        "prototypes",
        s.series(),
        s.B,
        s.shape(),
        forms,
        [emb],
        1,
        {
            FWD: _nbytes(emb, labels) + out_bytes,
            FWD_BWD: 2 * (_nbytes(emb, labels) + out_bytes),
        },
        reference=lambda e64: _ref().prototypes(e64, labels, s.N),
        reduction=S,
    )


# --------------------------------------------------------------------------- masked prototypes


@dataclass(frozen=True)
class MaskShape:
    """Features [B,S,D,H,W] and binary masks [B,S,C,H,W] (few-shot segmentation)."""

    B: int
    S: int
    C: int
    D: int
    HW: int

    @property
    def x(self) -> int:
        return self.B

    passes = PASSES

    def series(self) -> str:
        return f"S={self.S} C={self.C} D={self.D} {self.HW}×{self.HW}"

    def shape(self) -> dict[str, Any]:
        return {"B": self.B, "S": self.S, "C": self.C, "D": self.D, "H": self.HW, "W": self.HW}


@dataclass(frozen=True)
class SegMaskShape:
    """One segmentation episode (B = 1): support features [1,S,D,H,W] and soft masks
    [1,S,C,H,W] (C = class prototypes plus ALPNet's local prototypes, up to 20 per class)."""

    S: int
    C: int
    D: int
    HW: int  # H = W
    B = 1
    passes = PASSES

    @property
    def x(self) -> int:
        return self.HW * self.HW

    def series(self) -> str:
        return f"{SEGMENTATION_PREFIX}S={self.S} C={self.C} D={self.D}"

    def shape(self) -> dict[str, Any]:
        return {"B": 1, "S": self.S, "C": self.C, "D": self.D, "H": self.HW, "W": self.HW}


def _masked_einsum(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bsdhw,bschw->bcd", f, m) / m.sum(dim=(1, 3, 4)).unsqueeze(-1)


def _masked_bmm_per_shot(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One [C,HW]x[HW,D] product per (episode, shot), no copies, then a sum over shots."""
    B, S, D, H, W = f.shape
    C = m.shape[2]
    pooled = torch.bmm(m.reshape(B * S, C, H * W), f.reshape(B * S, D, H * W).transpose(1, 2))
    return pooled.view(B, S, C, D).sum(1) / m.sum(dim=(1, 3, 4)).unsqueeze(-1)


def _masked_bmm_flat(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One [C,S·HW]x[S·HW,D] product per episode (transposes copy the inputs)."""
    B, S, D, H, W = f.shape
    C = m.shape[2]
    ff = f.transpose(1, 2).reshape(B, D, S * H * W)
    mf = m.transpose(1, 2).reshape(B, C, S * H * W)
    return torch.bmm(mf, ff.transpose(1, 2)) / mf.sum(-1, keepdim=True)


def masked_problem(
    s: MaskShape | SegMaskShape,
    device: torch.device,
    dtype: torch.dtype,
    peers: Peers,
    checks_off: bool,
) -> Problem:
    import medmeta.ops as mm

    del peers
    f = torch.randn(s.B, s.S, s.D, s.HW, s.HW, device=device, dtype=dtype)
    m = torch.rand(s.B, s.S, s.C, s.HW, s.HW, device=device)
    # binary masks (40% density), or soft ones (cell coverage in [0, 1)) for segmentation
    m = m.to(dtype) if isinstance(s, SegMaskShape) else (m < 0.4).to(dtype)
    forms = _ours(lambda: mm.masked_prototypes(f, m), checks_off)
    forms += [
        Formulation("einsum", H.KIND_TORCH, lambda: _masked_einsum(f, m)),
        Formulation("bmm per shot + sum", H.KIND_TORCH, lambda: _masked_bmm_per_shot(f, m)),
        Formulation(
            "bmm over S·H·W (transposed copies)", H.KIND_TORCH, lambda: _masked_bmm_flat(f, m)
        ),
    ]
    out_bytes = s.B * s.C * s.D * f.element_size()
    return Problem(
        "masked_prototypes",
        s.series(),
        s.x,
        s.shape(),
        forms,
        [f],  # masks are labels: no gradient
        1,
        {FWD: _nbytes(f, m) + out_bytes, FWD_BWD: 2 * (_nbytes(f, m) + out_bytes)},
        reference=lambda f64: _ref().masked_prototypes(f64, m.double()),
        reduction=s.S * s.HW * s.HW,
    )


# --------------------------------------------------------------------------- inner update


def conv4_shapes(channels: int = 64, in_channels: int = 3, n_way: int = 5) -> list[tuple[int, ...]]:
    """Parameter shapes of Conv4 (4 × conv3x3/bias/BN) with a linear head on 5×5 maps."""
    shapes: list[tuple[int, ...]] = []
    c_in = in_channels
    for _ in range(4):
        shapes += [(channels, c_in, 3, 3), (channels,), (channels,), (channels,)]
        c_in = channels
    return [*shapes, (n_way, channels * 25), (n_way,)]


def resnet12_shapes(
    widths: Sequence[int] = (64, 160, 320, 640), n_way: int = 5
) -> list[tuple[int, ...]]:
    """Parameter shapes of ResNet-12 (4 residual blocks of 3 conv3x3 + 1x1 shortcut, BN)."""
    shapes: list[tuple[int, ...]] = []
    c_in = 3
    for c in widths:
        shapes += [(c, c_in, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,)]
        shapes += [(c, c_in, 1, 1), (c,), (c,)]
        c_in = c
    return [*shapes, (n_way, widths[-1]), (n_way,)]


MODELS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "Conv4-64": conv4_shapes,
    "ResNet-12": resnet12_shapes,
}


@dataclass(frozen=True)
class UpdateShape:
    """P parameter tensors of ``model`` stacked over T tasks; ``rate`` is the lr form."""

    model: str
    T: int
    rate: str = "float"  # "float" | "per-layer" (MAML++) | "per-element" (Meta-SGD)
    in_place: bool = False

    @property
    def x(self) -> int:
        return self.T

    @property
    def passes(self) -> tuple[str, ...]:
        return (FWD,) if self.in_place else PASSES

    def series(self) -> str:
        rate = {"float": "float lr", "per-layer": "per-layer lr", "per-element": "per-element lr"}
        return f"{self.model}, {rate[self.rate]}" + (", in-place" if self.in_place else "")

    def shape(self, numel: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "T": self.T,
            "rate": self.rate,
            "in_place": self.in_place,
            "tensors": len(MODELS[self.model]()),
            "MB_per_list": round(numel * 4 / 1e6, 1),
        }


def update_problem(
    s: UpdateShape, device: torch.device, dtype: torch.dtype, peers: Peers, checks_off: bool
) -> Problem:
    del peers
    shapes = MODELS[s.model]()
    params = [torch.randn(s.T, *sh, device=device, dtype=dtype) for sh in shapes]
    grads = [0.1 * torch.randn(s.T, *sh, device=device, dtype=dtype) for sh in shapes]
    lr = 0.01
    if s.rate == "float":
        lrs: list[torch.Tensor] = []
    elif s.rate == "per-layer":
        lrs = [torch.full((1,), lr, device=device, dtype=dtype) for _ in shapes]
    else:
        lrs = [lr * torch.rand(sh, device=device, dtype=dtype) for sh in shapes]
    numel = sum(p.numel() for p in params)
    item = params[0].element_size()
    if s.in_place:
        return _in_place_update_problem(s, params, grads, lr, numel, checks_off)
    forms = _update_forms(params, grads, lrs, lr, checks_off)
    lr_bytes = _nbytes(*lrs)
    fwd = 3 * numel * item + lr_bytes
    # backward: grad wrt params is the incoming gradient itself; wrt grads -lr·g_out
    # (read g_out, write); wrt tensor rates also reads the grads and writes the rate grads
    bwd = 2 * numel * item + ((numel * item + 2 * lr_bytes) if lrs else 0)
    n = len(params)

    def reference(*flat: torch.Tensor) -> list[torch.Tensor]:
        rates = list(flat[2 * n :]) if lrs else lr
        return _ref().inner_update(flat[:n], flat[n : 2 * n], rates)

    # a per-layer rate's gradient sums its whole (T-task) tensor
    longest = max(p.numel() for p in params) if s.rate == "per-layer" else 1
    return Problem(
        "inner_update",
        s.series(),
        s.T,
        s.shape(numel),
        forms,
        [*params, *grads, *lrs],
        n,
        {FWD: fwd, FWD_BWD: fwd + bwd},
        reference=reference,
        reduction=longest,
    )


def _update_forms(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    lrs: list[torch.Tensor],
    lr: float,
    checks_off: bool,
) -> list[Formulation]:
    import medmeta.ops as mm

    pairs = list(zip(params, grads, strict=True))
    if not lrs:
        forms = _ours(lambda: mm.inner_update(params, grads, lr), checks_off=False)
        return [
            *forms,
            Formulation("loop: p - lr*g", H.KIND_TORCH, lambda: [p - lr * g for p, g in pairs]),
            Formulation(
                "loop: torch.add(p, g, alpha=-lr)",
                H.KIND_TORCH,
                lambda: [torch.add(p, g, alpha=-lr) for p, g in pairs],
            ),
            Formulation(
                "torch._foreach_add(alpha=-lr)",
                H.KIND_TORCH,
                lambda: torch._foreach_add(params, grads, alpha=-lr),
            ),
        ]
    triples = list(zip(params, grads, lrs, strict=True))
    return [
        *_ours(lambda: mm.inner_update(params, grads, lrs), checks_off),
        Formulation("loop: p - a*g", H.KIND_TORCH, lambda: [p - a * g for p, g, a in triples]),
        Formulation(
            "loop: torch.addcmul(p, g, a, value=-1)",
            H.KIND_TORCH,
            lambda: [torch.addcmul(p, g, a, value=-1) for p, g, a in triples],
        ),
        Formulation(
            "torch._foreach_mul + _foreach_sub",
            H.KIND_TORCH,
            lambda: torch._foreach_sub(params, torch._foreach_mul(grads, lrs)),
        ),
        Formulation(
            "torch._foreach_addcmul(value=-1)",
            H.KIND_TORCH,
            lambda: torch._foreach_addcmul(params, grads, lrs, value=-1),
        ),
    ]


def _in_place_update_problem(
    s: UpdateShape,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    lr: float,
    numel: int,
    checks_off: bool,
) -> Problem:
    """First-order in-place step; every formulation updates its own copy of the params."""
    import medmeta.ops as mm

    def loop(ps: list[torch.Tensor]) -> list[torch.Tensor]:
        for p, g in zip(ps, grads, strict=True):
            p.add_(g, alpha=-lr)
        return ps

    def foreach(ps: list[torch.Tensor]) -> list[torch.Tensor]:
        torch._foreach_add_(ps, grads, alpha=-lr)
        return ps

    steps: dict[str, tuple[str, Callable[[list[torch.Tensor]], Any]]] = {
        "medmeta": (H.KIND_OURS, lambda ps: mm.inner_update_(ps, grads, lr)),
        "loop: p.add_(g, alpha=-lr)": (H.KIND_TORCH, loop),
        "torch._foreach_add_(alpha=-lr)": (H.KIND_TORCH, foreach),
    }
    if checks_off:
        steps["medmeta [checks off]"] = (
            H.KIND_OURS_VARIANT,
            lambda ps: _checks_off(lambda: mm.inner_update_(ps, grads, lr))(),
        )
    forms = []
    for name, (kind, step) in steps.items():
        own = [p.clone() for p in params]
        forms.append(Formulation(name, kind, lambda step=step, own=own: step(own), passes=(FWD,)))

    def check(name: str) -> Any:
        return steps[name][1]([p.clone() for p in params])

    n = len(params)
    return Problem(
        "inner_update",
        s.series(),
        s.T,
        s.shape(numel),
        forms,
        [],
        0,
        {FWD: 3 * numel * params[0].element_size()},
        passes=(FWD,),
        check=check,
        reference=lambda *flat: _ref().inner_update(flat[:n], flat[n:], lr),
        ref_inputs=[*params, *grads],
    )


# --------------------------------------------------------------------------- grids


def segmentation_grid(quick: bool) -> list[tuple[Callable[..., Problem], Any]]:
    """The few-shot segmentation shapes (``--shapes segmentation``), one episode each:
    masked prototypes at D 64-256, H·W 16²-64², S 1 and 5 shots, C 2 (foreground and
    background), 22 and 42 (1-way with background, up to 20 local prototypes per class),
    and the cosine score head over n·h·w = 2·16², 2·32², 4·64² query positions against
    P 2, 22, 42 prototypes at D 64-256."""
    if quick:
        masks = [SegMaskShape(1, 2, 64, 16), SegMaskShape(5, 22, 64, 16)]
        dists = [SegDistanceShape(2, 16, 2, 64), SegDistanceShape(2, 16, 22, 128)]
    else:
        masks = [
            SegMaskShape(S, C, D, side)
            for D in (64, 128, 256)
            for S in (1, 5)
            for C in (2, 22, 42)
            for side in (16, 32, 64)
        ]
        dists = [
            SegDistanceShape(n, side, P, D)
            for D in (64, 128, 256)
            for P in (2, 22, 42)
            for n, side in ((2, 16), (2, 32), (4, 64))
        ]
    return [*[(masked_problem, s) for s in masks], *[(distance_problem, s) for s in dists]]


def grid(quick: bool, shapes: str = "default") -> list[tuple[Callable[..., Problem], Any]]:
    """The benchmark points (problem builder, shape spec), in run order."""
    if shapes == "segmentation":
        return segmentation_grid(quick)
    if quick:
        episodes = [EpisodeShape(1, 15, 5, 64), EpisodeShape(8, 75, 5, 256)]
        return [
            *[(distance_problem, s) for s in [*episodes, EpisodeShape(4, 15, 5, 64, "cosine")]],
            *[(loss_problem, s) for s in episodes],
            *[
                (prototypes_problem, s)
                for s in (SupportShape(1, 5, 1, 64), SupportShape(8, 5, 5, 256))
            ],
            *[
                (masked_problem, s)
                for s in (MaskShape(1, 1, 2, 64, 16), MaskShape(2, 5, 2, 32, 16))
            ],
            *[
                (update_problem, s)
                for s in (
                    UpdateShape("Conv4-64", 1),
                    UpdateShape("Conv4-64", 4, "per-element"),
                    UpdateShape("Conv4-64", 2, in_place=True),
                )
            ],
        ]
    dist_shapes = [
        *(EpisodeShape(b, 15, 5, 64) for b in (1, 8, 32, 128, 256)),
        *(EpisodeShape(b, 75, 5, 1600) for b in (1, 8, 32, 128)),
        *(EpisodeShape(b, 60, 20, 640) for b in (1, 32, 256)),
    ]
    other_metrics = [
        EpisodeShape(b, 75, 5, 1600, m) for m in ("euclidean", "cosine", "dot") for b in (1, 32)
    ]
    support = [
        *(SupportShape(b, 5, 1, 64) for b in (1, 8, 32, 128, 256)),
        *(SupportShape(b, 5, 5, 1600) for b in (1, 8, 32, 128)),
        *(SupportShape(b, 20, 10, 640) for b in (1, 8, 32, 128)),
    ]
    masks = [
        *(MaskShape(b, 1, 2, 512, 32) for b in (1, 4, 16)),
        *(MaskShape(b, 5, 2, 64, 64) for b in (1, 4, 16)),
        *(MaskShape(b, 5, 5, 256, 16) for b in (1, 8, 32)),
    ]
    updates = [
        *(UpdateShape("Conv4-64", t) for t in (1, 4, 16, 32)),
        *(UpdateShape("Conv4-64", t, "per-layer") for t in (1, 32)),
        *(UpdateShape("Conv4-64", t, "per-element") for t in (1, 8, 32)),
        *(UpdateShape("ResNet-12", t) for t in (1, 2)),
        *(UpdateShape("Conv4-64", t, in_place=True) for t in (1, 32)),
        *(UpdateShape("ResNet-12", t, in_place=True) for t in (1, 2)),
    ]
    return [
        *[(distance_problem, s) for s in [*dist_shapes, *other_metrics]],
        *[
            (loss_problem, s)
            for s in [
                *dist_shapes,
                EpisodeShape(1, 75, 5, 1600, "cosine"),
                EpisodeShape(32, 75, 5, 1600, "cosine"),
            ]
        ],
        *[(prototypes_problem, s) for s in support],
        *[(masked_problem, s) for s in masks],
        *[(update_problem, s) for s in updates],
    ]


BUILDERS: dict[Callable[..., Problem], str] = {
    distance_problem: "pairwise_distance",
    loss_problem: "prototypical_loss",
    prototypes_problem: "prototypes",
    masked_problem: "masked_prototypes",
    update_problem: "inner_update",
}


# --------------------------------------------------------------------------- running


def _pass_callable(problem: Problem, fn: Callable[[], Any], pass_: str) -> Callable[[], Any]:
    """The callable timed for ``pass_``: the forward, or the forward and the input gradients."""
    if pass_ == FWD:
        return fn
    grad_outputs = problem.grad_outputs

    def forward_backward() -> tuple[torch.Tensor, ...]:
        outs = H.flatten_tensors(fn())[: problem.n_diff_outputs]
        return torch.autograd.grad(outs, problem.diff_inputs, grad_outputs)

    return forward_backward


def _prepare_pass(problem: Problem, pass_: str) -> None:
    """Set requires_grad of the inputs for ``pass_``; make the fixed upstream gradients."""
    for t in problem.diff_inputs:
        t.requires_grad_(pass_ == FWD_BWD)
    if pass_ == FWD_BWD and problem.grad_outputs is None:
        outs = _first_outputs(problem)[: problem.n_diff_outputs]
        gen = torch.Generator(device=outs[0].device).manual_seed(1234)
        problem.grad_outputs = [
            torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs
        ]


def _first_outputs(problem: Problem) -> list[torch.Tensor]:
    """Outputs of the first formulation that runs (medmeta's, unless it fails)."""
    error: Exception | None = None
    for f in problem.formulations:
        if f.fn is None:
            continue
        try:
            with torch.no_grad():
                return H.flatten_tensors(f.fn())
        except Exception as e:  # e.g. no CUDA kernels in this build: try the next one
            error = error or e
    raise RuntimeError(f"no formulation of {problem.op} runs: {error}")


def _run_once(problem: Problem, form: Formulation, call: Callable[[], Any]) -> Any:
    """One call for the agreement check (on fresh inputs for in-place problems)."""
    if problem.check is not None:
        return problem.check(form.name)
    return call()


@dataclass
class QuietPolicy:
    """How to cope with other processes on a shared machine: wait for them to calm down
    (up to ``max_wait_s`` per point) and re-measure a point taken while they used more
    than ``threshold`` CPUs (``retries`` times, keeping the least disturbed measurement),
    while the run's total waiting stays under ``budget_s``."""

    threshold: float = 0.3
    max_wait_s: float = 0.0
    retries: int = 0
    budget_s: float = 180.0
    waited_s: float = 0.0
    remeasured: int = 0

    def wait(self) -> None:
        allowed = min(self.max_wait_s, self.budget_s - self.waited_s)
        if allowed > 0:
            self.waited_s += H.wait_until_quiet(self.threshold, allowed)


def reference_result(problem: Problem, pass_: str) -> Any:
    """The float64 reference of ``pass_``: the outputs, or the gradients of the first
    ``n_diff_outputs`` outputs with respect to the differentiable inputs (float64 copies,
    upstream gradients ``problem.grad_outputs`` in float64)."""
    if problem.reference is None:
        raise ValueError(f"{problem.op}: no float64 reference")
    inputs = problem.ref_inputs if problem.ref_inputs is not None else problem.diff_inputs
    n_diff = len(problem.diff_inputs)
    copies = [
        t.detach().double().requires_grad_(pass_ == FWD_BWD and i < n_diff)
        for i, t in enumerate(inputs)
    ]
    if pass_ == FWD:
        with torch.no_grad():
            return problem.reference(*copies)
    assert problem.grad_outputs is not None
    with torch.enable_grad():
        outs = H.flatten_tensors(problem.reference(*copies))[: problem.n_diff_outputs]
        return torch.autograd.grad(
            outs, copies[:n_diff], [g.double() for g in problem.grad_outputs]
        )


def check_point(
    problem: Problem, pass_: str, clock: H.Clock
) -> tuple[dict[str, H.Record], dict[str, Callable[[], Any]]]:
    """Run every formulation once and compare it with the float64 reference (outputs for
    the forward, input gradients for forward+backward) within
    ``float32_tolerance(problem.reduction)`` of the reference's scale. Returns all records
    (status, ``ref_error`` and ``ref_tol`` filled in) and the callables that agree,
    medmeta's first. Raises :class:`MedmetaCheckFailed` when medmeta (or a medmeta
    variant) disagrees; a baseline that disagrees is recorded and dropped."""
    _prepare_pass(problem, pass_)
    expected = reference_result(problem, pass_)
    tol = float32_tolerance(problem.reduction)
    atol_abs = problem.atol_abs if pass_ == FWD else None
    records: dict[str, H.Record] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for f in problem.formulations:
        if pass_ not in f.passes:
            continue
        rec = H.Record(
            problem.op, pass_, problem.series, problem.x, problem.shape, f.name, f.kind, "ok"
        )
        records[f.name] = rec
        if f.fn is None:
            rec.status = f.why_not
            continue
        call = _pass_callable(problem, f.fn, pass_)
        try:
            got = _run_once(problem, f, call)
            clock.sync()
        except Exception as e:
            rec.status = f"error: {H.short_error(e)}"
            continue
        why, rec.ref_error = H.reference_error(expected, got, tol, atol_abs)
        rec.ref_tol = tol
        del got
        if why:
            if f.kind in (H.KIND_OURS, H.KIND_OURS_VARIANT):
                raise MedmetaCheckFailed(
                    f"{f.name} disagrees with the float64 reference: {problem.op} {pass_} at "
                    f"{H.fmt_shape(problem.shape)}: {why} (float32 tolerance {tol:.1e} of "
                    "the reference's largest entry)"
                )
            rec.status = f"disagrees with the float64 reference: {why}"
            continue
        calls[f.name] = call
    return records, calls


def time_point(
    calls: dict[str, Callable[[], Any]], clock: H.Clock, cfg: H.TimingConfig, quiet: QuietPolicy
) -> tuple[dict[str, H.Measurement], float | None]:
    """Measure ``calls`` round-robin; returns the measurements and the CPUs other
    processes used meanwhile (the least disturbed of ``1 + quiet.retries`` attempts)."""
    best: tuple[dict[str, H.Measurement], float | None] | None = None
    for attempt in range(1 + quiet.retries):
        if attempt:
            quiet.remeasured += 1
        quiet.wait()
        contention = H.Contention().start()
        measured = H.measure_group(calls, clock, cfg)
        others = contention.stop()
        if best is None or (others is not None and best[1] is not None and others < best[1]):
            best = (measured, others)
        if others is None or others < quiet.threshold:
            break
    assert best is not None
    return best


def run_point(
    problem: Problem, pass_: str, clock: H.Clock, cfg: H.TimingConfig, quiet: QuietPolicy
) -> list[H.Record]:
    """Check every formulation against the float64 reference, then time those that agree
    (raises :class:`MedmetaCheckFailed` when medmeta does not)."""
    records, calls = check_point(problem, pass_, clock)
    measured, others = time_point(calls, clock, cfg, quiet)
    for name, m in measured.items():
        rec = records[name]
        rec.median_s, rec.q1_s, rec.q3_s, rec.iqr_s = m.median_s, m.q1_s, m.q3_s, m.iqr_s
        rec.samples, rec.calls_per_sample = m.samples, m.calls_per_sample
        rec.bytes = problem.bytes[pass_]
        rec.gbps = rec.bytes / m.median_s / 1e9
    for rec in records.values():
        rec.others_cpu = others
    return list(records.values())


# --------------------------------------------------------------------------- per-call overhead

OVERHEAD_TARGET_S = 10e-6
OVERHEAD_TARGET = "CPU: per-call framework overhead under 10 µs"
OVERHEAD_DEFINITION = (
    "per-call framework overhead: median time of the public medmeta op on a 1-element problem "
    "minus the median time of the bare medmeta._C kernel call(s) it runs (medmeta.ops._native"
    ".lib().<kernel>(dev, stream, dt, ...), every argument prepared ahead and passed "
    "positionally in the binding's declared order, as the ops do), "
    "timed round-robin in the same measurement; forward+backward: the public forward and "
    "torch.autograd.grad against the forward and the backward kernel"
)


@dataclass
class OverheadCase:
    """A public op on a 1-element problem beside the bare native kernel calls it runs.

    ``public[pass_]`` calls the public op (the forward, or the forward and
    ``torch.autograd.grad``); ``kernel[pass_]`` calls ``medmeta._C`` directly with every
    pointer and output prepared ahead (the forward kernel, or the forward and the backward
    kernel). ``kernel_outputs`` are the tensors the forward kernel writes, which must equal
    the public forward's first outputs.
    """

    name: str  # the report's label, e.g. "inner_update (per-layer lr)"
    op: str  # the OPS entry it belongs to (``--ops``)
    shape: dict[str, Any]
    public: dict[str, Callable[[], Any]]
    kernel: dict[str, Callable[[], Any]]
    kernel_outputs: list[torch.Tensor]
    buffers: list[torch.Tensor]  # every tensor whose address the kernel calls hold

    def __post_init__(self) -> None:
        # the kernel calls hold bare addresses: each keeps the tensors behind them alive
        for fn in self.kernel.values():
            fn.buffers = self.buffers  # type: ignore[attr-defined]


@dataclass
class _Tiny:
    """What the bare kernel calls of one device and dtype share."""

    device: torch.device
    dtype: torch.dtype
    lib: Any  # medmeta._C
    dev: int  # -1: the CPU
    stream: int
    dt: int  # the dtype code
    acc: torch.dtype  # the kernels' accumulation dtype
    sq: int  # the sqeuclidean metric's code

    def value(self, *shape: int, fill: float = 0.75) -> torch.Tensor:
        return torch.full(shape, fill, device=self.device, dtype=self.dtype)

    def labels(self) -> torch.Tensor:
        return torch.zeros(1, 1, dtype=torch.long, device=self.device)

    def scratch(self, n: int = 8) -> torch.Tensor:
        """Accumulation-dtype scratch, more than a 1-element kernel uses."""
        return torch.zeros(n, device=self.device, dtype=self.acc)

    def bare(self, kernel: str, **arguments: Any) -> Callable[[], None]:
        """``medmeta._C.<kernel>`` with ``dev``, ``stream``, ``dt`` and the named
        ``arguments`` bound ahead. The names must be the binding's (read from the signature
        pybind11 writes at the top of its docstring); the call passes them positionally in
        the binding's order, the cheapest way in (matching 12 keywords costs pybind11 about
        0.7 µs here, and the ops call their kernels positionally)."""
        from medmeta.ops import _native

        fn, names = getattr(self.lib, kernel), _native.argument_names(kernel)
        given = {"dev": self.dev, "stream": self.stream, "dt": self.dt, **arguments}
        if sorted(names) != sorted(given):
            raise TypeError(
                f"medmeta._C.{kernel} takes {names}; the benchmark passes {list(given)}"
            )
        args = tuple(given[n] for n in names)
        return lambda: fn(*args)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def _both(forward: Callable[[], Any], backward: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: (forward(), backward())


def _distance_case(k: _Tiny) -> OverheadCase:
    """pairwise_distance: x [1,1,1], y [1,1,1] -> [1,1,1]."""
    import medmeta.ops as mm

    x, y, g = k.value(1, 1, 1), k.value(1, 1, 1, fill=-0.5), k.value(1, 1, 1, fill=1.0)
    xg, yg = _leaf(x), _leaf(y)
    out, gx, gy = torch.empty_like(x), torch.empty_like(x), torch.empty_like(y)
    sizes = {"B": 1, "Q": 1, "N": 1, "D": 1, "metric": k.sq}
    px, py, pout = x.data_ptr(), y.data_ptr(), out.data_ptr()
    forward = k.bare("distance_forward", x=px, y=py, out=pout, ws=0, **sizes)
    backward = k.bare(
        "distance_backward", g=g.data_ptr(), x=px, y=py, out=pout, gx=gx.data_ptr(),
        gy=gy.data_ptr(), ws=0, **sizes,
    )  # fmt: skip
    return OverheadCase(
        "pairwise_distance",
        "pairwise_distance",
        {"B": 1, "Q": 1, "N": 1, "D": 1, "metric": "sqeuclidean"},
        {
            FWD: lambda: mm.pairwise_distance(x, y, "sqeuclidean"),
            FWD_BWD: lambda: torch.autograd.grad(
                mm.pairwise_distance(xg, yg, "sqeuclidean"), (xg, yg), g
            ),
        },
        {FWD: forward, FWD_BWD: _both(forward, backward)},
        [out],
        [x, y, g, out, gx, gy],
    )


def _loss_case(k: _Tiny) -> OverheadCase:
    """prototypical_loss: queries [1,1,1], prototypes [1,1,1], targets [1,1] -> loss and
    accuracy [1]; forward+backward differentiates the loss."""
    import medmeta.ops as mm

    q, p, t = k.value(1, 1, 1), k.value(1, 1, 1, fill=-0.5), k.labels()
    qg, pg = _leaf(q), _leaf(p)
    loss, accuracy, gl = k.value(1), k.value(1), k.value(1, fill=1.0)
    dist, lse, ws = k.scratch(), k.scratch(), k.scratch()
    gq, gp = torch.empty_like(q), torch.empty_like(p)
    common = {
        "q": q.data_ptr(), "p": p.data_ptr(), "t": t.data_ptr(), "dist": dist.data_ptr(),
        "lse": lse.data_ptr(), "B": 1, "Q": 1, "N": 1, "D": 1, "metric": k.sq, "inv_t": 1.0,
    }  # fmt: skip
    forward = k.bare(
        "protoloss_forward", loss=loss.data_ptr(), acc=accuracy.data_ptr(), ws=ws.data_ptr(),
        check=True, **common,
    )  # fmt: skip
    backward = k.bare(
        "protoloss_backward", gl=gl.data_ptr(), gq=gq.data_ptr(), gp=gp.data_ptr(), ws=0,
        **common,
    )  # fmt: skip
    return OverheadCase(
        "prototypical_loss",
        "prototypical_loss",
        {"B": 1, "Q": 1, "N": 1, "D": 1, "metric": "sqeuclidean"},
        {
            FWD: lambda: mm.prototypical_loss(q, p, t, "sqeuclidean", 1.0),
            FWD_BWD: lambda: torch.autograd.grad(
                mm.prototypical_loss(qg, pg, t, "sqeuclidean", 1.0)[0], (qg, pg), gl
            ),
        },
        {FWD: forward, FWD_BWD: _both(forward, backward)},
        [loss, accuracy],
        [q, p, t, gl, loss, accuracy, dist, lse, ws, gq, gp],
    )


def _prototypes_case(k: _Tiny) -> OverheadCase:
    """prototypes: embeddings [1,1,1], labels [1,1], n_way 1 -> [1,1,1]."""
    import medmeta.ops as mm

    emb, labels, g = k.value(1, 1, 1), k.labels(), k.value(1, 1, 1, fill=1.0)
    embg = _leaf(emb)
    out, wsum, gemb = torch.empty_like(emb), k.scratch(), torch.empty_like(emb)
    common = {
        "emb": emb.data_ptr(), "labels": labels.data_ptr(), "w": 0, "out": out.data_ptr(),
        "wsum": wsum.data_ptr(), "B": 1, "S": 1, "N": 1, "D": 1,
    }  # fmt: skip
    forward = k.bare("prototypes_forward", check=True, **common)
    backward = k.bare("prototypes_backward", g=g.data_ptr(), gemb=gemb.data_ptr(), gw=0, **common)
    return OverheadCase(
        "prototypes",
        "prototypes",
        {"B": 1, "S": 1, "N": 1, "D": 1},
        {
            FWD: lambda: mm.prototypes(emb, labels, 1),
            FWD_BWD: lambda: torch.autograd.grad(mm.prototypes(embg, labels, 1), (embg,), g),
        },
        {FWD: forward, FWD_BWD: _both(forward, backward)},
        [out],
        [emb, labels, g, out, wsum, gemb],
    )


def _masked_case(k: _Tiny) -> OverheadCase:
    """masked_prototypes: features [1,1,1,1,1], masks [1,1,1,1,1] -> [1,1,1]; the masks
    are labels (no gradient), as in the benchmark grid."""
    import medmeta.ops as mm

    feat, masks = k.value(1, 1, 1, 1, 1), k.value(1, 1, 1, 1, 1, fill=1.0)
    g, featg = k.value(1, 1, 1, fill=1.0), _leaf(feat)
    out, mass, gfeat = k.value(1, 1, 1), k.scratch(), torch.empty_like(feat)
    common = {
        "feat": feat.data_ptr(), "masks": masks.data_ptr(), "out": out.data_ptr(),
        "mass": mass.data_ptr(), "B": 1, "S": 1, "C": 1, "D": 1, "HW": 1,
    }  # fmt: skip
    forward = k.bare("masked_prototypes_forward", check=True, **common)
    backward = k.bare(
        "masked_prototypes_backward", g=g.data_ptr(), gfeat=gfeat.data_ptr(), gmasks=0, **common
    )
    return OverheadCase(
        "masked_prototypes",
        "masked_prototypes",
        {"B": 1, "S": 1, "C": 1, "D": 1, "H": 1, "W": 1},
        {
            FWD: lambda: mm.masked_prototypes(feat, masks),
            FWD_BWD: lambda: torch.autograd.grad(mm.masked_prototypes(featg, masks), (featg,), g),
        },
        {FWD: forward, FWD_BWD: _both(forward, backward)},
        [out],
        [feat, masks, g, out, mass, gfeat],
    )


def _update_case(k: _Tiny, rate: str) -> OverheadCase:
    """inner_update of one [1,1] parameter with a float rate or one 1-element rate tensor
    (per-layer); forward+backward differentiates params, grads and the rate tensors."""
    import medmeta.ops as mm

    lr = 0.01
    prm, grd, go = k.value(1, 1), k.value(1, 1, fill=0.5), k.value(1, 1, fill=1.0)
    rates = [] if rate == "float" else [torch.full((1,), lr, device=k.device, dtype=k.dtype)]
    leaves = [_leaf(prm), _leaf(grd), *(_leaf(a) for a in rates)]
    out, gg, ga = torch.empty_like(prm), torch.empty_like(grd), [k.scratch(1) for _ in rates]
    # the CUDA backward first sums a single learned rate's gradient per block, there
    partials = [k.scratch(1) for _ in rates] if k.dev >= 0 else []
    common = {
        "grads": [grd.data_ptr()], "lrs": [a.data_ptr() for a in rates] or [0],
        "numels": [1], "lr_numels": [1], "lr_scalar": 0.0 if rates else lr,
    }  # fmt: skip
    forward = k.bare(
        "inner_update_forward", params=[prm.data_ptr()], outs=[out.data_ptr()],
        check=rate != "float", **common,
    )  # fmt: skip
    backward = k.bare(
        "inner_update_backward", grad_outs=[go.data_ptr()], grad_grads=[gg.data_ptr()],
        grad_lrs=[a.data_ptr() for a in ga] or [0], partials=[a.data_ptr() for a in partials],
        **common,
    )  # fmt: skip
    public_lr: Any = rates or lr
    leaf_lr: Any = leaves[2:] or lr
    return OverheadCase(
        f"inner_update ({rate} lr)",
        "inner_update",
        {"T": 1, "tensors": 1, "shape": [1, 1], "rate": rate},
        {
            FWD: lambda: mm.inner_update([prm], [grd], public_lr),
            FWD_BWD: lambda: torch.autograd.grad(
                mm.inner_update(leaves[:1], leaves[1:2], leaf_lr), leaves, [go]
            ),
        },
        {FWD: forward, FWD_BWD: _both(forward, backward)},
        [out],
        [prm, grd, go, out, gg, *rates, *ga, *partials],
    )


def _in_place_update_case(k: _Tiny) -> OverheadCase:
    """inner_update_ of one [1,1] parameter in place, float rate (forward only); the kernel
    updates its own copy of the parameter."""
    import medmeta.ops as mm

    lr = 0.01
    prm, grd = k.value(1, 1), k.value(1, 1, fill=0.5)
    own = prm.clone()
    forward = k.bare(
        "inner_update_forward", params=[own.data_ptr()], grads=[grd.data_ptr()], lrs=[0],
        outs=[own.data_ptr()], numels=[1], lr_numels=[1], lr_scalar=lr, check=False,
    )  # fmt: skip
    return OverheadCase(
        "inner_update_ (in place, float lr)",
        "inner_update",
        {"T": 1, "tensors": 1, "shape": [1, 1], "rate": "float", "in_place": True},
        {FWD: lambda: mm.inner_update_([prm], [grd], lr)},
        {FWD: forward},
        [own],
        [prm, grd, own],
    )


def overhead_cases(device: torch.device, dtype: torch.dtype = torch.float32) -> list[OverheadCase]:
    """The 1-element problem of every public op (B = Q = N = S = C = D = H = W = 1; one
    [1,1] tensor for the inner update) with its public calls and bare kernel calls."""
    from medmeta.ops import _native

    dev, stream = _native.device_args(torch.empty(1, device=device, dtype=dtype))
    k = _Tiny(
        device, dtype, _native.lib(), dev, stream, _native.DTYPE_CODES[dtype],
        _native.acc_dtype(dtype), _native.METRIC_CODES["sqeuclidean"],
    )  # fmt: skip
    return [
        _distance_case(k),
        _loss_case(k),
        _prototypes_case(k),
        _masked_case(k),
        _update_case(k, "float"),
        _update_case(k, "per-layer"),
        _in_place_update_case(k),
    ]


class _PassThrough(torch.autograd.Function):
    """The least a Python ``autograd.Function`` does: a copy forward, the gradient back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def overhead_floors(
    device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[str, Callable[[], Any]]:
    """torch's own cost on a 1-element problem, for scale: one op, one op with
    ``torch.autograd.grad``, and a pass-through ``torch.autograd.Function`` (the mechanism
    the eager ops use) with ``torch.autograd.grad``."""
    x = torch.full((1, 1, 1), 0.75, device=device, dtype=dtype)
    xg, g = x.clone().requires_grad_(True), torch.ones_like(x)
    grad, apply = torch.autograd.grad, _PassThrough.apply
    return {
        "torch x * 2": lambda: x * 2,
        "torch x * 2 + autograd.grad": lambda: grad(xg * 2, (xg,), g),
        "pass-through autograd.Function + autograd.grad": lambda: grad(apply(xg), (xg,), g),
    }


def _overhead_record(
    case: OverheadCase, pass_: str, checks: str, status: str = "ok"
) -> dict[str, Any]:
    return {
        "op": case.op,
        "case": case.name,
        "pass": pass_,
        "value_checks": checks,
        "shape": case.shape,
        "status": status,
        "kernel_calls": 1 if pass_ == FWD else 2,
    }


def _check_overhead_case(case: OverheadCase, clock: H.Clock) -> str | None:
    """Why the bare forward kernel call does not compute what the public op returns, or
    None when it does (one call each, before timing)."""
    try:
        with torch.no_grad():
            public = H.flatten_tensors(case.public[FWD]())
        case.kernel[FWD]()
        clock.sync()
    except Exception as e:
        return f"error: {H.short_error(e)}"
    for i, (a, b) in enumerate(zip(public, case.kernel_outputs, strict=False)):
        if not torch.allclose(a.detach().double(), b.double(), rtol=1e-5, atol=1e-6):
            return (
                f"error: the bare kernel's output {i} ({b.tolist()}) differs from the "
                f"public op's ({a.tolist()})"
            )
    return None


def measure_overhead(
    device: torch.device,
    ops: Sequence[str],
    clock: H.Clock,
    cfg: H.TimingConfig,
    quiet: QuietPolicy,
    checks_off: bool,
) -> dict[str, Any]:
    """Per-call framework overhead of every public op of ``ops`` (:func:`overhead_cases`),
    forward and forward+backward, with value checks on (the default) and, when
    ``checks_off``, off: overhead = median public call − median bare kernel call(s). All
    the calls of one value-check setting are timed round-robin in one measurement
    (:func:`time_point`), so that other processes slow the public call and its kernel
    alike. With value checks on, torch's floors (:func:`overhead_floors`) are timed in the
    same measurement."""
    import medmeta.ops as mm

    records: list[dict[str, Any]] = []
    floors: dict[str, dict[str, float]] = {}
    for checks in ("on", "off") if checks_off else ("on",):
        mm.set_value_checks(checks == "on")
        try:
            calls: dict[str, Callable[[], Any]] = {}
            timed: list[tuple[dict[str, Any], str]] = []
            for case in overhead_cases(device):
                if case.op not in ops:
                    continue
                why = _check_overhead_case(case, clock)
                for pass_ in (p for p in PASSES if p in case.public):
                    rec = _overhead_record(case, pass_, checks, why or "ok")
                    records.append(rec)
                    key = f"{case.name} | {pass_}"
                    pair = {"public": case.public[pass_], "kernel": case.kernel[pass_]}
                    for name, fn in pair.items() if why is None else ():
                        try:  # once, so that a failure is the record's, not the run's
                            fn()
                            clock.sync()
                        except Exception as e:
                            rec["status"] = f"error: {name}: {H.short_error(e)}"
                            break
                    if rec["status"] == "ok":
                        calls |= {f"{key} | {name}": fn for name, fn in pair.items()}
                        timed.append((rec, key))
            if not calls:
                continue
            if checks == "on":
                calls |= {f"floor | {n}": fn for n, fn in overhead_floors(device).items()}
            measured, others = time_point(calls, clock, cfg, quiet)
        finally:
            mm.set_value_checks(True)
        for rec, key in timed:
            for name in ("public", "kernel"):
                m = measured[f"{key} | {name}"]
                rec[f"{name}_s"], rec[f"{name}_q1_s"] = m.median_s, m.q1_s
                rec[f"{name}_q3_s"], rec[f"{name}_samples"] = m.q3_s, m.samples
            rec["overhead_s"] = rec["public_s"] - rec["kernel_s"]
            rec["others_cpu"] = others
        for key, m in measured.items():
            if key.startswith("floor | "):
                floors[key.removeprefix("floor | ")] = {
                    "median_s": m.median_s,
                    "q1_s": m.q1_s,
                    "q3_s": m.q3_s,
                    "samples": m.samples,
                }
    return {
        "definition": OVERHEAD_DEFINITION,
        "problem": "1 element: B = Q = N = S = C = D = H = W = 1 (sqeuclidean, temperature 1); "
        "inner_update: one [1,1] parameter (T = 1), lr 0.01 as a float or one 1-element tensor",
        "device_type": device.type,
        "target_s": OVERHEAD_TARGET_S if device.type == "cpu" else None,
        "records": records,
        "torch_floors": floors,
    }


def overhead_targets(overhead: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's overhead target: on CPU, the forward call of every op, value checks on
    (the default), under 10 µs over its kernel. Forward+backward is reported beside torch's
    own autograd floors (:func:`overhead_floors`), not held to it: ``torch.autograd.grad``
    alone costs more. Empty when nothing was measured or the run was not on CPU."""
    if not overhead or overhead.get("device_type") != "cpu":
        return []
    recs = [r for r in overhead["records"] if r["pass"] == FWD and r["value_checks"] == "on"]
    if not recs:
        return []
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r["case"] for r in recs if r["status"] != "ok"]
    parts = []
    met = not failed
    if ok:
        worst = max(ok, key=lambda r: r["overhead_s"])
        met = met and worst["overhead_s"] < OVERHEAD_TARGET_S
        parts.append(
            f"worst {1e6 * worst['overhead_s']:.1f} µs: {worst['case']} (public "
            f"{1e6 * worst['public_s']:.1f} µs − bare kernel {1e6 * worst['kernel_s']:.1f} µs); "
            f"median {1e6 * statistics.median(r['overhead_s'] for r in ok):.1f} µs over "
            f"{len(ok)} ops; forward, value checks on"
        )
        over = [r for r in ok if r["overhead_s"] >= OVERHEAD_TARGET_S]
        if over:
            parts.append(
                f"missed by {1e6 * (worst['overhead_s'] - OVERHEAD_TARGET_S):.1f} µs; "
                f"{len(over)}/{len(ok)} ops at or over 10 µs"
            )
    if failed:
        parts.append("not measured: " + ", ".join(failed))
    return [{"target": OVERHEAD_TARGET, "met": met, "detail": "; ".join(parts)}]


def _overhead_line(r: Mapping[str, Any]) -> str:
    """One progress line of the overhead measurement."""
    head = f"{r['case']:35s} {r['pass']:16s} checks {r['value_checks']:3s}"
    if r["status"] != "ok":
        return f"{head}  {r['status']}"
    return (
        f"{head}  public {1e6 * r['public_s']:6.2f} µs  kernel {1e6 * r['kernel_s']:6.2f} µs  "
        f"overhead {1e6 * r['overhead_s']:6.2f} µs"
    )


def _overhead_section(overhead: Mapping[str, Any] | None) -> list[str]:
    """The markdown table of the per-call overhead."""
    if not overhead or not overhead.get("records"):
        return []
    device = overhead.get("device_type", "cpu").upper()
    records = overhead["records"]
    off = {(r["case"], r["pass"]): r for r in records if r["value_checks"] == "off"}

    def us(r: Mapping[str, Any] | None, key: str) -> str:
        if r is None or r["status"] != "ok":
            return "—"
        text = f"{1e6 * r[key]:.2f}"
        return f"**{text}**" if key == "overhead_s" else text

    def iqr(r: Mapping[str, Any], key: str) -> str:
        if r["status"] != "ok":
            return r["status"]
        return f"{us(r, key + '_s')} ({1e6 * r[key + '_q1_s']:.2f}–{1e6 * r[key + '_q3_s']:.2f})"

    rows = []
    for r in (r for r in records if r["value_checks"] == "on"):
        o = off.get((r["case"], r["pass"]))
        rows.append(
            [
                r["case"],
                r["pass"],
                iqr(r, "public"),
                iqr(r, "kernel"),
                us(r, "overhead_s"),
                us(o, "public_s"),
                us(o, "overhead_s"),
            ]
        )
    lines = [
        "",
        f"## Per-call overhead (1-element problem, {device})",
        "",
        f"Overhead = median time of the public op − median time of the bare `medmeta._C` kernel "
        "call(s) it runs (every argument prepared ahead, passed positionally), timed "
        "round-robin; forward+backward: the public forward and `torch.autograd.grad` against the "
        f"forward and the backward kernel. Problem: {overhead['problem']}. µs, median (IQR).",
        "",
        H.markdown_table(
            [
                "op",
                "pass",
                "public call µs",
                "bare kernel µs",
                "overhead µs",
                "checks off: public µs",
                "checks off: overhead µs",
            ],
            rows,
        ),
    ]
    floors = overhead.get("torch_floors") or {}
    if floors:
        text = "; ".join(f"{name}: {1e6 * f['median_s']:.2f} µs" for name, f in floors.items())
        lines += [
            "",
            f"For scale, torch's own floors on a 1-element tensor in the same measurement: {text}. "
            "The target holds the forward call (value checks on) to 10 µs over its kernel; "
            "forward+backward is reported, not held to it, since `torch.autograd.grad` alone "
            "costs more.",
        ]
    if overhead.get("target_s") is None:
        lines += ["", "No target on this device (the 10 µs target is for CPU)."]
    return lines


# --------------------------------------------------------------------------- targets


def evaluate_targets(
    points: Sequence[H.Point],
    device_type: str,
    peak_bw: float | None,
    copy_bw: float,
    overhead: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each with met / missed and by how much; on CPU the per-call
    overhead's (:func:`overhead_targets`) after the speedups."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((p.op, p.pass_) for p in points))
    if device_type == "cpu":
        for op, pass_ in keys:
            ps = [p for p in points if (p.op, p.pass_) == (op, pass_) and p.speedup]
            if not ps:
                continue
            worst = min(ps, key=lambda p: p.speedup)
            slower = [p for p in ps if p.speedup < 1]
            clearly = [p for p in ps if p.clearly_slower]
            detail = (
                f"worst {worst.speedup:.2f}× at {worst.series} {x_name(op, worst.series)}={worst.x} "
                f"(vs {worst.best_torch}); {len(slower)}/{len(ps)} points slower"
                f" ({len(clearly)} beyond the IQRs)"
            )
            if slower:
                detail += f"; missed: medmeta takes up to {1 / worst.speedup:.2f}× the best time"
            out.append(
                {
                    "target": f"CPU: {op} {pass_} not slower than the best torch formulation at any size",
                    "met": not slower,
                    "detail": detail,
                }
            )
        return out + overhead_targets(overhead)
    for op in ("prototypical_loss", "prototypes"):
        ps = [p for p in points if p.op == op and p.pass_ == FWD_BWD and p.x >= 32 and p.speedup]
        if ps:
            worst = min(ps, key=lambda p: p.speedup)
            out.append(
                {
                    "target": f"GPU: {op} forward+backward ≥ 2× the best torch formulation at B ≥ 32",
                    "met": worst.speedup >= 2,
                    "detail": f"worst {worst.speedup:.2f}× at {worst.series} B={worst.x} (vs {worst.best_torch}); "
                    f"median {statistics.median(p.speedup for p in ps):.2f}× over {len(ps)} points",
                }
            )
    upd = [p for p in points if p.op == "inner_update"]
    vs_foreach = [
        (p, r) for p in upd for n, r in p.ratios.items() if n.startswith("torch._foreach_add")
    ]
    if vs_foreach:
        p, r = min(vs_foreach, key=lambda pr: pr[1])
        out.append(
            {
                "target": "GPU: inner_update ≥ on par with torch._foreach_add",
                "met": r >= 1.0,
                "detail": f"worst {r:.2f}× at {p.series} {p.pass_} T={p.x}",
            }
        )
    vs_loop = []
    for p in upd:
        loops = [r for n, r in p.ratios.items() if n in LOOP_FORMULATIONS]
        if loops:
            vs_loop.append((p, min(loops)))
    if vs_loop:
        p, r = min(vs_loop, key=lambda pr: pr[1])
        out.append(
            {
                "target": "GPU: inner_update ≥ 5× the (fastest) per-tensor loop",
                "met": r >= 5.0,
                "detail": f"worst {r:.2f}× at {p.series} {p.pass_} T={p.x}",
            }
        )
    large = [p for p in upd if p.pass_ == FWD and p.medmeta_gbps and p.shape["MB_per_list"] >= 10]
    if large and peak_bw:
        p = min(large, key=lambda p: p.medmeta_gbps)
        frac = p.medmeta_gbps * 1e9 / peak_bw
        out.append(
            {
                "target": "GPU: inner_update forward > 60% of the memory-bandwidth limit at large sizes (≥ 10 MB per list)",
                "met": frac > 0.6,
                "detail": f"worst {p.medmeta_gbps:.0f} GB/s = {100 * frac:.0f}% of {peak_bw / 1e12:.2f} TB/s peak "
                f"({100 * p.medmeta_gbps * 1e9 / copy_bw:.0f}% of the measured copy {copy_bw / 1e12:.2f} TB/s) at {p.series} T={p.x}",
            }
        )
    return out


# --------------------------------------------------------------------------- report


def markdown_report(payload: dict[str, Any]) -> str:
    """The ``ops-<device>.md`` summary."""
    env, summary, targets = payload["environment"], payload["summary"], payload["targets"]
    points = [_point_from_json(p) for p in payload["points"]]
    gpu = env["device_type"] == "cuda"
    lines = [
        f"# medmeta ops benchmark — {env['device_type']}",
        "",
        f"- Device: **{env['device_name']}**; CPU {env['cpu_model']} ({env['cpu_count']} cores), "
        f"{env['threads']} threads; torch {env['torch']}, medmeta {env['medmeta']}, Python {env['python']}",
        *H.provenance_lines(env),
        f"- Load average at start/end {_loads(env)}",
        f"- Environment: {', '.join(f'{k}={v}' for k, v in env['env'].items()) or '(none)'}",
        f"- medmeta value checks: **on** (the default) for `medmeta`; `medmeta [checks off]` is reported beside it. "
        f"Peers: {', '.join(f'{k} {v}' for k, v in env['peers'].items())}",
        "- float32. Speedup = time of the best general pure-PyTorch formulation / time of medmeta "
        "(> 1: medmeta faster), at each point; median of round-robin samples, IQR in the JSON. "
        "Peers (KeOps, easyfsl), the class-grouped-only `view().mean` and medmeta variants are "
        "compared but never count as the best torch formulation.",
        "- Before timing, every formulation (medmeta included) is checked at every point against "
        "the float64 reference (`medmeta.ops._reference`), within a float32 tolerance of the "
        "reference's largest entry (32 ulps × √(length of the sums), 1e-5 to 1e-3); a "
        "disagreeing baseline is not timed (listed below with its error), a disagreeing "
        "medmeta fails the run."
        if env.get("reference_check")
        else "- This run predates the float64 check: formulations were compared with medmeta "
        "(rtol 1e-3, atol 1e-4 × max|medmeta|) before timing.",
    ]
    segmentation = env.get("shapes") == "segmentation"
    if segmentation:
        lines.append(
            "- Shape set: **segmentation** (`--shapes segmentation`): one episode (B = 1) of "
            "PANet/ALPNet; masked_prototypes of soft masks swept over H·W, the cosine "
            "pairwise_distance of every query feature position against the prototypes swept "
            "over n·h·w (see `segmentation_grid` in benchmarks/ops.py)."
        )
    c = env.get("contention")
    if c:
        lines.append(
            f"- Other processes: waited {c['waited_s']} s for quiet, re-measured {c['remeasured_points']} "
            f"times; {c['points_still_disturbed']} points timed while others used ≥ {c['threshold_cpus']} CPU "
            "(`others_cpu` in the JSON)"
        )
    if env.get("resumed_from"):
        r = env["resumed_from"]
        made_by = ""
        if r.get("command"):
            made_by = f", made by `{' '.join(r['command'])}` at git `{r.get('git_commit')}`"
            made_by += " (**dirty tree**)" if r.get("git_dirty") else ""
        lines.append(
            f"- {r['reused_points']} undisturbed points reused from {r['path']} "
            f"({r['date_utc']}{made_by})"
        )
    if not gpu:
        lines.append(
            "- CPU run: ratios only (absolute times are in the JSON, not reported here), but "
            "for the per-call overhead in µs."
        )
    lines += ["", "## medmeta vs the best torch formulation", ""]
    rows = []
    for s in summary:
        at = s["worst_at"]
        rows.append(
            [
                s["op"],
                s["pass"],
                s["points"],
                f"**{H.fmt_ratio(s['worst_speedup'])}**",
                f"{at['series']} {x_name(s['op'], at['series'])}={at['x']}",
                s["worst_best_torch"],
                f"**{H.fmt_ratio(s['median_speedup'])}**",
                f"{s['slower_points']} ({s['clearly_slower_points']})",
            ]
        )
    lines.append(
        H.markdown_table(
            [
                "op",
                "pass",
                "points",
                "worst",
                "worst at",
                "best torch there",
                "median",
                "slower (beyond IQR)",
            ],
            rows,
        )
    )
    lines += ["", "## Targets", ""]
    lines.append(
        H.markdown_table(
            ["target", "met", "detail"],
            [[t["target"], "yes" if t["met"] else "**no**", t["detail"]] for t in targets],
        )
    )
    lines += _overhead_section(payload.get("overhead"))
    lines += ["", "## medmeta vs each formulation (time of it / time of medmeta)", ""]
    kinds = {r["formulation"]: r["kind"] for r in payload["records"]}
    rows = []
    for s in summary:
        for name, v in s["vs_formulation"].items():
            rows.append(
                [
                    s["op"],
                    s["pass"],
                    name,
                    kinds.get(name, ""),
                    v["points"],
                    H.fmt_ratio(v["median"]),
                    H.fmt_ratio(v["worst"]),
                ]
            )
    lines.append(
        H.markdown_table(["op", "pass", "formulation", "kind", "points", "median", "worst"], rows)
    )
    if segmentation:
        lines += _every_point_section(points)
    slow = [p for p in points if p.speedup is not None and p.speedup < 1]
    lines += ["", "## Points where medmeta is slower than the best torch formulation", ""]
    if not slow:
        lines.append("None.")
    else:
        header = ["op", "pass", "shape", "best torch", "speedup", "beyond IQR", "others' CPU"]
        if gpu:
            header += ["medmeta ms", "best torch ms"]
        rows = []
        for p in sorted(slow, key=lambda p: p.speedup):
            row = [
                p.op,
                p.pass_,
                H.fmt_shape(p.shape),
                p.best_torch,
                H.fmt_ratio(p.speedup),
                "yes" if p.clearly_slower else "no",
                "—" if p.others_cpu is None else f"{p.others_cpu:.2f}",
            ]
            if gpu:
                row += [f"{1e3 * p.medmeta_s:.3f}", f"{1e3 * p.best_torch_s:.3f}"]
            rows.append(row)
        lines.append(H.markdown_table(header, rows))
    lines += _reference_sections(payload["records"])
    problems = [
        r
        for r in payload["records"]
        if r["status"] not in ("ok",)
        and not r["status"].startswith(("skipped", "disagrees with the float64 reference"))
    ]
    if problems:
        lines += ["", "## Formulations not timed", ""]
        seen: dict[tuple[str, str, str], int] = {}
        for r in problems:
            key = (r["op"], r["formulation"], r["status"])
            seen[key] = seen.get(key, 0) + 1
        lines.append(
            H.markdown_table(
                ["op", "formulation", "status", "points"], [[*k, n] for k, n in seen.items()]
            )
        )
    if gpu:
        lines += ["", "## Absolute times (GPU)", ""]
        rows = [
            [
                p.op,
                p.pass_,
                H.fmt_shape(p.shape),
                f"{1e3 * p.medmeta_s:.4f}",
                p.best_torch,
                f"{1e3 * p.best_torch_s:.4f}" if p.best_torch_s else "—",
                f"{p.medmeta_gbps:.0f}" if p.medmeta_gbps else "—",
            ]
            for p in points
        ]
        lines.append(
            H.markdown_table(
                ["op", "pass", "shape", "medmeta ms", "best torch", "its ms", "medmeta GB/s"], rows
            )
        )
    return "\n".join(lines) + "\n"


def _every_point_section(points: Sequence[H.Point]) -> list[str]:
    """Every point: medmeta's speedup over the best torch formulation (forward and
    forward+backward side by side), for the segmentation shape set."""
    by_shape: dict[tuple[str, str, int], dict[str, H.Point]] = {}
    for p in points:
        by_shape.setdefault((p.op, p.series, p.x), {})[p.pass_] = p

    def cell(p: H.Point | None) -> str:
        if p is None or p.speedup is None:
            return "—"
        mark = " (beyond IQR)" if p.clearly_slower else ""
        return f"{H.fmt_ratio(p.speedup)} vs {p.best_torch}{mark}"

    rows = [
        [op, series, f"{x_name(op, series)}={x}", cell(ps.get(FWD)), cell(ps.get(FWD_BWD))]
        for (op, series, x), ps in by_shape.items()
    ]
    return [
        "",
        "## Every point: medmeta's speedup over the best torch formulation",
        "",
        H.markdown_table(["op", "series", "size", FWD, FWD_BWD], rows),
    ]


def _reference_sections(records: list[dict[str, Any]]) -> list[str]:
    """The agreement with the float64 reference: the worst relative error of every
    formulation per op and pass, and every baseline dropped for disagreeing."""
    checked = [r for r in records if r.get("ref_error") is not None]
    if not checked:
        return []
    worst: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in checked:
        key = (r["op"], r["pass"], r["formulation"])
        margin = r["ref_error"] / r["ref_tol"] if r.get("ref_tol") else None
        w = worst.setdefault(key, {"points": 0, "error": 0.0, "share": 0.0, "kind": r["kind"]})
        w["points"] += 1
        w["error"] = max(w["error"], r["ref_error"])
        w["share"] = max(w["share"], margin or 0.0)
    lines = [
        "",
        "## Agreement with the float64 reference",
        "",
        "Largest |error| relative to the reference's largest entry over the points checked, "
        "and the largest share of the tolerance it used (> 100%: disagrees).",
        "",
        H.markdown_table(
            ["op", "pass", "formulation", "kind", "points", "worst error", "of tolerance"],
            [
                [*k, w["kind"], w["points"], f"{w['error']:.1e}", f"{100 * w['share']:.1f}%"]
                for k, w in worst.items()
            ],
        ),
    ]
    dropped = [r for r in records if r["status"].startswith("disagrees with the float64")]
    lines += ["", "## Baselines that disagree with the float64 reference (not timed)", ""]
    if not dropped:
        lines.append("None.")
        return lines
    rows = [
        [
            r["op"],
            r["pass"],
            H.fmt_shape(r["shape"]),
            r["formulation"],
            "—" if r.get("ref_error") is None else f"{r['ref_error']:.2e}",
            "—" if r.get("ref_tol") is None else f"{r['ref_tol']:.1e}",
            r["status"].removeprefix("disagrees with the float64 reference: "),
        ]
        for r in dropped
    ]
    lines.append(
        H.markdown_table(
            ["op", "pass", "shape", "formulation", "relative error", "tolerance", "detail"], rows
        )
    )
    return lines


def _loads(env: dict[str, Any]) -> str:
    start = env.get("load_average_start") or []
    end = env.get("load_average_end") or []
    return (
        f"{start[0] if start else float('nan'):.2f} / {end[0] if end else float('nan'):.2f} (1-min)"
    )


def _point_from_json(d: dict[str, Any]) -> H.Point:
    d = dict(d)
    d["pass_"] = d.pop("pass")
    return H.Point(**d)


def write_outputs(payload: dict[str, Any], stem: Path) -> list[Path]:
    """JSON, plot and markdown for one run; returns the paths written."""
    H.write_json(stem.with_suffix(".json"), payload)
    env = payload["environment"]
    points = [_point_from_json(p) for p in payload["points"]]
    title = (
        f"medmeta ops: speedup over the best pure-PyTorch formulation "
        f"({env['device_name']}, {env['threads']} threads, torch {env['torch']})"
    )
    order = [(op, pass_) for op in OPS for pass_ in PASSES]
    paths = [stem.with_suffix(".json")]
    segmentation = env.get("shapes") == "segmentation"
    if segmentation:
        title = title.replace("medmeta ops:", "medmeta ops, segmentation shapes:")
    x_labels = SEGMENTATION_X_LABELS if segmentation else X_LABELS
    try:
        H.plot_speedups(points, stem.with_suffix(".png"), title, x_labels, order)
        paths.append(stem.with_suffix(".png"))
    except ImportError as e:
        payload.setdefault("notes", []).append(f"no plot: {H.short_error(e)}")
    H.write_text(stem.with_suffix(".md"), markdown_report(payload))
    paths.append(stem.with_suffix(".md"))
    return paths


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch (and medmeta) CPU threads")
    ap.add_argument("--quick", action="store_true", help="a few small sizes, short timings (CI)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--tag",
        default=None,
        help="file-name suffix (default: 'quick' with --quick; 'segmentation[-quick]' with "
        "--shapes segmentation)",
    )
    ap.add_argument(
        "--shapes",
        default="default",
        choices=SHAPE_SETS,
        help="the shape set: 'default' (episode batches, B/T sweeps) or 'segmentation' "
        "(masked_prototypes and the cosine pairwise_distance of PANet/ALPNet, one episode)",
    )
    ap.add_argument(
        "--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS)
    )
    ap.add_argument(
        "--target-time",
        type=float,
        default=None,
        help="seconds per measurement (default 0.2, quick 0.03)",
    )
    ap.add_argument(
        "--keops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include pykeops (default: on unless --quick)",
    )
    ap.add_argument(
        "--checks-off",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time medmeta with value checks off",
    )
    ap.add_argument(
        "--overhead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure the per-call framework overhead on 1-element problems "
        "(default: on, off with --shapes segmentation)",
    )
    ap.add_argument(
        "--no-malloc-env",
        action="store_true",
        help=f"do not re-run with {' '.join(H.MALLOC_ENV)} set on CPU",
    )
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="CPUs other processes may use before a point counts as disturbed (default 0.3)",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="seconds to wait per point for other processes to calm down (default 20, quick 0)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=None,
        help="re-measurements of a disturbed point (default 2, quick 0)",
    )
    ap.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="reuse the undisturbed points of this earlier JSON (same device, threads and "
        "native library) and measure only the rest",
    )
    ap.add_argument(
        "--replot", type=Path, default=None, help="only rewrite the plot and summary of this JSON"
    )
    ap.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
        "(the results are marked dirty)",
    )
    args = ap.parse_args(list(argv))
    if args.overhead is None:
        args.overhead = args.shapes == "default"
    return args


def _progress(recs: Sequence[H.Record], seconds: float) -> str:
    """One progress line: medmeta's speedup over the best torch formulation at a point."""
    r0 = recs[0]
    ours = next((r for r in recs if r.kind == H.KIND_OURS and r.median_s), None)
    torch_ok = [r for r in recs if r.kind == H.KIND_TORCH and r.median_s]
    others = "" if r0.others_cpu is None else f" others {r0.others_cpu:.2f} CPU"
    head = f"[{seconds:4.1f}s{others}] {r0.op:17s} {r0.pass_:16s} {r0.series:34s} x={r0.x:<4d}"
    if ours is None or not torch_ok:
        return (
            head
            + "  (no comparison: "
            + "; ".join(f"{r.formulation}: {r.status}" for r in recs if r.status != "ok")
            + ")"
        )
    best = min(torch_ok, key=lambda r: r.median_s)
    bad = [
        f"{r.formulation}: {r.status}"
        for r in recs
        if r.status != "ok" and not r.status.startswith(("skipped", "not available"))
    ]
    return (
        head
        + f"  {best.median_s / ours.median_s:6.2f}× vs {best.formulation}"
        + (f"   !! {bad}" if bad else "")
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status."""
    prog = prog or "python -m benchmarks.ops"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    if args.replot is not None:
        return H.replot(args.replot, write_outputs)
    device, command = H.start_run(
        args.device, prog, "benchmarks.ops", argv, args.no_malloc_env, args.out, args.allow_dirty
    )
    if device is None:
        return 2
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - set(OPS)
    if unknown:
        print(f"unknown ops {sorted(unknown)}; known: {', '.join(OPS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    target = args.target_time or (0.03 if args.quick else 0.2)
    cfg = H.TimingConfig(
        target_s=target, rounds=2 if args.quick else 3, min_samples=3 if args.quick else 5
    )
    quiet = QuietPolicy(
        threshold=args.quiet_threshold,
        max_wait_s=args.max_wait if args.max_wait is not None else (0.0 if args.quick else 20.0),
        retries=args.retries if args.retries is not None else (0 if args.quick else 2),
    )
    keops = (not args.quick) if args.keops is None else args.keops
    return run(args, device, ops, cfg, quiet, keops, command)


def run(
    args: argparse.Namespace,
    device: torch.device,
    ops: Sequence[str],
    cfg: H.TimingConfig,
    quiet: QuietPolicy,
    keops: bool,
    command: list[str],
) -> int:
    dtype = torch.float32
    clock = H.Clock(device)
    peers = load_peers(device, keops)
    copy_bw = H.copy_bandwidth(device)
    env = H.environment(
        device,
        args.threads,
        command,
        {
            "peers": peers.status(),
            "peers_status_json": _peers_status_json(),
            "dtype": "float32",
            "shapes": args.shapes,
            "value_checks": "on (medmeta); off only in 'medmeta [checks off]'",
            "timing": {
                **cfg.__dict__,
                "clock": "cuda events" if clock.cuda else "time.perf_counter",
            },
            "measured_copy_bandwidth_gbps": copy_bw / 1e9,
            "nominal_peak_bandwidth_gbps": _nominal_peak_gbps(device),
            "reference_check": "every formulation, medmeta included, against medmeta.ops._reference "
            "on float64 copies of the inputs; tolerance float32_tolerance(longest sum) of the "
            "reference's largest entry per output (records: ref_error, ref_tol)",
        },
        allow_dirty=args.allow_dirty,
    )
    print(
        f"medmeta ops benchmark on {env['device_name']} ({args.threads} threads); peers: {peers.status()}"
    )
    if env["backend_info"]["backend"] != "native":
        print(f"warning: MEDMETA_BACKEND={env['backend_info']['backend']}: not the native kernels")
    reuse: dict[tuple[str, str, str, int], list[H.Record]] = {}
    if args.resume is not None:
        try:
            reuse, env["resumed_from"] = load_clean_points(args.resume, env, quiet.threshold)
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot resume from {args.resume}: {e}", file=sys.stderr)
            return 2
        print(f"reusing {len(reuse)} undisturbed points of {args.resume}")
    records: list[H.Record] = []
    started = time.perf_counter()
    for build, spec in grid(args.quick, args.shapes):
        op = BUILDERS[build]
        if op not in ops:
            continue
        todo = [p for p in spec.passes if (op, p, spec.series(), spec.x) not in reuse]
        problem = _build(build, spec, device, dtype, peers, args.checks_off) if todo else None
        for pass_ in spec.passes:
            t0 = time.perf_counter()
            recs = reuse.get((op, pass_, spec.series(), spec.x))
            if recs is None:
                assert problem is not None
                try:
                    recs = run_point(problem, pass_, clock, cfg, quiet)
                except MedmetaCheckFailed as e:
                    print(f"!! {e}\n!! the run fails: no results written", file=sys.stderr)
                    return 1
            records += recs
            line = _progress(recs, time.perf_counter() - t0)
            print(
                line + ("   (reused)" if problem is None or pass_ not in todo else ""), flush=True
            )
        del problem
    overhead = None
    if args.overhead:
        t0 = time.perf_counter()
        overhead = measure_overhead(device, ops, clock, cfg, quiet, args.checks_off)
        print(f"[{time.perf_counter() - t0:4.1f}s] per-call overhead (1-element problem):")
        for r in overhead["records"]:
            print("  " + _overhead_line(r), flush=True)
    env["load_average_end"] = list(os.getloadavg())
    env["wall_s"] = round(time.perf_counter() - started, 1)
    disturbed = {
        (r.op, r.pass_, r.series, r.x)
        for r in records
        if r.others_cpu is not None and r.others_cpu >= quiet.threshold
    }
    env["contention"] = {
        "threshold_cpus": quiet.threshold,
        "max_wait_per_point_s": quiet.max_wait_s,
        "retries": quiet.retries,
        "waited_s": round(quiet.waited_s, 1),
        "remeasured_points": quiet.remeasured,
        "points_still_disturbed": len(disturbed),
        "note": "others_cpu per record: CPUs used by other processes while the point was timed",
    }
    payload = _payload(env, records, device, overhead)
    tag = args.tag
    if tag is None:
        tag = "-".join(
            [*(["segmentation"] if args.shapes == "segmentation" else []),
             *(["quick"] if args.quick else [])]
        )  # fmt: skip
    stem = args.out / (f"ops-{device.type}" + (f"-{tag}" if tag else ""))
    for path in write_outputs(payload, stem):
        print(f"wrote {path}")
    print()
    for s in payload["summary"]:
        print(
            f"{s['op']:18s} {s['pass']:16s} worst {s['worst_speedup']:5.2f}× (vs {s['worst_best_torch']}) "
            f"median {s['median_speedup']:5.2f}×  slower at {s['slower_points']}/{s['points']}"
        )
    for t in overhead_targets(overhead):
        print(f"{t['target']}: {'met' if t['met'] else 'MISSED'} ({t['detail']})")
    bad = [r for r in records if r.status.startswith(("error", "disagrees"))]
    for r in bad:
        print(f"!! {r.op} {r.pass_} {r.series} x={r.x} {r.formulation}: {r.status}")
    failed = [r for r in (overhead or {}).get("records", []) if r["status"] != "ok"]
    for r in failed:
        print(f"!! per-call overhead {r['case']} {r['pass']}: {r['status']}")
    return 1 if failed or any(r.kind == H.KIND_OURS for r in bad) else 0


def _build(
    build: Callable[..., Problem],
    spec: Any,
    device: torch.device,
    dtype: torch.dtype,
    peers: Peers,
    checks_off: bool,
) -> Problem:
    torch.manual_seed(0)
    return build(spec, device, dtype, peers, checks_off)


def _nominal_peak_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    bw = H.peak_bandwidth(torch.cuda.get_device_name(device))
    return bw / 1e9 if bw else None


def _peers_status_json() -> Any:
    path = Path(sys.prefix) / "peers_status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_clean_points(
    path: Path, env: dict[str, Any], threshold: float
) -> tuple[dict[tuple[str, str, str, int], list[H.Record]], dict[str, Any]]:
    """The points of an earlier run that no other process disturbed, keyed by
    (op, pass, series, x), and a note on where they came from. Refuses a run made on
    another device, thread count or native library."""
    old = json.loads(path.read_text())
    old_env = old["environment"]
    for key in ("device_name", "threads", "medmeta_native_library", "torch"):
        if old_env.get(key) != env.get(key):
            raise ValueError(f"{key} differs: {old_env.get(key)!r} there, {env.get(key)!r} now")
    groups: dict[tuple[str, str, str, int], list[H.Record]] = {}
    for d in old["records"]:
        d = dict(d)
        d["pass_"] = d.pop("pass")
        r = H.Record(**d)
        groups.setdefault((r.op, r.pass_, r.series, r.x), []).append(r)
    clean = {
        k: rs
        for k, rs in groups.items()
        if all(r.others_cpu is not None and r.others_cpu < threshold for r in rs)
        and any(r.kind == H.KIND_OURS and r.status == "ok" for r in rs)
    }
    note = {
        "path": str(path),
        "date_utc": old_env["date_utc"],
        "command": old_env.get("command"),
        "git_commit": old_env.get("git_commit"),
        "git_dirty": H.is_dirty(old_env),
        "reused_points": len(clean),
    }
    return clean, note


def _payload(
    env: dict[str, Any],
    records: list[H.Record],
    device: torch.device,
    overhead: dict[str, Any] | None = None,
) -> dict[str, Any]:
    H.finish_records(records)
    points = H.points_of(records)
    copy_bw = env["measured_copy_bandwidth_gbps"] * 1e9
    peak = H.peak_bandwidth(env["device_name"]) if device.type == "cuda" else None
    return {
        "schema": "medmeta-bench-ops/1",
        "environment": env,
        "definitions": {
            "ratio_vs_medmeta": "median time of the formulation / median time of medmeta (value checks on); > 1 means medmeta is faster",
            "speedup": "median time of the fastest general pure-torch formulation (kind 'torch') / medmeta's",
            "clearly_slower": "medmeta's first quartile is above the best torch formulation's third quartile",
            "bytes": "minimal bytes one call must move (inputs read once, outputs written once; backward re-reads inputs); gbps = bytes / median",
            "kinds": {
                H.KIND_OURS: "medmeta, default settings",
                H.KIND_OURS_VARIANT: "medmeta with value checks off",
                H.KIND_TORCH: "general pure-PyTorch formulation (candidate for best torch)",
                H.KIND_TORCH_STRUCTURED: "pure PyTorch, valid only for class-grouped equal-shot supports",
                H.KIND_PEER: "another library",
            },
        },
        "records": [r.to_json() for r in records],
        "points": [p.to_json() for p in points],
        "summary": H.summarize(points),
        "overhead": overhead,
        "targets": evaluate_targets(points, device.type, peak, copy_bw, overhead),
    }


if __name__ == "__main__":
    sys.exit(main())
