"""Shared fixtures of the export tests: real blood-cell images, small meta-trained learners
and their exported files (exported once per session: a dynamo export takes seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_edge import meta_trained_conv4, one_thread
from medmeta.algorithms import MetaLearner
from medmeta.data import ArrayDataset
from medmeta.data.episodes import split_classes
from medmeta.edge import Preprocessing
from medmeta.export import ExportResult, to_onnx

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
    with one_thread():  # tiny models on a shared machine (see one_thread)
        yield


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


@pytest.fixture(scope="session")
def meta_train_set(blood: ArrayDataset) -> ArrayDataset:
    """The classes other than the deployed task's."""
    return split_classes(blood, classes=[list(TRAIN_CLASSES), list(TASK_CLASSES)])[0]


@pytest.fixture(scope="session")
def protonet(meta_train_set: ArrayDataset) -> MetaLearner:
    return meta_trained_conv4("protonet", meta_train_set, 60)


@pytest.fixture(scope="session")
def maml(meta_train_set: ArrayDataset) -> MetaLearner:
    return meta_trained_conv4("maml", meta_train_set, 10)


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
