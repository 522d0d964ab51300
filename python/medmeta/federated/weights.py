"""The weights that travel: which entries of a learner's state are federated, and their
conversion between torch state dicts, numpy arrays and Flower ``ArrayRecord`` s.

Every floating-point entry of ``learner.state_dict()`` travels: the parameters and the batch
norm running statistics (evaluation uses them, and they are computed from site data, so
they are clipped and noised with the rest under differential privacy). Integer entries
(``num_batches_tracked``) stay at the server's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "Weights",
    "build_learner",
    "federated_keys",
    "from_record",
    "l2_norm",
    "merge_state",
    "to_numpy",
    "to_record",
]

#: Named float arrays (float64 in the server's arithmetic, float32 on the wire).
Weights = dict[str, np.ndarray]

#: Variance buffers are kept at least this large after a server step (noise or a negative
#: server step could otherwise make them negative, and batch norm would divide by NaN).
MIN_VARIANCE = 1e-5


def build_learner(learner_spec: Mapping[str, Any], backbone: Mapping[str, Any]) -> Any:
    """The learner a plan describes, freshly initialised: ``medmeta.algorithms.create`` on
    ``medmeta.nn.make_backbone`` (the same rebuild :func:`medmeta.train.load_learner` does)."""
    from medmeta.algorithms.base import create
    from medmeta.nn import make_backbone

    net = make_backbone(
        backbone["name"], backbone["input_shape"], **dict(backbone.get("kwargs", {}))
    )
    return create(learner_spec["algorithm"], net, learner_spec["ways"], **learner_spec["hparams"])


def federated_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point entries of ``state``, in its order."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]


def to_numpy(state: Mapping[str, torch.Tensor], keys: list[str] | None = None) -> Weights:
    """``{key: float64 array}`` of the federated entries of a torch state dict."""
    keys = federated_keys(state) if keys is None else keys
    return {k: state[k].detach().cpu().double().numpy().copy() for k in keys}


def to_record(weights: Mapping[str, np.ndarray]) -> Any:
    """A Flower ``ArrayRecord`` of ``weights`` as float32 (the model's own precision)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    )


def from_record(record: Any) -> Weights:
    """``{key: float64 array}`` of a Flower ``ArrayRecord``."""
    return {k: np.asarray(a.numpy(), dtype=np.float64) for k, a in record.items()}


def merge_state(
    state: Mapping[str, torch.Tensor], weights: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """``state`` with the entries of ``weights`` replaced (dtype and device of ``state``)."""
    out = dict(state)
    for k, v in weights.items():
        if k not in out:
            raise KeyError(f"{k!r} is not an entry of the learner's state")
        ref = out[k]
        value = torch.as_tensor(np.asarray(v)).to(dtype=ref.dtype, device=ref.device)
        if value.shape != ref.shape:
            raise ValueError(
                f"{k}: shape {tuple(value.shape)}, the learner's is {tuple(ref.shape)}"
            )
        out[k] = value
    return out


def l2_norm(weights: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all arrays of ``weights`` taken together (float64)."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in weights.values()))
    )


def floor_variances(weights: Weights) -> Weights:
    """``weights`` with every ``*running_var`` entry at least :data:`MIN_VARIANCE`."""
    return {
        k: np.maximum(v, MIN_VARIANCE) if k.endswith("running_var") else v
        for k, v in weights.items()
    }
