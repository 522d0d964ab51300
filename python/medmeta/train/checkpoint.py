"""Checkpoints that load with ``torch.load(..., weights_only=True)``, written atomically.

A checkpoint is a dict of tensors and plain Python data only (no pickled classes):

* ``format``: ``"medmeta.checkpoint/1"``; ``kind``: ``"last"`` or ``"best"``; ``step``;
* ``learner``: ``{"spec": learner.spec(), "class": "module.Qualname", "state_dict": ...}``;
* ``backbone``: the caller's backbone description (e.g. ``{"name": "conv4",
  "input_shape": [3, 28, 28], "kwargs": {"hidden": 32}}`` for
  :func:`~medmeta.nn.make_backbone`) or ``None``;
* for ``last``: ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``sampler`` (the episode
  generator state), ``rng`` (torch CPU/CUDA, numpy and Python ``random`` states as tensors),
  ``history``, ``best``, ``config`` and the bookkeeping needed for an exact resume.

Writes go to a temporary file in the target folder, are flushed and fsynced, then
``os.replace``-d over the target, so a crash (even SIGKILL mid-write) never leaves a truncated
checkpoint, and a failed write (full disk) leaves the previous one intact
(:func:`medmeta._files.atomic_write_bytes`; tested in ``tests/reliability``).
"""

from __future__ import annotations

import io
import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmeta._files import atomic_write_bytes

__all__ = [
    "FORMAT",
    "atomic_save",
    "atomic_write_bytes",
    "check_plain",
    "get_rng_state",
    "load_checkpoint",
    "load_learner",
    "set_rng_state",
]

FORMAT = "medmeta.checkpoint/1"

_SCALARS = (str, int, float, bool, type(None), torch.Size, torch.dtype)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value ``torch.load(weights_only=True)`` would refuse.

    Allowed: tensors (and parameters), exact ``str``/``int``/``float``/``bool``/``None``,
    ``torch.Size``/``dtype``, and plain ``dict``/``OrderedDict`` (str or int keys), ``list`` and
    ``tuple`` of those. Subclasses (e.g. ``torch.__version__``, a ``TorchVersion``; numpy
    scalars; named tuples) are refused because the unpickler would need their class.
    """
    kind = type(obj)
    if kind in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not str/int")
            check_plain(v, f"{where}[{k!r}]")
    elif kind in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif kind not in _SCALARS and kind not in (torch.Tensor, nn.Parameter):
        raise TypeError(
            f"{where}: {kind.__module__}.{kind.__qualname__} cannot be stored in a "
            "weights_only checkpoint (use tensors and plain Python data)"
        )


def atomic_save(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` a plain checkpoint dict atomically; checks it first with :func:`check_plain`.

    Raises:
        medmeta._files.WriteError: the file cannot be written (disk full, read-only folder,
            ...); a previous checkpoint under ``path`` is left as it was.
    """
    check_plain(obj)
    buffer = io.BytesIO()
    torch.save(dict(obj), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its format."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a medmeta checkpoint ({FORMAT})")
    return ckpt


def load_learner(
    path: str | os.PathLike[str],
    backbone: nn.Module | None = None,
    *,
    map_location: str | torch.device | None = "cpu",
) -> nn.Module:
    """Rebuild a learner from a checkpoint with :func:`medmeta.algorithms.create` and load
    its weights.

    Args:
        path: a ``best.pt`` / ``last.pt`` written by :func:`~medmeta.train.meta_fit`.
        backbone: a freshly built backbone of the trained architecture; if omitted, the
            checkpoint's backbone description (``{"name", "input_shape", "kwargs"}``) is
            passed to :func:`~medmeta.nn.make_backbone`.
    """
    from medmeta.algorithms.base import create

    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["learner"]["spec"]
    if backbone is None:
        desc = ckpt.get("backbone")
        if not isinstance(desc, Mapping) or "name" not in desc or "input_shape" not in desc:
            raise ValueError(
                f"{os.fspath(path)} has no backbone description with 'name' and 'input_shape'; "
                "pass backbone= (a module of the trained architecture)"
            )
        from medmeta.nn import make_backbone

        backbone = make_backbone(desc["name"], desc["input_shape"], **dict(desc.get("kwargs", {})))
    learner = create(spec["algorithm"], backbone, spec["ways"], **spec["hparams"])
    learner.load_state_dict(ckpt["learner"]["state_dict"])
    return learner


# -- RNG states as tensors ------------------------------------------------------------------


def get_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Global RNG states (torch CPU, the CUDA device of ``device``, numpy, Python) as tensors."""
    np_state = np.random.get_state()  # noqa: NPY002  (the legacy global state learners may use)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`get_rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    p = state["python"]
    random.setstate(
        (int(p["version"]), tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"])
    )
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
