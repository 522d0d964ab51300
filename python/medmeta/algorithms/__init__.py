"""Meta-learning methods with one common interface (see :mod:`medmeta.algorithms.base`).

Metric: Prototypical, Matching, Relation and Siamese networks. Optimisation: MAML
(second- and first-order), Reptile, Meta-SGD, ANIL, MAML++. Model-based: a
memory-augmented network. Baseline: supervised pre-training + nearest centroid.
"""

from medmeta.algorithms import (  # noqa: F401  (importing registers each method)
    anil,
    baseline,
    maml,
    mamlpp,
    matching,
    memory,
    metasgd,
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

__all__ = [
    "Adapted",
    "MetaLearner",
    "StepResult",
    "available",
    "build",
    "create",
    "register",
    "shape_arguments",
]
