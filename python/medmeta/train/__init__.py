"""Meta-training: :func:`meta_fit` (episodic training with validation on held-out classes,
best-checkpoint selection, atomic ``weights_only`` checkpoints, exact resume, CSV/JSON logs,
mixed precision on CUDA, data-parallel over ``torchrun`` processes) and checkpoint helpers.
:mod:`medmeta.train.distributed` holds the process-group helpers.
"""

from medmeta.train.checkpoint import (
    atomic_save,
    check_plain,
    load_checkpoint,
    load_learner,
)
from medmeta.train.distributed import DistContext, DistributedError
from medmeta.train.fit import FitResult, meta_fit
from medmeta.train.logs import CSV_FIELDS, TrainLog, read_csv

__all__ = [
    "CSV_FIELDS",
    "DistContext",
    "DistributedError",
    "FitResult",
    "TrainLog",
    "atomic_save",
    "check_plain",
    "load_checkpoint",
    "load_learner",
    "meta_fit",
    "read_csv",
]
