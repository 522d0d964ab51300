"""Meta-learning methods with one common interface (see :mod:`medmeta.algorithms.base`).

Metric: Prototypical, Matching, Relation and Siamese networks. Optimisation: MAML
(second- and first-order), Reptile, Meta-SGD, ANIL, MAML++. Model-based: a
memory-augmented network. Baseline: supervised pre-training + nearest centroid.
Segmentation: PANet and ALPNet (:mod:`medmeta.algorithms.segmenter`). Regression: the MAML
family with ``task="regression"`` (:mod:`medmeta.algorithms.regressor`).
"""

from medmeta.algorithms import (  # noqa: F401  (importing registers each method)
    alpnet,
    anil,
    baseline,
    maml,
    mamlpp,
    matching,
    memory,
    metasgd,
    panet,
    protonet,
    relation,
    reptile,
    siamese,
)
from medmeta.algorithms.base import (
    Adapted,
    MetaLearner,
    StepResult,
    available,
    build,
    create,
    register,
    shape_arguments,
)
from medmeta.algorithms.regressor import AdaptedRegressor
from medmeta.algorithms.segmenter import AdaptedSegmenter, SegmentationLearner

__all__ = [
    "Adapted",
    "AdaptedRegressor",
    "AdaptedSegmenter",
    "MetaLearner",
    "SegmentationLearner",
    "StepResult",
    "available",
    "build",
    "create",
    "register",
    "shape_arguments",
]
