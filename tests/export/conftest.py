"""Shared fixtures of the export tests: real blood-cell images, small meta-trained learners
and their exported files (exported once per session: a dynamo export takes seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.algorithms import MetaLearner, create
from medmeta.data import ArrayDataset, load
from medmeta.data.episodes import EpisodeSampler, split_classes
from medmeta.edge import Preprocessing
from medmeta.export import ExportResult, to_onnx
from medmeta.nn import Conv4

TASK_CLASSES = (0, 1, 2)  # held out of meta-training; the deployed task
TRAIN_CLASSES = (3, 4, 5, 6, 7)
SHAPE = (3, 28, 28)
TEMPERATURE = 1.7


@dataclass
class Task:
    """A 3-way 5-shot task on real images: raw uint8 and preprocessed float inputs."""

    support_raw: np.ndarray  # [15, 28, 28, 3] uint8
    support_x: torch.Tensor  # [15, 3, 28, 28] float in [0, 1]
    support_y: torch.Tensor  # [15] in [0, 3)
    query_raw: np.ndarray  # [60, 28, 28, 3]
    query_x: torch.Tensor
    query_y: np.ndarray
    class_names: list[str]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared, loaded machine: two OpenMP threads waiting for a preempted
    sibling make an adaptation ~5x slower than one thread (measured on maml.adapt)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def blood() -> ArrayDataset:
    return load("pbc_blood")


@pytest.fixture(scope="session")
def task(blood: ArrayDataset) -> Task:
    rng = np.random.default_rng(7)
    support, query = [], []
    for c in TASK_CLASSES:
        idx = rng.permutation(np.flatnonzero(blood.y == c))
        support.append(idx[:5])
        query.append(idx[5:25])
    s, q = np.concatenate(support), np.concatenate(query)
    relabel = {c: i for i, c in enumerate(TASK_CLASSES)}
    pre = Preprocessing.for_images(SHAPE)
    return Task(
        support_raw=blood.x[s],
        support_x=torch.from_numpy(pre(blood.x[s])),
        support_y=torch.tensor([relabel[int(c)] for c in blood.y[s]]),
        query_raw=blood.x[q],
        query_x=torch.from_numpy(pre(blood.x[q])),
        query_y=np.array([relabel[int(c)] for c in blood.y[q]]),
        class_names=[blood.class_names[c] for c in TASK_CLASSES],
    )


def meta_trained(name: str, blood: ArrayDataset, steps: int, **hparams) -> MetaLearner:
    """A Conv4 (16 channels) learner meta-trained for ``steps`` steps on the other classes,
    so its probabilities are far from uniform (a parity check on near-uniform outputs would
    prove little). One thread: tiny models on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            learner = create(name, Conv4(3, hidden=16), ways=3, **hparams)
        train = split_classes(blood, classes=[list(TRAIN_CLASSES), list(TASK_CLASSES)])[0]
        sampler = EpisodeSampler(train, ways=3, shots=5, queries=5, batch_size=2, generator=0)
        optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
        for _ in range(steps):
            learner.meta_train_step(sampler.sample(), optimizer)
    finally:
        torch.set_num_threads(threads)
    return learner.eval()


@pytest.fixture(scope="session")
def protonet(blood: ArrayDataset) -> MetaLearner:
    return meta_trained("protonet", blood, 60)


@pytest.fixture(scope="session")
def maml(blood: ArrayDataset) -> MetaLearner:
    return meta_trained("maml", blood, 10, input_shape=list(SHAPE))


@pytest.fixture(scope="session")
def protonet_files(
    protonet: MetaLearner, task: Task, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """protonet exported in both forms (classifier, embedder, head) in a folder of its own."""
    out = tmp_path_factory.mktemp("protonet") / "blood.onnx"
    evaluation = {"accuracy": 0.912, "ci95": 0.013, "ways": 3, "shots": 5, "episodes": 600}
    return to_onnx(
        protonet,
        out,
        support_x=task.support_x,
        support_y=task.support_y,
        preprocessing=Preprocessing.for_images(SHAPE),
        class_names=task.class_names,
        temperature=TEMPERATURE,
        evaluation=evaluation,
        form="both",
    )


@pytest.fixture(scope="session")
def maml_files(
    maml: MetaLearner, task: Task, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    out = tmp_path_factory.mktemp("maml") / "maml.onnx"
    return to_onnx(
        maml,
        out,
        support_x=task.support_x,
        support_y=task.support_y,
        class_names=task.class_names,
        temperature=TEMPERATURE,
    )


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}
