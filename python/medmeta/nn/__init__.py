"""Backbones and task-batched layers for meta-learning."""

from medmeta.nn.backbones import MLP, Conv1dNet, Conv4, ResNet12, embedding_dim, make_backbone
from medmeta.nn.layers import TaskSequential, task_parameters

__all__ = [
    "MLP",
    "Conv1dNet",
    "Conv4",
    "ResNet12",
    "TaskSequential",
    "embedding_dim",
    "make_backbone",
    "task_parameters",
]
