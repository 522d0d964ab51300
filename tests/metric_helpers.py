"""Shared helpers for the metric / model-based / baseline learner tests (importable as
``metric_helpers``: pytest puts tests/ on the path).

The learning checks meta-train a tiny learner for a few dozen steps on real blood-cell
images (``pbc_blood``: classes 0-4 for meta-training, 5-7 held out) and measure, in eval
mode, the mean query accuracy on episodes of

* the held-out classes ("novel"), and
* the training classes drawn only from images held out of meta-training ("seen").

On this split an *untrained* Conv4 already reaches ~0.85 on novel 3-way 5-shot
episodes (the held-out monocytes, neutrophils and platelets differ in size and colour), so
novel-class accuracy alone cannot show that a method learns; the "seen" accuracy before
and after meta-training can, and the tests assert both.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from medmeta.algorithms import MetaLearner, create
from medmeta.data import ArrayDataset, load
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler, as_features, split_classes
from medmeta.nn import Conv4

TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7)
IMAGE_SHAPE = (3, 28, 28)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's default generator for a block (parameter init) without leaking the
    state to other tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


SEEN_HELD_OUT = 100  # images per training class kept out of meta-training


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch (and the native ops, which follow torch's count) on one thread.

    The learners' test models are tiny; on a shared, oversubscribed machine two OpenMP
    threads that wait for each other make a step ~20x slower than one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def pbc_split() -> dict[str, ArrayDataset]:
    """pbc_blood parts, loaded once: ``"train"`` (classes 0-4 minus ``SEEN_HELD_OUT``
    images per class), ``"seen"`` (those held-out images) and ``"test"`` (classes 5-7)."""
    ds = load("pbc_blood")
    train, test = split_classes(ds, classes=[list(TRAIN_CLASSES), list(TEST_CLASSES)])
    labels = np.asarray(train.labels)
    order = np.random.default_rng(0).permutation(len(labels))
    rank = np.empty_like(order)
    for c in TRAIN_CLASSES:  # the first SEEN_HELD_OUT of each class in a seeded order
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    held = rank < SEEN_HELD_OUT
    return {
        "train": train.subset(np.flatnonzero(~held)),
        "seen": train.subset(np.flatnonzero(held)),
        "test": test,
    }


@functools.lru_cache(maxsize=3)
def _features(part: str) -> torch.Tensor:
    return as_features(pbc_split()[part].x)


def sampler(
    part: str, ways: int, shots: int, queries: int, batch_size: int, seed: int
) -> EpisodeSampler:
    """Episodes of the meta-training images (``"train"``), held-out images of the training
    classes (``"seen"``) or the held-out classes (``"test"``)."""
    return EpisodeSampler(
        pbc_split()[part],
        ways,
        shots,
        queries,
        batch_size=batch_size,
        generator=seed,
        features=_features(part),
    )


def episodes(
    ways: int = 3, shots: int = 2, queries: int = 3, batch_size: int = 2, seed: int = 0
) -> EpisodeBatch:
    """One small meta-batch of training-class episodes."""
    return sampler("train", ways, shots, queries, batch_size, seed).sample()


def tiny_conv4(seed: int = 0, hidden: int = 16, depth: int = 4) -> Conv4:
    """A seeded small Conv4 (28x28 RGB -> ``hidden`` features with depth 4)."""
    with seeded(seed):
        return Conv4(3, hidden=hidden, depth=depth)


def build(
    name: str,
    ways: int = 3,
    seed: int = 0,
    backbone: Callable[[], torch.nn.Module] | None = None,
    **hparams,
) -> MetaLearner:
    """A learner by name with a seeded tiny backbone and seeded heads."""
    with seeded(seed):
        net = backbone() if backbone is not None else Conv4(3, hidden=16)
        return create(name, net, ways, **hparams)


@torch.no_grad()
def heldout_accuracy(
    learner: MetaLearner,
    ways: int,
    shots: int,
    queries: int = 5,
    n_episodes: int = 50,
    seed: int = 123,
    chunk: int = 25,
    part: str = "test",
) -> float:
    """Mean query accuracy of an eval-mode learner over ``n_episodes`` episodes of the
    held-out classes (``part="test"``) or held-out images of the training classes
    (``part="seen"``)."""
    was_training = learner.training
    learner.eval()
    test = sampler(part, ways, shots, queries, chunk, seed)
    correct, total = 0.0, 0
    try:
        for _ in range(0, n_episodes, chunk):
            b = test.sample()
            logits = learner.predict(b.support_x, b.support_y, b.query_x)
            correct += float((logits.argmax(-1) == b.query_y).float().sum())
            total += b.query_y.numel()
    finally:
        learner.train(was_training)
    return correct / total


@dataclass
class LearningResult:
    novel_before: float  # held-out-class accuracy before meta-training
    novel_after: float  # ... and after
    seen_before: float  # accuracy on held-out images of the training classes before
    seen_after: float  # ... and after
    train_accuracy: float  # mean training-episode accuracy over the last quarter of steps
    losses: list[float]
    seconds: float  # wall-clock
    cpu_seconds: float  # process CPU time (the test machine's cores are shared)

    def __str__(self) -> str:
        return (
            f"novel {self.novel_before:.3f} -> {self.novel_after:.3f}, "
            f"seen {self.seen_before:.3f} -> {self.seen_after:.3f}, "
            f"train {self.train_accuracy:.3f}, loss {self.losses[0]:.3f} -> "
            f"{self.losses[-1]:.3f}, {self.seconds:.1f} s ({self.cpu_seconds:.1f} s CPU)"
        )

    def check(self, ways: int, novel_margin: float = 0.15, seen_gain: float = 0.05) -> None:
        """Novel-class accuracy clearly above chance, and meta-training improved
        few-shot accuracy on unseen images of the training classes."""
        chance = 1.0 / ways
        assert self.novel_after > chance + novel_margin, str(self)
        assert self.seen_after > self.seen_before + seen_gain, str(self)
        assert all(np.isfinite(self.losses)), str(self)


def train_and_evaluate(
    learner: MetaLearner,
    ways: int = 3,
    shots: int = 5,
    queries: int = 5,
    steps: int = 60,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    n_episodes: int = 50,
) -> LearningResult:
    """Meta-train ``learner`` with Adam on training-class episodes for ``steps`` steps and
    measure held-out-class accuracy before and after."""
    start, cpu = time.perf_counter(), time.process_time()

    def measure() -> tuple[float, float]:
        return tuple(
            heldout_accuracy(learner, ways, shots, n_episodes=n_episodes, part=part)
            for part in ("test", "seen")
        )

    novel_before, seen_before = measure()
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    train = sampler("train", ways, shots, queries, batch_size, seed)
    results = [learner.meta_train_step(train.sample(), opt) for _ in range(steps)]
    novel_after, seen_after = measure()
    tail = results[-max(1, steps // 4) :]
    return LearningResult(
        novel_before=novel_before,
        novel_after=novel_after,
        seen_before=seen_before,
        seen_after=seen_after,
        train_accuracy=sum(r.accuracy for r in tail) / len(tail),
        losses=[r.loss for r in results],
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
    )


def assert_grads_reach(module: torch.nn.Module, what: str = "backbone") -> None:
    """Every parameter of ``module`` got a finite gradient and some are non-zero."""
    grads = [p.grad for p in module.parameters()]
    assert grads, f"{what} has no parameters"
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {what} parameters {missing}"
    assert all(bool(torch.isfinite(g).all()) for g in grads), f"non-finite {what} gradient"
    assert sum(float(g.abs().sum()) for g in grads) > 0, f"all {what} gradients are zero"


def roundtrip(learner: MetaLearner, backbone: Callable[[], torch.nn.Module]) -> MetaLearner:
    """Rebuild ``learner`` from its spec and state_dict (with a fresh backbone)."""
    spec = learner.spec()
    with seeded(999):  # different init: only the state_dict may make them equal
        clone = create(spec["algorithm"], backbone(), spec["ways"], **spec["hparams"])
    clone.load_state_dict(learner.state_dict())
    return clone


# --------------------------------------------------------------------- shared checks


def check_shapes(learner: MetaLearner, batch: EpisodeBatch) -> None:
    """meta_loss -> (finite scalar with grad, accuracy [B] in [0, 1]); predict -> [B, Q, N]."""
    loss, accuracy = learner.meta_loss(batch)
    assert loss.dim() == 0 and loss.requires_grad and bool(torch.isfinite(loss))
    assert accuracy.shape == (batch.batch_size,)
    assert bool(((accuracy >= 0) & (accuracy <= 1)).all())
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (batch.batch_size, batch.query_y.shape[1], learner.ways)
    assert bool(torch.isfinite(logits).all())


def check_accuracy_matches_predict(learner: MetaLearner, batch: EpisodeBatch) -> None:
    """In eval mode, meta_loss's accuracy is the accuracy of predict's argmax."""
    learner.eval()
    with torch.no_grad():
        _, accuracy = learner.meta_loss(batch)
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    expected = (logits.argmax(-1) == batch.query_y).float().mean(-1)
    torch.testing.assert_close(accuracy.float(), expected)


def check_gradients(learner: MetaLearner, batch: EpisodeBatch) -> None:
    """A backward pass of meta_loss reaches every backbone parameter (and the rest)."""
    learner.train()
    learner.zero_grad(set_to_none=True)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert_grads_reach(learner.backbone, "backbone")
    others = [(n, p) for n, p in learner.named_parameters() if not n.startswith("backbone.")]
    missing = [n for n, p in others if p.grad is None]
    assert not missing, f"no gradient reached {missing}"


def check_adapt_matches_predict(learner: MetaLearner, batch: EpisodeBatch, atol=1e-5) -> None:
    """``adapt(support)(query)`` equals ``predict`` of the eval-mode learner (episode 0),
    also after the learner changes (the adapted classifier is a copy)."""
    learner.eval()
    sx, sy, qx = batch.support_x[:1], batch.support_y[:1], batch.query_x[:1]
    with torch.no_grad():
        expected = learner.predict(sx, sy, qx)[0]
        adapted = learner.adapt(sx[0], sy[0])
        got = adapted(qx[0])
    assert got.shape == expected.shape == (qx.shape[1], learner.ways)
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4)
    assert not adapted.training
    with torch.no_grad():  # a deployed classifier must not follow later training
        for p in learner.parameters():
            p.add_(0.5)
        torch.testing.assert_close(adapted(qx[0]), got)


def check_episodes_independent(learner: MetaLearner, batch: EpisodeBatch) -> None:
    """In eval mode an episode's logits do not depend on the other episodes of the batch."""
    learner.eval()
    with torch.no_grad():
        full = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        for b in range(batch.batch_size):
            one = learner.predict(
                batch.support_x[b : b + 1], batch.support_y[b : b + 1], batch.query_x[b : b + 1]
            )
            torch.testing.assert_close(one[0], full[b], atol=1e-5, rtol=1e-4)


def check_roundtrip(
    learner: MetaLearner, batch: EpisodeBatch, backbone: Callable[[], torch.nn.Module]
) -> None:
    """spec() + create() + load_state_dict() gives the same predictions and loss."""
    spec = learner.spec()
    assert spec["algorithm"] == learner.name and spec["ways"] == learner.ways
    buffer = io.BytesIO()  # checkpoints load specs with weights_only=True
    torch.save(spec, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == spec
    clone = roundtrip(learner, backbone)
    learner.eval()
    clone.eval()
    with torch.no_grad():
        a = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        b = clone.predict(batch.support_x, batch.support_y, batch.query_x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(learner.meta_loss(batch)[0], clone.meta_loss(batch)[0])


def check_deterministic(make: Callable[[], MetaLearner], steps: int = 3) -> None:
    """Two learners built from the same seeds train to identical parameters."""
    runs = []
    for _ in range(2):
        learner = make()
        opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
        train = sampler("train", 3, 2, 2, 2, seed=7)
        losses = [learner.meta_train_step(train.sample(), opt).loss for _ in range(steps)]
        runs.append((losses, [p.detach().clone() for p in learner.parameters()]))
    assert runs[0][0] == runs[1][0]
    for p, q in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def check_exportable(adapted: torch.nn.Module, x: torch.Tensor) -> None:
    """The adapted classifier is plain torch: ``torch.export`` captures it (the route to
    ONNX) and the exported program gives the same logits."""
    program = torch.export.export(adapted, (x,))
    torch.testing.assert_close(program.module()(x), adapted(x))
