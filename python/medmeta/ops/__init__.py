"""Native episode ops: distances, the fused prototypical loss, prototypes, masked
prototypes and the fused inner-loop update.

Every op runs the C++/CUDA kernels of ``medmeta._C`` with a native backward, is a
``torch.library`` custom op (``torch.ops.medmeta.*``) so ``torch.compile`` and
``torch.library.opcheck`` work, and has a pure-torch reference in
``medmeta.ops._reference`` (selected with ``MEDMETA_BACKEND=reference``).
"""

from __future__ import annotations

from medmeta.ops._checks import set_value_checks
from medmeta.ops._info import backend_info
from medmeta.ops._native import CudaVersionError, NativeLoadError
from medmeta.ops.distance import pairwise_distance
from medmeta.ops.inner_update import inner_update, inner_update_
from medmeta.ops.loss import prototypical_loss
from medmeta.ops.masked_prototypes import masked_prototypes
from medmeta.ops.prototypes import prototypes

__all__ = [
    "CudaVersionError",
    "NativeLoadError",
    "backend_info",
    "inner_update",
    "inner_update_",
    "masked_prototypes",
    "pairwise_distance",
    "prototypes",
    "prototypical_loss",
    "set_value_checks",
]
