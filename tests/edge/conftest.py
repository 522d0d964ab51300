"""Shared fixtures of the edge-runtime tests: real blood-cell images, a briefly meta-trained
Prototypical Network and its export in both forms (exported once per session)."""

from __future__ import annotations

from dataclasses import dataclass

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
NEW_CLASS = 5  # a blood-cell type enrolled later on the device
TRAIN_CLASSES = (3, 4, 6, 7)
SHAPE = (3, 28, 28)
TEMPERATURE = 1.5


@dataclass
class Task:
    """Raw uint8 images ``[n, 28, 28, 3]`` of a 3-way 5-shot task, its queries, and 5
    support + 20 query images of a fourth type to enrol on the device."""

    support_raw: np.ndarray
    support_y: np.ndarray  # [15] in [0, 3)
    query_raw: np.ndarray  # [60]
    query_y: np.ndarray
    new_support_raw: np.ndarray  # [5]
    new_query_raw: np.ndarray  # [20]
    class_names: list[str]
    new_class_name: str


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    with one_thread():  # tiny models on a shared machine (see one_thread)
        yield


@pytest.fixture(scope="session")
def task(blood: ArrayDataset) -> Task:
    rng = np.random.default_rng(11)
    support, query = [], []
    for c in (*TASK_CLASSES, NEW_CLASS):
        idx = rng.permutation(np.flatnonzero(blood.y == c))
        support.append(idx[:5])
        query.append(idx[5:25])
    return Task(
        support_raw=blood.x[np.concatenate(support[:3])],
        support_y=np.repeat(np.arange(3), 5),
        query_raw=blood.x[np.concatenate(query[:3])],
        query_y=np.repeat(np.arange(3), 20),
        new_support_raw=blood.x[support[3]],
        new_query_raw=blood.x[query[3]],
        class_names=[blood.class_names[c] for c in TASK_CLASSES],
        new_class_name=blood.class_names[NEW_CLASS],
    )


@pytest.fixture(scope="session")
def preprocessing() -> Preprocessing:
    # a normalisation, so the test also covers it end to end
    return Preprocessing.for_images(SHAPE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="session")
def protonet(blood: ArrayDataset, preprocessing: Preprocessing) -> MetaLearner:
    """Conv4 (16 channels) meta-trained for 60 steps on the other classes, on inputs
    preprocessed as deployed."""
    train = split_classes(blood, classes=[list(TRAIN_CLASSES), list(TASK_CLASSES)])[0]
    features = torch.from_numpy(preprocessing(train.x))
    return meta_trained_conv4("protonet", train, 60, features=features)


@pytest.fixture(scope="session")
def exported(
    protonet: MetaLearner,
    task: Task,
    preprocessing: Preprocessing,
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportResult:
    """protonet adapted to the task and exported in both forms."""
    return to_onnx(
        protonet,
        tmp_path_factory.mktemp("edge") / "blood.onnx",
        support_x=preprocessing(task.support_raw),
        support_y=task.support_y,
        preprocessing=preprocessing,
        class_names=task.class_names,
        temperature=TEMPERATURE,
        evaluation={"accuracy": 0.9, "ci95": 0.01},
        form="both",
    )
