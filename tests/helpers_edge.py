"""Shared set-up of the export, edge, quantization and distillation tests: real blood-cell
images (PBC), meta-train on 5 cell types, hold out the other 3, and briefly trained Conv4
learners.

Trained learners are cached per process (``lru_cache``): tests must not train them further.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from helpers import torch_threads
from medmeta import algorithms
from medmeta.algorithms.base import MetaLearner, build
from medmeta.data import ArrayDataset, EpisodeSampler, as_features, load, split_classes
from medmeta.nn import Conv4
from medmeta.train import meta_fit

TRAIN_CLASSES = [0, 1, 2, 3, 4]
TEST_CLASSES = [5, 6, 7]
WAYS, SHOTS = 3, 5


@functools.lru_cache(maxsize=1)
def blood_split() -> tuple[ArrayDataset, ArrayDataset]:
    """(meta-train set: 5 cell types, held-out set: 3 other cell types), 600 images each."""
    return tuple(split_classes(load("pbc_blood"), classes=[TRAIN_CLASSES, TEST_CLASSES]))


@functools.lru_cache(maxsize=4)
def trained_protonet(steps: int = 20, hidden: int = 64) -> MetaLearner:
    """A 3-way Prototypical Network on ``Conv4(hidden)`` meta-trained for ``steps`` steps
    (meta-batch 2, 3-way 5-shot 10-query episodes, seed 0): about 3 s at hidden 64."""
    train, _ = blood_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        learner = algorithms.create("protonet", Conv4(3, hidden=hidden), ways=WAYS)
    with one_thread():
        meta_fit(learner, train, ways=WAYS, shots=SHOTS, queries=10, steps=steps,
                 meta_batch=2, seed=0, progress=False)  # fmt: skip
    return learner.eval()


def meta_trained_conv4(
    name: str,
    train: ArrayDataset,
    steps: int,
    *,
    features: torch.Tensor | None = None,
    **hparams: Any,
) -> MetaLearner:
    """A 3-way ``name`` learner on ``Conv4(hidden=16)`` (seed 0), meta-trained for ``steps``
    steps on ``train`` (3-way 5-shot 5-query episodes, meta-batch 2, Adam 1e-3, one thread)
    so that its probabilities are far from uniform: a parity check on near-uniform outputs
    would prove little. ``features``: ``train``'s images as the model takes them (default
    ``as_features``); ``hparams`` go to the method."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        learner = build(
            name, Conv4(3, hidden=16), WAYS, input_shape=(3, 28, 28), num_classes=8, **hparams
        )  # fmt: skip  (8: pbc_blood's label range)
    if steps:
        sampler = EpisodeSampler(train, ways=WAYS, shots=5, queries=5, batch_size=2, generator=0,
                                 features=features)  # fmt: skip
        optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
        with one_thread():
            for _ in range(steps):
                learner.meta_train_step(sampler.sample(), optimizer)
    return learner.eval()


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Run torch on one thread: tiny models on a shared, loaded machine are faster so (two
    OpenMP threads waiting for a preempted sibling made ``maml.adapt`` ~5x slower)."""
    return torch_threads(1)


@dataclass(frozen=True)
class HeldOutTask:
    """One task on the held-out classes: a support set and every other image as a query.

    ``support_x [N*K, 3, 28, 28]`` float32 in [0, 1] (class-major), ``support_y [N*K]``,
    ``query_x [M, 3, 28, 28]``, ``query_y [M]`` (episode labels in ``[0, N)``).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@functools.lru_cache(maxsize=4)
def held_out_task(seed: int = 0, shots: int = SHOTS) -> HeldOutTask:
    """A seeded ``shots``-shot support set of the 3 held-out classes and all other images."""
    _, test = blood_split()
    x = as_features(test.x)
    y = np.asarray(test.labels)
    rng = np.random.default_rng(seed)
    support, query, query_y = [], [], []
    for n, c in enumerate(sorted(set(y.tolist()))):
        members = rng.permutation(np.flatnonzero(y == c))
        support.append(members[:shots])
        query.append(members[shots:])
        query_y.append(np.full(len(members) - shots, n))
    return HeldOutTask(
        support_x=x[np.concatenate(support)],
        support_y=torch.arange(WAYS).repeat_interleave(shots),
        query_x=x[np.concatenate(query)],
        query_y=torch.as_tensor(np.concatenate(query_y)),
    )


def tamper_weights(src: Any, dst: Any) -> None:
    """Write ``src`` (an ONNX file) to ``dst`` with its largest weight tensor nudged and its
    metadata as exported: a model edited after export."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 1e-3
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(dst))


def edit_onnx_metadata(src: Any, dst: Any, edit: Any) -> None:
    """Copy the ONNX file ``src`` to ``dst`` with its ``medmeta`` metadata changed in place
    by ``edit(meta)`` (a tampered or hand-edited export)."""
    import json

    import onnx

    model = onnx.load(str(src))
    (prop,) = [p for p in model.metadata_props if p.key == "medmeta"]
    meta = json.loads(prop.value)
    edit(meta)
    prop.value = json.dumps(meta)
    onnx.save(model, str(dst))
