"""Meta-learning methods with one common interface (see :mod:`medmeta.algorithms.base`)."""

from medmeta.algorithms.base import Adapted, MetaLearner, StepResult, available, create, register

__all__ = ["Adapted", "MetaLearner", "StepResult", "available", "create", "register"]
