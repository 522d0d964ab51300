"""Meta-training throughput of every medmeta algorithm against plain PyTorch and the peers.

    python -m benchmarks algorithms [--device cpu|cuda] [--quick] [--threads 2] [--out DIR]
    python -m benchmarks.algorithms ...                   (same)

For each algorithm (``medmeta.algorithms.available()``), one meta-training step
(``learner.meta_train_step(batch, optimizer)``: loss, meta-gradient, Adam step) on a
meta-batch of B real episodes (pbc_blood blood-cell images, 28x28x3, 5-way 1-shot and
5-shot, 15 queries per class, Conv4 with 64 channels as in ``benchmarks/protocols.py``) is
timed beside

* the same algorithm in plain PyTorch with a per-task Python loop (``loop``), for the MAML
  family ``functional_call`` + ``autograd.grad`` per task (:mod:`benchmarks._maml_formulations`);
* for ProtoNet also all episodes at once in plain PyTorch (``batched``: one backbone
  forward, one-hot ``bmm`` class means, ``torch.cdist``), in training and evaluation;
* ``torch.func.vmap`` over tasks for MAML (flagged: wrong with batch norm, pytorch/functorch#534);
* learn2learn (MAML, first-order MAML, MetaSGD, ANIL via its MAML wrapper, the
  ``PrototypicalClassifier``), higher and TorchOpt (MAML) and easyfsl (``PrototypicalNetworks``,
  ``RelationNetworks``), one episode at a time, where they import;

and ProtoNet *evaluation* (``predict`` under ``torch.inference_mode``) beside a per-episode
loop, easyfsl's ``process_support_set`` + forward and learn2learn's classifier, with the same
weights. Every formulation, medmeta included, is first checked in float64 on a batch of 2
episodes against the float64 reference, the plain per-task loop (every meta-parameter's
gradient, or the evaluation logits): a medmeta disagreement fails the run, a disagreeing
baseline is recorded with its error and not timed (``vmap`` excepted: timed and flagged).

Writes ``algorithms-<device>[-tag].json`` (environment, one record per algorithm / pass /
shots / B / formulation with times, episodes per second and the time ratio to medmeta),
``.png`` (medmeta's speed-up over the best pure-PyTorch formulation against B) and ``.md`` (ratios, the
GPU targets, what was not available and why). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _harness as H
from benchmarks import _maml_formulations as M
from benchmarks.ops import QuietPolicy

TRAIN = "meta-train"
EVALUATE = "evaluate"
WAYS = 5
CHECK_BATCH = 2  # episodes of the float64 agreement check (exercises the task batching)
REFERENCE = "loop"  # the float64 reference every formulation is checked against
# Largest |difference| to the reference allowed, relative to its largest gradient entry:
# float64 rounding leaves ~1e-13 here (float32 would leave ~1e-3 in the MAML family).
CHECK_TOL = 1e-7
SIZE = 28  # pbc_blood's native size; Conv4 maps it to 1x1 feature maps

METRIC = ("supervised", "protonet", "matching", "relation", "siamese", "snail")
FAST_WEIGHTS = ("maml", "fomaml", "reptile", "metasgd", "anil", "mamlpp")
ALGORITHMS = METRIC + FAST_WEIGHTS

# Hyper-parameters beside the defaults: ProtoNet with easyfsl's (fixed) Euclidean metric so
# that one learner is compared with every alternative; MAML++ second order from the first
# step (its steady state; by default it trains first order for 1000 steps).
HPARAMS: dict[str, dict[str, Any]] = {
    "protonet": {"metric": "euclidean"},
    "mamlpp": {"first_order_steps": 0},
}

# CPU only (lifted by --no-cap): the largest B of an algorithm ("*": the whole point) or of
# one formulation, by memory. Peak RSS of one step, Conv4-64, 15 queries, on the 23 GB
# reference machine: MAML 5-shot B=16: medmeta 5.0 GB, vmap 17.4 GB; 1-shot B=16: medmeta
# 2.7 GB, vmap 5.8 GB, per-task loop 0.6 GB (a run at 5-shot B=32 was OOM-killed).
CPU_MAX_BATCH: dict[tuple[str, str, int], int] = {
    ("maml", "*", 5): 16,
    ("mamlpp", "*", 5): 16,
    ("maml", "vmap", 5): 4,
    ("maml", "vmap", 1): 16,
}

NO_PEER = {  # algorithms that no installed peer library implements, and why
    "reptile": "learn2learn 0.2.0 ships Reptile only as an example script; higher/TorchOpt/easyfsl have none",
    "mamlpp": "no peer library implements MAML++ (learn2learn has MAML/MetaSGD only)",
    "matching": "easyfsl's MatchingNetworks always uses its own full-context embedding (nn.LSTM "
    "support encoder, an LSTMCell attention read over all S support items, log(p + 1e-6)): a "
    "different model from medmeta's matching (fce=False, temperature 0.1), so no equal-work ratio",
    "siamese": "no peer library implements siamese contrastive training",
    "snail": "no peer library implements SNAIL",
    "supervised": "no peer library implements the supervised baseline",
}


# --------------------------------------------------------------------------- formulations


@dataclass
class Formulation:
    """One way of running a point: ``run(batch)`` is the timed call; ``check(batch)`` gives
    what is compared with medmeta (gradients ``{name: tensor}`` or logits)."""

    name: str
    kind: str  # H.KIND_OURS / H.KIND_TORCH / H.KIND_PEER
    run: Callable[[Any], Any] | None
    check: Callable[[Any], Any] | None = None
    why_not: str = ""  # "not available: ..." / "skipped: ..." when run is None
    flag_disagreement: bool = False  # timed even when it disagrees (vmap), status "flagged: ..."


class Peers:
    """The peer libraries that import here: module or the reason they do not."""

    NAMES = ("learn2learn", "higher", "torchopt", "easyfsl")

    def __init__(self) -> None:
        self.modules: dict[str, Any] = {}
        self.versions: dict[str, str] = {}
        self.why: dict[str, str] = {}
        for name in self.NAMES:
            try:
                module = __import__(name)
                if name == "easyfsl":
                    import easyfsl.methods  # noqa: F401  (imports torchvision at import time)
                self.versions[name] = importlib.metadata.version(name)
                self.modules[name] = module
            except Exception as e:  # a peer failing to import is a result, never fatal
                self.why[name] = f"not available: {H.short_error(e)}"

    def has(self, name: str) -> bool:
        return name in self.modules

    def status(self) -> dict[str, str]:
        return {n: self.versions.get(n) or self.why[n] for n in self.NAMES}


def build_learner(name: str, hidden: int, num_classes: int, seed: int = 0) -> Any:
    """``name`` on a Conv4 with ``hidden`` channels (initialised from ``seed``), shape
    arguments as ``benchmarks/protocols.py`` gives them, plus :data:`HPARAMS`."""
    from medmeta import algorithms
    from medmeta.nn import Conv4, embedding_dim

    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(seed)
        backbone = Conv4(3, hidden=hidden)
        dim = embedding_dim(backbone, (3, SIZE, SIZE))
        shape_args = {
            "supervised": {"num_classes": num_classes, "embedding_dim": dim},
            "relation": {"feature_shape": (hidden, 1, 1)},
            "snail": {"embedding_dim": dim},
        } | {n: {"feature_dim": dim} for n in FAST_WEIGHTS}
        kwargs = shape_args.get(name, {}) | HPARAMS.get(name, {})
        return algorithms.create(name, backbone, WAYS, **kwargs)


def _grads(learner: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter's ``.grad`` (zeros where None), by name."""
    return {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in learner.named_parameters()
        if p.requires_grad
    }


def _zero(learner: nn.Module) -> None:
    for p in learner.parameters():
        p.grad = None


def _set_grads(learner: nn.Module, grads: M.Grads) -> None:
    for name, p in learner.named_parameters():
        if name in grads:
            p.grad = grads[name]


def _task(batch: Any, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]


def _class_means(z: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[N, D]`` per-class means of ``z [S, D]`` (one-hot matmul)."""
    one_hot = F.one_hot(labels, ways).to(z.dtype)  # [S, N]
    return (one_hot.t() @ z) / one_hot.sum(0).unsqueeze(1)


def _protonet_batched_logits(learner: Any, batch: Any) -> torch.Tensor:
    """Euclidean logits ``[B, Q, N]`` of all B episodes at once in plain PyTorch: one
    backbone forward over every support and query image, one-hot ``bmm`` class means,
    ``torch.cdist`` (the batched pure-torch ProtoNet, beside the per-episode loop)."""
    B, S = batch.support_x.shape[:2]
    z = learner.backbone(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    zs, zq = z[: B * S].view(B, S, -1), z[B * S :].view(B, batch.query_x.shape[1], -1)
    one_hot = F.one_hot(batch.support_y, batch.ways).to(z.dtype)  # [B, S, N]
    protos = one_hot.transpose(1, 2) @ zs / one_hot.sum(1).unsqueeze(-1)  # [B, N, D]
    return -torch.cdist(zq, protos)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(-1) == labels).float().mean()


# ---- per-task losses of the metric learners in plain PyTorch (one episode, no medmeta ops)


def _protonet_task(learner: Any, batch: Any, t: int) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    logits = -torch.cdist(zq, _class_means(zs, batch.support_y[t], batch.ways))  # euclidean
    _accuracy(logits, batch.query_y[t])
    return F.cross_entropy(logits / learner.temperature, batch.query_y[t])


def _matching_task(learner: Any, batch: Any, t: int) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    cosine = F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).t()  # [Q, S]
    attention = (cosine / learner.temperature).softmax(-1)
    probs = attention @ F.one_hot(batch.support_y[t], batch.ways).to(zs.dtype)  # [Q, N]
    _accuracy(probs, batch.query_y[t])
    return F.nll_loss(probs.log(), batch.query_y[t])


def _relation_task(learner: Any, batch: Any, t: int) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    classes = _class_means(zs, batch.support_y[t], batch.ways)  # aggregate="mean"
    Q, N, maps = zq.shape[0], classes.shape[0], learner.feature_shape
    pairs = torch.cat(
        [
            classes.unsqueeze(0).expand(Q, N, -1).reshape(Q * N, *maps),
            zq.unsqueeze(1).expand(Q, N, -1).reshape(Q * N, *maps),
        ],
        1,
    )  # [Q*N, 2C, H, W]
    scores = learner.relation(pairs).reshape(Q, N)
    _accuracy(scores, batch.query_y[t])
    one_hot = F.one_hot(batch.query_y[t], N).to(scores.dtype)
    return F.mse_loss(scores.sigmoid(), one_hot)


def _siamese_task(learner: Any, batch: Any, t: int) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
    z = torch.cat([zs, zq])
    labels = torch.cat([batch.support_y[t], batch.query_y[t]])
    dist = (torch.cdist(z, z).square() + 1e-12).sqrt()  # finite gradients on the diagonal
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = (same & ~torch.eye(len(labels), dtype=torch.bool, device=z.device)).to(z.dtype)
    negative = (~same).to(z.dtype)
    pull = (positive * dist.square()).sum() / positive.sum().clamp_min(1)
    push = (negative * (learner.margin - dist).clamp_min(0).square()).sum()
    push = push / negative.sum().clamp_min(1)
    with torch.no_grad():  # the step reports the prototype classifier's query accuracy
        protos = _class_means(zs, batch.support_y[t], batch.ways)
        _accuracy(-torch.cdist(zq, protos), batch.query_y[t])
    return 0.5 * (pull + push)


def _snail_task(
    learner: Any, batch: Any, t: int, generator: torch.Generator | None
) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    zs, zq = learner.norm(zs), learner.norm(zq)
    ys = batch.support_y[t]
    if generator is not None:  # shuffle the support order, as medmeta's training does
        order = torch.randperm(len(ys), generator=generator).to(zs.device)
        zs, ys = zs[order], ys[order]
    support = torch.cat([zs, F.one_hot(ys, learner.ways).to(zs.dtype)], -1)
    queries = torch.cat([zq, zq.new_zeros(zq.shape[0], learner.ways)], -1)
    logits = learner.core(support[None], queries[None])[0, :, : batch.ways]
    _accuracy(logits, batch.query_y[t])
    return F.cross_entropy(logits, batch.query_y[t])


def _supervised_task(learner: Any, batch: Any, t: int) -> torch.Tensor:
    zs, zq = M.body_features(learner, batch, t)
    labels = torch.cat([batch.support_y[t], batch.query_y[t]])
    targets = batch.classes[t].long()[labels]
    loss = F.cross_entropy(learner.head(torch.cat([zs, zq])), targets)
    with torch.no_grad():  # nearest-centroid episode accuracy, as medmeta's step reports
        protos = _class_means(zs, batch.support_y[t], batch.ways)
        _accuracy(-torch.cdist(zq, protos).square(), batch.query_y[t])
    return loss


# ---- peers of the metric learners (one episode at a time)


def _easyfsl_protonet(learner: Any) -> Callable[[Any, int], torch.Tensor]:
    from easyfsl.methods import PrototypicalNetworks

    model = PrototypicalNetworks(backbone=learner.backbone)

    def logits(batch: Any, t: int) -> torch.Tensor:
        sx, sy, qx, _ = _task(batch, t)
        model.process_support_set(sx, sy)
        return model(qx)

    return logits


def _l2l_protonet(learner: Any) -> Callable[[Any, int], torch.Tensor]:
    import learn2learn as l2l

    def euclidean(prototypes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return torch.cdist(queries, prototypes)  # medmeta's metric (l2l's default is squared)

    def logits(batch: Any, t: int) -> torch.Tensor:
        zs, zq = M.body_features(learner, batch, t)
        classifier = l2l.nn.PrototypicalClassifier(zs, batch.support_y[t], distance=euclidean)
        return classifier(zq)

    return logits


def _easyfsl_relation(learner: Any) -> Callable[[Any, int], torch.Tensor]:
    from easyfsl.methods import RelationNetworks

    maps = tuple(learner.feature_shape)
    model = RelationNetworks(
        backbone=nn.Sequential(learner.backbone, nn.Unflatten(1, maps)),  # feature maps
        feature_dimension=maps[0],
        relation_module=learner.relation,
    )

    def scores(batch: Any, t: int) -> torch.Tensor:
        sx, sy, qx, _ = _task(batch, t)
        model.process_support_set(sx, sy)
        return model(qx)

    return scores


# ---- assembling the formulations of a point


def _loss_loop(
    learner: nn.Module, task_loss: Callable[[Any, int], torch.Tensor]
) -> Callable[[Any], None]:
    """Accumulate ``.grad`` of a per-task loss, one ``backward`` per episode (graph freed
    before the next episode), over the batch's B episodes (mean over episodes)."""

    def accumulate(batch: Any) -> None:
        for t in range(batch.batch_size):
            (task_loss(batch, t) / batch.batch_size).backward()

    return accumulate


def _grad_fn(fn: Callable[[Any, Any], M.Grads], learner: nn.Module) -> Callable[[Any], None]:
    """Set ``.grad`` from a function returning the meta-gradient dict."""
    return lambda batch: _set_grads(learner, fn(learner, batch))


def _train_step(
    learner: nn.Module, optimizer: torch.optim.Optimizer, accumulate: Callable[[Any], None]
) -> Callable[[Any], None]:
    """The timed call of a plain formulation: what ``meta_train_step`` does around it."""

    def step(batch: Any) -> None:
        learner.train()
        optimizer.zero_grad(set_to_none=True)
        accumulate(batch)
        optimizer.step()

    return step


def _grad_check(learner: nn.Module, accumulate: Callable[[Any], None]) -> Callable[[Any], Any]:
    """The meta-gradient a plain formulation accumulates, by parameter name."""

    def check(batch: Any) -> dict[str, torch.Tensor]:
        _zero(learner)
        accumulate(batch)
        return _grads(learner)

    return check


def _medmeta_check(learner: Any) -> Callable[[Any], Any]:
    """medmeta's meta-gradient on a batch in the learner's current mode: the MAML family
    through ``meta_train_step`` itself (with a zero-rate SGD, so nothing moves), the metric
    learners through ``meta_loss`` + ``backward`` (what their step does, minus ``train()``)."""
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)

    def check(batch: Any) -> dict[str, torch.Tensor]:
        _zero(learner)
        if learner.name in FAST_WEIGHTS:
            learner.meta_train_step(batch, frozen)
        else:
            learner.meta_loss(batch)[0].backward()
        return _grads(learner)

    return check


def train_formulations(
    learner: Any,
    optimizer: torch.optim.Optimizer,
    peers: Peers,
    peer_ok: bool,
    skip: dict[str, str] | None = None,
) -> list[Formulation]:
    """medmeta, the per-task loop, vmap (MAML) and the peers for one meta-training point.
    ``peer_ok``: time the peers at this point (else they are listed as skipped); ``skip``:
    formulations not run here, with the reason."""
    skip = skip or {}
    name = learner.name
    forms = [
        Formulation(
            "medmeta",
            H.KIND_OURS,
            lambda batch: learner.meta_train_step(batch, optimizer),
            _medmeta_check(learner),
        )
    ]

    def plain(form_name: str, kind: str, accumulate: Callable[[Any], None], **kw: Any) -> None:
        if form_name in skip:
            forms.append(Formulation(form_name, kind, None, why_not=skip[form_name]))
            return
        forms.append(
            Formulation(
                form_name,
                kind,
                _train_step(learner, optimizer, accumulate),
                _grad_check(learner, accumulate),
                **kw,
            )
        )

    def peer(form_name: str, library: str, make: Callable[[], Callable[[Any], None]]) -> None:
        if not peers.has(library):
            forms.append(Formulation(form_name, H.KIND_PEER, None, why_not=peers.why[library]))
        elif not peer_ok:
            forms.append(
                Formulation(
                    form_name,
                    H.KIND_PEER,
                    None,
                    why_not="skipped: peers are timed only at the --peer-batches sizes",
                )
            )
        else:
            try:
                plain(form_name, H.KIND_PEER, make())
            except Exception as e:  # a peer that cannot be built is a result
                forms.append(
                    Formulation(form_name, H.KIND_PEER, None, why_not=f"error: {H.short_error(e)}")
                )

    def peer_logits(make_logits: Callable[[Any], Callable[[Any, int], torch.Tensor]], loss: str):
        def make() -> Callable[[Any], None]:
            logits = make_logits(learner)

            def task_loss(batch: Any, t: int) -> torch.Tensor:
                out = logits(batch, t)
                y = batch.query_y[t]
                if loss == "mse":
                    return F.mse_loss(out.sigmoid(), F.one_hot(y, batch.ways).to(out.dtype))
                return F.cross_entropy(out, y)

            return _loss_loop(learner, task_loss)

        return make

    if name in METRIC:
        shuffler = torch.Generator().manual_seed(0)  # SNAIL's support order while training
        task_losses: dict[str, Callable[[Any, int], torch.Tensor]] = {
            "supervised": lambda b, t: _supervised_task(learner, b, t),
            "protonet": lambda b, t: _protonet_task(learner, b, t),
            "matching": lambda b, t: _matching_task(learner, b, t),
            "relation": lambda b, t: _relation_task(learner, b, t),
            "siamese": lambda b, t: _siamese_task(learner, b, t),
            "snail": lambda b, t: _snail_task(learner, b, t, shuffler if learner.shuffle else None),
        }
        plain("loop", H.KIND_TORCH, _loss_loop(learner, task_losses[name]))
        if name == "protonet":

            def batched(batch: Any) -> None:
                logits = _protonet_batched_logits(learner, batch) / learner.temperature
                F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()).backward()

            plain("batched", H.KIND_TORCH, batched)
            peer("easyfsl", "easyfsl", peer_logits(_easyfsl_protonet, "ce"))
            peer("learn2learn", "learn2learn", peer_logits(_l2l_protonet, "ce"))
        elif name == "relation":
            peer("easyfsl", "easyfsl", peer_logits(_easyfsl_relation, "mse"))
        return forms

    steps, lr = learner.inner_steps, learner.inner_lr
    loops: dict[str, Callable[[Any, Any], M.Grads]] = {
        "maml": lambda lrn, b: M.per_task_loop(lrn, b, steps, lr),
        "fomaml": M.fomaml_loop,
        "reptile": M.reptile_loop,
        "metasgd": M.metasgd_loop,
        "anil": M.anil_loop,
        "mamlpp": M.mamlpp_loop,
    }
    plain("loop", H.KIND_TORCH, _grad_fn(loops[name], learner))
    if name == "maml":
        model = M.vmap_model(learner)  # once, outside the timed calls
        plain(
            "vmap",
            H.KIND_TORCH,
            _grad_fn(lambda lrn, b: M.func_vmap(lrn, b, steps, lr, model), learner),
            flag_disagreement=True,
        )
    l2l: dict[str, Callable[[Any, Any], M.Grads]] = {
        "maml": lambda lrn, b: M.learn2learn_maml(lrn, b, steps, lr),
        "fomaml": lambda lrn, b: M.learn2learn_maml(lrn, b, steps, lr, first_order=True),
        "metasgd": M.learn2learn_metasgd,
        "anil": M.learn2learn_anil,
    }
    if name in l2l:
        peer("learn2learn", "learn2learn", lambda: _grad_fn(l2l[name], learner))
    if name == "maml":
        peer(
            "higher",
            "higher",
            lambda: _grad_fn(lambda lrn, b: M.higher_maml(lrn, b, steps, lr), learner),
        )
        peer(
            "torchopt",
            "torchopt",
            lambda: _grad_fn(lambda lrn, b: M.torchopt_maml(lrn, b, steps, lr), learner),
        )
    return forms


def evaluation_formulations(learner: Any, peers: Peers) -> list[Formulation]:
    """ProtoNet evaluation: logits ``[B, Q, N]`` of B episodes under ``inference_mode``."""

    def inference(fn: Callable[[Any], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
        def run(batch: Any) -> torch.Tensor:
            with torch.inference_mode():
                return fn(batch)

        return run

    def per_episode(logits: Callable[[Any, int], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
        return inference(lambda b: torch.stack([logits(b, t) for t in range(b.batch_size)]))

    def loop_logits(batch: Any, t: int) -> torch.Tensor:
        zs, zq = M.body_features(learner, batch, t)
        return -torch.cdist(zq, _class_means(zs, batch.support_y[t], learner.ways))

    medmeta = inference(lambda b: learner.predict(b.support_x, b.support_y, b.query_x))
    forms = [
        Formulation("medmeta", H.KIND_OURS, medmeta, medmeta),
        Formulation("loop", H.KIND_TORCH, per_episode(loop_logits), per_episode(loop_logits)),
    ]
    batched = inference(lambda b: _protonet_batched_logits(learner, b))
    forms.append(Formulation("batched", H.KIND_TORCH, batched, batched))
    for form_name, library, make in (
        ("easyfsl", "easyfsl", _easyfsl_protonet),
        ("learn2learn", "learn2learn", _l2l_protonet),
    ):
        if not peers.has(library):
            forms.append(Formulation(form_name, H.KIND_PEER, None, why_not=peers.why[library]))
            continue
        run = per_episode(make(learner))
        forms.append(Formulation(form_name, H.KIND_PEER, run, run))
    return forms


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class Point:
    algorithm: str
    pass_: str
    shots: int
    batch: int
    queries: int

    @property
    def series(self) -> str:
        return f"{WAYS}-way {self.shots}-shot"

    def shape(self) -> dict[str, Any]:
        return {"B": self.batch, "ways": WAYS, "shots": self.shots, "queries": self.queries}


@dataclass
class Timing:
    """How points are timed: each formulation is warmed up by one call, then sampled
    round-robin (at least ``min_samples`` samples, more while a measurement lasts under
    ``target_s``). A point taken while other processes were busy is re-measured (up to
    ``QuietPolicy.retries`` times) only when its slowest call is under ``slow_s``: the
    long points cost the most and are only flagged."""

    target_s: float
    slow_s: float
    min_samples: int = 2
    rounds: int = 3

    def config(self) -> H.TimingConfig:
        return H.TimingConfig(
            target_s=self.target_s,
            warmup_calls=1,
            min_samples=self.min_samples,
            rounds=self.rounds,
        )


class MedmetaCheckFailed(RuntimeError):
    """medmeta disagrees with the float64 reference (or the reference cannot run)."""


@dataclass
class Check:
    """The agreement of one formulation with the float64 reference on the check batch."""

    status: str  # "ok", "flagged: ...", "disagrees with the float64 reference: ...", "error: ...", why_not
    max_rel_diff: float | None = None  # max |difference| / largest |reference entry|
    seconds: float | None = None  # the check call (float64, CHECK_BATCH episodes)

    @property
    def timed(self) -> bool:
        return self.status == "ok" or self.status.startswith("flagged")


def as_float64(batch: Any) -> Any:
    """The episode batch with float64 inputs (labels unchanged)."""
    return dataclasses.replace(
        batch, support_x=batch.support_x.double(), query_x=batch.query_x.double()
    )


def check_formulations(
    forms: Sequence[Formulation],
    batch: Any,
    learner: Any,
    mode: str,
    clock: H.Clock,
    where: str = "",
) -> dict[str, Check]:
    """Run every formulation's ``check`` once on ``batch`` (``learner`` in ``mode``) and
    compare it with the float64 reference, the :data:`REFERENCE` formulation (the plain
    per-task loop): every gradient (or the logits) within :data:`CHECK_TOL` of the
    reference's largest entry (see :func:`_disagreement`). Raises
    :class:`MedmetaCheckFailed` (naming ``where``) when medmeta disagrees or the reference
    fails; a baseline that disagrees is recorded (``vmap``: flagged)."""
    checks: dict[str, Check] = {}
    meta_step = getattr(learner, "meta_step", None)
    start_step = None if meta_step is None else meta_step.clone()
    if getattr(learner, "shuffle", False):  # SNAIL: compare on the given support order
        learner.shuffle = False
    learner.train(mode == "train")

    def run_check(f: Formulation) -> tuple[Any, float]:
        if start_step is not None:  # MAML++: every formulation from the same meta-step
            learner.meta_step.copy_(start_step)
        t0 = time.perf_counter()
        got = f.check(batch)
        clock.sync()
        return got, time.perf_counter() - t0

    ref = next((f for f in forms if f.name == REFERENCE and f.check is not None), None)
    if ref is None:
        raise MedmetaCheckFailed(f"{where}: no float64 reference formulation ({REFERENCE!r})")
    try:
        expected, ref_seconds = run_check(ref)
    except Exception as e:
        raise MedmetaCheckFailed(
            f"{where}: the float64 reference ({REFERENCE}) fails: {H.short_error(e)}"
        ) from e
    for f in forms:
        if f is ref:
            checks[f.name] = Check("ok", 0.0, ref_seconds)
            continue
        if f.run is None or f.check is None:
            checks[f.name] = Check(f.why_not)
            continue
        try:
            got, seconds = run_check(f)
        except Exception as e:  # a formulation failing is a result (medmeta: see run())
            checks[f.name] = Check(f"error: {H.short_error(e)}")
            continue
        why = _disagreement(expected, got)
        rel = _max_rel_diff(expected, got)
        if why and f.kind == H.KIND_OURS:
            raise MedmetaCheckFailed(
                f"{where}: {f.name} disagrees with the float64 reference ({REFERENCE}): {why} "
                f"(tolerance {CHECK_TOL:.0e} of the largest entry)"
            )
        status = "ok"
        if why:
            flag = "flagged: " if f.flag_disagreement else ""
            status = f"{flag}disagrees with the float64 reference: {why}"
        checks[f.name] = Check(status, rel, seconds)
    return checks


def _as_dict(value: Any) -> dict[str, torch.Tensor]:
    return value if isinstance(value, dict) else {"logits": value}


def _max_rel_diff(expected: Any, got: Any) -> float | None:
    expected, got = _as_dict(expected), _as_dict(got)
    if set(got) != set(expected):
        return None
    scale = max((float(t.abs().max()) for t in expected.values() if t.numel()), default=0.0)
    diff = max(float((got[k].double() - t.double()).abs().max()) for k, t in expected.items())
    return diff / scale if scale else diff


def _disagreement(expected: Any, got: Any) -> str | None:
    """Why ``got`` is not within :data:`CHECK_TOL` of the reference ``expected``, with one
    absolute tolerance for all tensors: ``CHECK_TOL`` times the largest entry of any of
    them. Per-tensor scales would compare rounding noise, e.g. the gradient of a
    convolution bias followed by batch norm, zero up to rounding. Gradients (dicts) are
    compared per parameter and the message names it."""
    expected, got = _as_dict(expected), _as_dict(got)
    if set(got) != set(expected):
        return f"gradients for {sorted(set(got) ^ set(expected))} on one side only"
    scale = max((float(t.abs().max()) for t in expected.values() if t.numel()), default=0.0)
    atol = CHECK_TOL * scale + 1e-12
    for name, want in expected.items():
        why, _ = H.reference_error(want, got[name], CHECK_TOL, atol_abs=[atol])
        if why:
            return f"{name}: {why.removeprefix('output 0: ')}, largest entry overall {scale:.3g}"
    return None


def measure(
    calls: dict[str, Callable[[], Any]],
    clock: H.Clock,
    timing: Timing,
    quiet: QuietPolicy,
) -> tuple[dict[str, H.Measurement], float | None]:
    """Time ``calls`` round-robin; returns the measurements and the CPUs other processes
    used meanwhile (the least disturbed attempt; see :class:`Timing` for re-measuring)."""
    best: tuple[dict[str, H.Measurement], float | None] | None = None
    for attempt in range(1 + quiet.retries):
        if attempt:
            quiet.remeasured += 1
        quiet.wait()
        contention = H.Contention().start()
        measured = H.measure_group(calls, clock, timing.config())
        others = contention.stop()
        if best is None or (others is not None and best[1] is not None and others < best[1]):
            best = (measured, others)
        slowest = max(m.median_s for m in measured.values())
        if others is None or others < quiet.threshold or slowest >= timing.slow_s:
            break
    assert best is not None
    return best


def check_series(
    learner: Any, pass_: str, peers: Peers, batch: Any, clock: H.Clock, where: str = ""
) -> dict[str, Check]:
    """The agreement of every formulation of a series (algorithm, pass, shots) with the
    float64 reference (the per-task loop), on a float64 copy of the learner and the
    float64 check batch (raises :class:`MedmetaCheckFailed` when medmeta disagrees). float32 is not enough
    for the MAML family: 5 inner steps amplify rounding, so that on Conv4-64 the float32
    loop and medmeta are each ~1e-3 (relative) off the float64 value, and off each other,
    while in float64 they agree to ~1e-14. The metric learners are compared in eval mode
    (batch norm on running statistics: in training mode medmeta normalises over the whole
    meta-batch, the loop over one episode, easyfsl over the support and the queries
    separately), the MAML family in training mode (per-task statistics in all)."""
    twin = copy.deepcopy(learner).double()
    if pass_ == TRAIN:
        frozen = torch.optim.SGD(twin.parameters(), lr=0.0)
        forms = train_formulations(twin, frozen, peers, peer_ok=True)
        mode = "eval" if learner.name in METRIC else "train"
    else:
        forms, mode = evaluation_formulations(twin, peers), "eval"
    return check_formulations(forms, batch, twin, mode, clock, where)


def _check_json(name: str, pass_: str, shots: int, checks: dict[str, Check]) -> dict[str, Any]:
    return {
        "algorithm": name,
        "pass": pass_,
        "shots": shots,
        "episodes": CHECK_BATCH,
        "dtype": "float64",
        "reference": REFERENCE,
        "tolerance": CHECK_TOL,
        "mode": "eval" if pass_ == EVALUATE or name in METRIC else "train",
        "formulations": {f: dataclasses.asdict(c) for f, c in checks.items()},
    }


def _check_line(name: str, pass_: str, shots: int, checks: dict[str, Check]) -> str:
    parts = []
    for f, c in checks.items():
        if f in ("medmeta", REFERENCE):
            continue
        rel = "" if c.max_rel_diff is None else f" {c.max_rel_diff:.1e}"
        word = c.status if c.status in ("ok",) else c.status.split(":")[0]
        parts.append(f"{f} {word}{rel}")
    head = (
        f"[check] {name:10s} {pass_:10s} {shots}-shot (float64, {CHECK_BATCH} episodes, "
        f"vs {REFERENCE}):"
    )
    ours = checks.get("medmeta")
    if ours is None or ours.status != "ok":
        return f"{head} medmeta: {ours.status if ours else 'missing'}"
    rel = "" if ours.max_rel_diff is None else f" {ours.max_rel_diff:.1e}"
    return f"{head} " + " | ".join([f"medmeta ok{rel}", *parts])


def run_point(
    point: Point,
    forms: Sequence[Formulation],
    checks: dict[str, Check],
    batch: Any,
    learner: Any,
    clock: H.Clock,
    timing: Timing,
    quiet: QuietPolicy,
) -> list[H.Record]:
    """Time, round-robin, the formulations that are available here and agreed with
    medmeta on the series' check batch; record the others with their reason."""
    records: dict[str, H.Record] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for f in forms:
        check = checks.get(f.name, Check("error: not checked"))
        status = f.why_not if f.run is None else check.status
        records[f.name] = H.Record(
            point.algorithm, point.pass_, point.series, point.batch, point.shape(),
            f.name, f.kind, status,
        )  # fmt: skip
        if f.run is not None and check.timed:
            calls[f.name] = lambda run=f.run: run(batch)
    learner.train(point.pass_ == TRAIN)  # medmeta's step sets train() itself
    try:
        measured, others = measure(calls, clock, timing, quiet) if calls else ({}, None)
    finally:
        learner.train()
    for name, m in measured.items():
        rec = records[name]
        rec.median_s, rec.q1_s, rec.q3_s, rec.iqr_s = m.median_s, m.q1_s, m.q3_s, m.iqr_s
        rec.samples, rec.calls_per_sample = m.samples, m.calls_per_sample
    for rec in records.values():
        rec.others_cpu = others
    return list(records.values())


# --------------------------------------------------------------------------- targets


def evaluate_targets(records: Sequence[H.Record], device_type: str) -> list[dict[str, Any]]:
    """The issue's GPU targets with the ratios measured in this run (time of the
    alternative / medmeta's, i.e. medmeta's episodes per second over the alternative's).
    MAML's are read at B=32, or at the largest B of a series that did not reach it."""
    ratios: dict[tuple[str, str, str, str], dict[int, float]] = {}
    for r in records:
        if r.ratio_vs_medmeta is not None:
            ratios.setdefault((r.op, r.pass_, r.series, r.formulation), {})[r.x] = (
                r.ratio_vs_medmeta
            )
    series = sorted({r.series for r in records}, key=lambda s: int(s.split()[1].split("-")[0]))
    spec = [
        ("MAML meta-train at B=32: ≥ 3× the per-task loop", "maml", TRAIN, "loop", 3.0, 32),
        ("MAML meta-train at B=32: ≥ 1× torch.func.vmap", "maml", TRAIN, "vmap", 1.0, 32),
        ("ProtoNet evaluation: ≥ 3× easyfsl per episode", "protonet", EVALUATE, "easyfsl", 3.0, None),
    ]  # fmt: skip
    out = []
    for title, op, pass_, form, goal, at in spec:
        measured = []
        for s in series:
            by_b = ratios.get((op, pass_, s, form), {})
            bs = sorted(by_b) if at is None else [at if at in by_b else max(by_b, default=None)]
            measured += [{"series": s, "B": b, "ratio": by_b.get(b)} for b in bs if b is not None]
        got = [m["ratio"] for m in measured if m["ratio"] is not None]
        if device_type != "cuda":
            status = H.gpu_not_measured()
        else:
            status = "met" if got and min(got) >= goal else ("missed" if got else "not measured")
        out.append({"target": title, "goal_ratio": goal, "status": status, "measured": measured})
    return out


# --------------------------------------------------------------------------- reporting


def _payload(
    env: dict[str, Any],
    records: list[H.Record],
    settings: dict[str, Any],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    H.finish_records(records)
    points = H.points_of(records)
    recs = []
    for r in records:
        d = r.to_json()
        d["episodes_per_s"] = r.x / r.median_s if r.median_s else None
        recs.append(d)
    return {
        "schema": "medmeta-bench-algorithms/1",
        "environment": env,
        "settings": settings,
        "definitions": {
            "median_s": "median time of one call: one meta-training step on B episodes, or the evaluation logits of B episodes",
            "episodes_per_s": "B / median_s",
            "ratio_vs_medmeta": "median time of the formulation / medmeta's = medmeta's episodes/s over the formulation's (> 1: medmeta faster)",
            "speedup": "per point: the best pure-torch formulation's time / medmeta's (the per-task loop, and for ProtoNet also the batched formulation; vmap is flagged, not counted)",
            "status": "ok; flagged: ... (timed although it disagrees with the float64 reference: vmap with batch norm); disagrees with the float64 reference: ... (not timed); not available: ... (peer import failed); skipped: ...; error: ...",
            "checks": f"float64, {CHECK_BATCH} episodes, against the per-task loop ({REFERENCE!r}); max_rel_diff = largest |difference| / the reference's largest entry, tolerance {CHECK_TOL:g}",
            "kinds": {
                H.KIND_OURS: "medmeta (meta_train_step / predict)",
                H.KIND_TORCH: "plain PyTorch (per-task loop; batched for ProtoNet; vmap for MAML)",
                H.KIND_PEER: "another library, one episode at a time",
            },
        },
        "checks": checks,
        "records": recs,
        "points": [p.to_json() for p in points],
        "summary": H.summarize(points),
        "targets": evaluate_targets(records, env["device_type"]),
    }


def _record_from_json(d: dict[str, Any]) -> H.Record:
    d = {k: v for k, v in d.items() if k != "episodes_per_s"}
    d["pass_"] = d.pop("pass")
    return H.Record(**d)


def _cell(r: H.Record | None) -> str:
    if r is None:
        return ""
    if r.ratio_vs_medmeta is not None:
        mark = " ⚑" if r.status.startswith("flagged") else ""
        return f"{r.ratio_vs_medmeta:.2f}×{mark}"
    return _cell_status(r.status)


def _cell_status(status: str) -> str:
    for prefix, short in (
        ("not available", "n/a"),
        ("skipped: memory", "mem"),
        ("skipped", "·"),
        ("disagrees", "✗"),
        ("error", "error"),
    ):
        if status.startswith(prefix):
            return short
    return status[:20]


def markdown_report(payload: dict[str, Any]) -> str:
    env, settings = payload["environment"], payload["settings"]
    records = [_record_from_json(d) for d in payload["records"]]
    cont = env.get("contention", {})
    gpu = env["device_type"] == "cuda"
    lines = [
        f"# medmeta algorithms: meta-training throughput ({env['device_name']})",
        "",
        *H.provenance_lines(env),
        f"- torch {env['torch']}, medmeta {env.get('medmeta', '?')}, {env['threads']} threads.",
        *_resumed_lines(env),
        "",
        f"{settings['ways']}-way, {settings['queries']} queries per class, pbc_blood "
        f"{SIZE}x{SIZE}x3 images, Conv4-{settings['hidden']}; meta-batch sizes B "
        f"{settings['batches']}, training peers at B {settings['peer_batches']}. Each cell is **medmeta's "
        "episodes per second over the formulation's** (its time / medmeta's; > 1: medmeta "
        "faster), measured round-robin in the same process. "
        + ("Absolute times are in the JSON." if not gpu else ""),
        "",
    ]
    if settings.get("max_batch"):
        capped = ", ".join(
            f"{k.replace(' * ', ' ')} above B={b}" for k, b in settings["max_batch"].items()
        )
        lines += [
            f"Not run on this CPU, for memory: {capped} (peak RSS of one MAML step at 5-shot "
            "B=16: medmeta 5.0 GB, vmap 17.4 GB, on a 23 GB machine; `--no-cap` runs them).",
            "",
        ]
    lines += [
        f"Machine load: 1-min load average {_loads(env)}; other processes used "
        f"{cont.get('others_cpu_median', float('nan')):.2f} CPUs (median over points, max "
        f"{cont.get('others_cpu_max', float('nan')):.2f}); {cont.get('points_still_disturbed', '?')} "
        f"of {cont.get('points', '?')} points were timed while others used ≥ "
        f"{cont.get('threshold_cpus', '?')} CPU (waited {cont.get('waited_s', '?')} s in all). "
        "Ratios are round-robin, so load hits every formulation of a point alike; re-run on a "
        "quiet machine for reference numbers.",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for t in payload["targets"]:
        got = ", ".join(
            f"{c['series'].split()[1]} B={c['B']}: {fmt(c['ratio'])}" for c in t["measured"]
        )
        where = "GPU" if gpu else "CPU ratios measured in this run"
        rows.append([t["target"], t["status"], f"{where}: {got or '—'}"])
    lines += [H.markdown_table(["target (GPU)", "status", "measured"], rows), ""]
    for pass_, title in ((TRAIN, "Meta-training step"), (EVALUATE, "ProtoNet evaluation")):
        recs = [r for r in records if r.pass_ == pass_]
        if not recs:
            continue
        forms = [f for f in dict.fromkeys(r.formulation for r in recs) if f != "medmeta"]
        lines += [f"## {title}: medmeta's speed-up over each formulation", ""]
        table = []
        keys = list(dict.fromkeys((r.op, r.series, r.x) for r in recs))
        cells = {(r.op, r.series, r.x, r.formulation): r for r in recs}
        for op, series, x in keys:
            ours = cells.get((op, series, x, "medmeta"))
            if ours is None:
                continue
            row = [op, series.split()[1], x]
            if gpu:
                row.append(f"{x / ours.median_s:.1f}" if ours.median_s else ours.status)
            elif not ours.median_s:
                row.append(ours.status)
            row += [_cell(cells.get((op, series, x, f))) for f in forms]
            others = ours.others_cpu
            row.append("—" if others is None else f"{others:.2f}")
            table.append(row)
        header = ["algorithm", "shots", "B"] + (["medmeta episodes/s"] if gpu else [])
        lines += [H.markdown_table([*header, *forms, "others CPU"], table), ""]
    lines += [
        "⚑ flagged: timed although it disagrees with the float64 reference (vmap through batch norm, "
        "pytorch/functorch#534). ✗: disagrees, not timed. n/a: peer not importable; mem: not "
        "run on this CPU for memory; ·: training peers timed only at "
        f"B {settings['peer_batches']}; empty: no such formulation for the algorithm.",
        "",
        "## Summary (medmeta vs the best pure-PyTorch formulation: the per-task loop, or for ProtoNet the faster of it and the batched one)",
        "",
    ]
    rows = [
        [
            s["op"],
            s["pass"],
            s["points"],
            fmt(s["worst_speedup"]),
            f"{s['worst_at']['series'].split()[1]} B={s['worst_at']['x']}",
            fmt(s["median_speedup"]),
            s["slower_points"],
        ]
        for s in payload["summary"]
    ]
    lines += [
        H.markdown_table(
            ["algorithm", "pass", "points", "worst", "at", "median", "slower points"], rows
        ),
        "",
    ]
    checks = payload.get("checks", [])
    reference = checks[0].get("reference") if checks else REFERENCE
    if reference:
        lines += [
            f"## Agreement with the float64 reference (the per-task loop; {CHECK_BATCH} episodes per check)",
            "",
            "Largest |difference| to the per-task loop in float64 over every meta-parameter's "
            "gradient (the logits for evaluation), relative to the loop's largest entry; ⚑ / ✗: "
            f"outside the tolerance ({CHECK_TOL:g} of that entry): ⚑ timed anyway (vmap), ✗ not "
            "timed. medmeta outside it fails the run.",
            "",
        ]
    else:  # results written before the float64 reference check
        lines += [
            f"## Agreement with medmeta (float64, {CHECK_BATCH} episodes per check)",
            "",
            "This run predates the reference check: every formulation was compared with "
            "medmeta (rtol 1e-3, atol 1e-4 of medmeta's largest entry).",
            "",
        ]
    forms = [
        f
        for f in dict.fromkeys(f for c in checks for f in c["formulations"])
        if f != (reference or "medmeta")
    ]
    rows = []
    for c in checks:
        row = [c["algorithm"], c["pass"], f"{c['shots']}-shot", c["mode"]]
        for f in forms:
            d = c["formulations"].get(f)
            if d is None:
                row.append("")
                continue
            mark = {"ok": ""}.get(d["status"], "⚑ " if d["status"].startswith("flagged") else "✗ ")
            rel = d["max_rel_diff"]
            row.append(f"{mark}{rel:.1e}" if rel is not None else _cell_status(d["status"]))
        rows.append(row)
    lines += [H.markdown_table(["algorithm", "pass", "shots", "mode", *forms], rows), ""]
    lines += [
        "## Not compared, and why",
        "",
    ]
    notes: dict[tuple[str, str], list[H.Record]] = {}
    for r in records:
        if r.status != "ok" and not r.status.startswith("skipped"):
            notes.setdefault((r.op, r.formulation), []).append(r)
    for (op, form), rs in notes.items():
        where = ", ".join(f"{r.series.split()[1]} B={r.x}" for r in rs)
        lines.append(f"* {op} / {form} ({where}): {rs[0].status}")
    lines += [f"* {op}: {why}" for op, why in settings["no_peer"].items()]
    lines += [
        f"* peers: {', '.join(f'{k} {v}' for k, v in env['peers'].items())}",
        "",
        "The agreement checks run once per algorithm, pass and shot count, in float64 on a "
        f"copy of the learner and {CHECK_BATCH} episodes, against the per-task loop in plain "
        "PyTorch (float32 is too coarse for the MAML "
        "family: five inner steps amplify rounding to ~1e-3 in both medmeta and the loop). "
        "The metric learners are compared in eval mode (batch norm on running statistics): "
        "in training mode medmeta normalises over the whole meta-batch in one forward, the "
        "loop over each episode and easyfsl over the support and the queries separately, all "
        "legitimate and timed as they are. The MAML family is compared in training mode "
        "(per-task statistics in all).",
        "",
    ]
    return "\n".join(lines)


def _resumed_lines(env: dict[str, Any]) -> list[str]:
    """Where reused points came from (``--resume``): their run's command and commit."""
    r = env.get("resumed_from")
    if not r:
        return []
    made_by = ""
    if r.get("command"):
        made_by = f", made by `{' '.join(r['command'])}` at git `{r.get('git_commit')}`"
        made_by += " (**dirty tree**)" if r.get("git_dirty") else ""
    return [f"- {r['reused_points']} points reused from {r['path']} ({r['date_utc']}{made_by})."]


def fmt(v: float | None) -> str:
    return H.fmt_ratio(v)


def _loads(env: dict[str, Any]) -> str:
    start = env.get("load_average_start") or [float("nan")]
    end = env.get("load_average_end") or [float("nan")]
    return f"{start[0]:.2f} → {end[0]:.2f}"


def write_outputs(payload: dict[str, Any], stem: Path) -> list[Path]:
    """JSON, plot and markdown of a run; returns the paths written."""
    env = payload["environment"]
    points = [p for p in map(_point, payload["points"]) if p.speedup]
    order = [(a, p) for a in ALGORITHMS for p in (TRAIN, EVALUATE)]
    title = (
        f"medmeta algorithms: speed-up over the best pure-PyTorch formulation "
        f"({env['device_name']}, {env['threads']} threads, torch {env['torch']})"
    )
    paths = []
    try:
        labels = {a: "B (episodes per meta-batch)" for a in ALGORITHMS}
        H.plot_speedups(points, stem.with_suffix(".png"), title, labels, order)
        paths.append(stem.with_suffix(".png"))
    except ImportError as e:
        payload.setdefault("notes", []).append(f"no plot: {H.short_error(e)}")
    H.write_json(stem.with_suffix(".json"), payload)
    H.write_text(stem.with_suffix(".md"), markdown_report(payload))
    return [stem.with_suffix(".json"), *paths, stem.with_suffix(".md")]


def _point(d: dict[str, Any]) -> H.Point:
    d = dict(d)
    d["pass_"] = d.pop("pass")
    return H.Point(**d)


# --------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="B 1,4, 1-shot, short timings (CI)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="file-name suffix (default 'quick' with --quick)")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset")
    ap.add_argument(
        "--batches", default=None, help="meta-batch sizes B (default 1,4,16,32; quick 1,4)"
    )
    ap.add_argument("--shots", default=None, help="shots per class (default 1,5; quick 1)")
    ap.add_argument(
        "--peer-batches",
        default=None,
        help="B at which the peers (one episode at a time) are timed (default 1,4; quick 1)",
    )
    ap.add_argument("--queries", type=int, default=15, help="queries per class (default 15)")
    ap.add_argument("--hidden", type=int, default=64, help="Conv4 channels (default 64)")
    ap.add_argument("--no-evaluate", action="store_true", help="skip the ProtoNet evaluation")
    ap.add_argument(
        "--no-cap",
        action="store_true",
        help="on CPU, also run MAML and MAML++ 5-shot above B=16 (~10 GB and ~15 s a step at B=32)",
    )
    ap.add_argument(
        "--target-time", type=float, default=None, help="seconds per measurement (0.3; quick 0.05)"
    )
    ap.add_argument(
        "--slow-call",
        type=float,
        default=None,
        help="a point whose slowest call takes at least this long (s) is not re-measured "
        "when disturbed (default 1.0; quick 0.2)",
    )
    ap.add_argument("--no-malloc-env", action="store_true", help="do not set MALLOC_* and re-run")
    ap.add_argument("--quiet-threshold", type=float, default=0.3)
    ap.add_argument("--max-wait", type=float, default=None, help="s per point (10; quick 0)")
    ap.add_argument("--retries", type=int, default=None, help="re-measurements (1; quick 0)")
    ap.add_argument("--seed", type=int, default=0, help="episode sampling seed")
    ap.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="reuse the undisturbed points of this earlier JSON (same machine and problem) "
        "and measure only the rest",
    )
    ap.add_argument("--replot", type=Path, default=None, help="rewrite the .md/.png of this JSON")
    ap.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
        "(the results are marked dirty)",
    )
    return ap.parse_args(list(argv))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status (1 when medmeta itself fails or a check of
    medmeta fails)."""
    prog = prog or "python -m benchmarks.algorithms"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    if args.replot is not None:
        return H.replot(args.replot, write_outputs)
    device, command = H.start_run(
        args.device,
        prog,
        "benchmarks.algorithms",
        argv,
        args.no_malloc_env,
        args.out,
        args.allow_dirty,
    )
    if device is None:
        return 2
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = sorted(set(names) - set(ALGORITHMS))
    if unknown:
        print(f"unknown algorithms {unknown}; known: {', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    quick = args.quick
    batches = _ints(args.batches or ("1,4" if quick else "1,4,16,32"))
    shots = _ints(args.shots or ("1" if quick else "1,5"))
    peer_batches = _ints(args.peer_batches or ("1" if quick else "1,4"))
    timing = Timing(
        target_s=args.target_time or (0.05 if quick else 0.3),
        slow_s=args.slow_call if args.slow_call is not None else (0.2 if quick else 1.0),
        rounds=2 if quick else 3,
    )
    quiet = QuietPolicy(
        threshold=args.quiet_threshold,
        max_wait_s=args.max_wait if args.max_wait is not None else (0.0 if quick else 10.0),
        retries=args.retries if args.retries is not None else (0 if quick else 1),
    )
    capped = device.type == "cpu" and not args.no_cap
    caps = {
        (a, f, k): b
        for (a, f, k), b in (CPU_MAX_BATCH if capped else {}).items()
        if a in names and k in shots and b < max(batches)
    }
    settings = {
        "algorithms": names,
        "ways": WAYS,
        "shots": shots,
        "queries": args.queries,
        "batches": batches,
        "peer_batches": peer_batches,
        "hidden": args.hidden,
        "image_size": SIZE,
        "dataset": "pbc_blood",
        "seed": args.seed,
        "optimizer": "Adam(lr=1e-3), one per learner, shared by its formulations",
        "hparams": {n: HPARAMS.get(n, {}) for n in names},
        "no_peer": {n: NO_PEER[n] for n in names if n in NO_PEER},
        "timing": timing.__dict__,
        "evaluate": not args.no_evaluate and "protonet" in names,
        "max_batch": {f"{a} {f} {k}-shot": b for (a, f, k), b in caps.items()},
    }
    return run(
        args, device, names, batches, shots, peer_batches, caps, timing, quiet, command, settings
    )


def run(
    args: argparse.Namespace,
    device: torch.device,
    names: Sequence[str],
    batches: Sequence[int],
    shots: Sequence[int],
    peer_batches: Sequence[int],
    caps: dict[tuple[str, str, int], int],
    timing: Timing,
    quiet: QuietPolicy,
    command: list[str],
    settings: dict[str, Any],
) -> int:
    from medmeta.data import ArrayDataset, EpisodeSampler, as_features, load

    clock = H.Clock(device)
    peers = Peers()
    raw = load("pbc_blood")  # [N, 28, 28, 3] uint8 -> float [N, 3, 28, 28] in [0, 1], once
    data = ArrayDataset(as_features(raw.x), raw.labels, raw.class_names)
    env = H.environment(
        device,
        args.threads,
        command,
        {
            "peers": peers.status(),
            "dtype": "float32",
            "clock": "cuda events" if clock.cuda else "time.perf_counter",
        },
        allow_dirty=args.allow_dirty,
    )
    env["medmeta_native_library"] = env["medmeta_native_library"] or _native_library()
    print(f"medmeta algorithms benchmark on {env['device_name']} ({args.threads} threads)")
    print(f"peers: {peers.status()}", flush=True)
    reuse: dict[tuple[str, str, str, int], list[H.Record]] = {}
    if args.resume is not None:
        try:
            reuse, env["resumed_from"] = load_clean_points(args.resume, env, settings, quiet)
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot resume from {args.resume}: {e}", file=sys.stderr)
            return 2
        print(f"reusing {len(reuse)} undisturbed points of {args.resume}", flush=True)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    stem = args.out / (f"algorithms-{device.type}" + (f"-{tag}" if tag else ""))
    records: list[H.Record] = []
    checks: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in names:
        learner = build_learner(name, args.hidden, data.num_classes, args.seed).to(device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        passes = [TRAIN] + ([EVALUATE] if name == "protonet" and settings["evaluate"] else [])
        for k in shots:
            sampler = EpisodeSampler(
                data, WAYS, k, args.queries, batch_size=CHECK_BATCH, generator=args.seed + 1
            )
            check_batch = as_float64(sampler.sample().to(device))
            series_checks = {}
            for pass_ in passes:
                where = f"{name} {pass_} {WAYS}-way {k}-shot"
                try:
                    series_checks[pass_] = check_series(
                        learner, pass_, peers, check_batch, clock, where
                    )
                except MedmetaCheckFailed as e:
                    print(f"!! {e}\n!! the run fails", file=sys.stderr)
                    if records:  # the partial file of the algorithms before, marked failed
                        failed = env | {"partial": True, "failed": str(e)}
                        H.write_json(
                            stem.with_suffix(".json"), _payload(failed, records, settings, checks)
                        )
                    return 1
                checks.append(_check_json(name, pass_, k, series_checks[pass_]))
                print(_check_line(name, pass_, k, series_checks[pass_]), flush=True)
            for b in batches:
                if b > caps.get((name, "*", k), b):
                    continue
                skip = {
                    f: f"skipped: memory on CPU above B={cap} (--no-cap)"
                    for (a, f, kk), cap in caps.items()
                    if a == name and kk == k and f != "*" and b > cap
                }
                todo = [p for p in passes if (name, p, f"{WAYS}-way {k}-shot", b) not in reuse]
                for pass_ in passes:
                    if pass_ not in todo:
                        recs = reuse[(name, pass_, f"{WAYS}-way {k}-shot", b)]
                        records += recs
                        print(_progress(recs, 0.0) + "   (reused)", flush=True)
                if not todo:
                    continue
                sampler = EpisodeSampler(
                    data, WAYS, k, args.queries, batch_size=b, generator=args.seed
                )
                batch = sampler.sample().to(device)
                for pass_ in todo:
                    point = Point(name, pass_, k, b, args.queries)
                    if pass_ == TRAIN:
                        forms = train_formulations(
                            learner, optimizer, peers, b in peer_batches, skip
                        )
                    else:
                        forms = evaluation_formulations(learner, peers)
                    t0 = time.perf_counter()
                    recs = run_point(
                        point, forms, series_checks[pass_], batch, learner, clock, timing, quiet
                    )
                    records += recs
                    print(_progress(recs, time.perf_counter() - t0), flush=True)
                del batch
        del learner, optimizer
        gc.collect()
        # after each algorithm, so that a run stopped early can be resumed (--resume)
        H.write_json(
            stem.with_suffix(".json"), _payload(env | {"partial": True}, records, settings, checks)
        )
    env["load_average_end"] = list(os.getloadavg())
    env["wall_s"] = round(time.perf_counter() - started, 1)
    env["contention"] = _contention(records, quiet)
    payload = _payload(env, records, settings, checks)
    for path in write_outputs(payload, stem):
        print(f"wrote {path}")
    bad = [r for r in records if r.kind == H.KIND_OURS and r.status != "ok"]
    for r in records:
        if r.status.startswith(("error", "disagrees")) or (
            r.kind == H.KIND_OURS and r.status != "ok"
        ):
            print(f"!! {r.op} {r.pass_} {r.series} B={r.x} {r.formulation}: {r.status}")
    return 1 if bad else 0


def load_clean_points(
    path: Path, env: dict[str, Any], settings: dict[str, Any], quiet: QuietPolicy
) -> tuple[dict[tuple[str, str, str, int], list[H.Record]], dict[str, Any]]:
    """The points of an earlier run (same machine, threads, torch, native library and
    problem) that no other process disturbed, keyed by (algorithm, pass, series, B)."""
    old = json.loads(path.read_text())
    for key in ("device_name", "threads", "torch", "medmeta_native_library", "peers"):
        if old["environment"].get(key) != env.get(key):
            raise ValueError(
                f"{key} differs: {old['environment'].get(key)!r} there, {env.get(key)!r} now"
            )
    for key in ("queries", "hidden", "seed", "hparams"):
        if old["settings"].get(key) != settings.get(key):
            raise ValueError(f"setting {key} differs")
    groups: dict[tuple[str, str, str, int], list[H.Record]] = {}
    for d in old["records"]:
        r = _record_from_json(d)
        r.ratio_vs_medmeta = None  # recomputed with this run's records
        groups.setdefault((r.op, r.pass_, r.series, r.x), []).append(r)
    clean = {
        k: rs
        for k, rs in groups.items()
        if all(r.others_cpu is not None and r.others_cpu < quiet.threshold for r in rs)
        and any(r.kind == H.KIND_OURS and r.status == "ok" for r in rs)
    }
    note = {
        "path": str(path),
        "date_utc": old["environment"]["date_utc"],
        "command": old["environment"].get("command"),
        "git_commit": old["environment"].get("git_commit"),
        "git_dirty": H.is_dirty(old["environment"]),
        "reused_points": len(clean),
    }
    return clean, note


def _native_library() -> dict[str, Any] | None:
    """Digest of the loaded native extension (where the editable install keeps it)."""
    try:
        import medmeta._C as native

        return H._file_digest(Path(native.__file__))
    except Exception as e:
        return {"error": H.short_error(e)}


def _contention(records: Sequence[H.Record], quiet: QuietPolicy) -> dict[str, Any]:
    per_point = {(r.op, r.pass_, r.series, r.x): r.others_cpu for r in records}
    loads = sorted(v for v in per_point.values() if v is not None)
    return {
        "threshold_cpus": quiet.threshold,
        "max_wait_per_point_s": quiet.max_wait_s,
        "retries": quiet.retries,
        "waited_s": round(quiet.waited_s, 1),
        "remeasured_points": quiet.remeasured,
        "points": len(per_point),
        "points_still_disturbed": sum(v >= quiet.threshold for v in loads),
        "others_cpu_median": loads[len(loads) // 2] if loads else None,
        "others_cpu_max": loads[-1] if loads else None,
        "note": "others_cpu per record: CPUs used by other processes while the point was timed",
    }


def _progress(recs: Sequence[H.Record], seconds: float) -> str:
    r0 = recs[0]
    others = "" if r0.others_cpu is None else f" others {r0.others_cpu:.2f} CPU"
    head = f"[{seconds:5.1f}s{others}] {r0.op:10s} {r0.pass_:10s} {r0.series} B={r0.x:<3d}"
    ours = next((r for r in recs if r.kind == H.KIND_OURS), None)
    if ours is None or not ours.median_s:
        return f"{head} medmeta: {ours.status if ours else 'missing'}"
    parts = [f"{r0.x / ours.median_s:7.2f} ep/s"]
    for r in recs:
        if r is ours:
            continue
        if r.median_s:
            parts.append(f"{r.formulation} {r.median_s / ours.median_s:.2f}×")
        elif not r.status.startswith("skipped"):
            parts.append(f"{r.formulation}: {r.status[:60]}")
    return f"{head} " + " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
