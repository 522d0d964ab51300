"""Backbones, task-batched layers and a dense segmentation encoder for meta-learning."""

from medmeta.nn.backbones import MLP, Conv1dNet, Conv4, ResNet12, embedding_dim, make_backbone
from medmeta.nn.layers import TaskSequential, task_parameters
from medmeta.nn.seg_encoder import SegEncoder, upsample_to

__all__ = [
    "MLP",
    "Conv1dNet",
    "Conv4",
    "ResNet12",
    "SegEncoder",
    "TaskSequential",
    "embedding_dim",
    "make_backbone",
    "task_parameters",
    "upsample_to",
]
