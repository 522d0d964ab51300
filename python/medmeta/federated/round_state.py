"""Crash-safe federated runs: the server's state after every round, so that the same run
started again goes on from the last finished round instead of round 1.

After each round the server writes ``federated_state.pt`` in the output folder atomically
(:func:`medmeta.train.checkpoint.atomic_save`; read back with ``weights_only=True``): the
plan, the round, the global weights as they were sent (float32), and the card's round
history and evaluations. Everything else a round depends on is a function of the plan and
the round number (the sites' seeds, the sampled sites, the reptile step, the privacy noise),
and each site starts every round from the global weights with a fresh optimiser, so a run
resumed after round ``r`` gives the same model as one never stopped (tested).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta.federated.plan import FederatedPlan
from medmeta.federated.weights import Weights
from medmeta.train.checkpoint import atomic_save
from medmeta.train.logs import jsonable

__all__ = ["STATE", "RoundState", "load_round_state", "prepare_output", "save_round_state"]

#: The state file in the output folder, and its format tag.
STATE = "federated_state.pt"
FORMAT = "medmeta.federated_state/1"

#: Plan fields a resumed run may change (they do not change what is computed).
_MAY_CHANGE = ("round_timeout",)


@dataclass
class RoundState:
    """The server's state after ``round`` finished rounds.

    Attributes:
        round: rounds finished (``0`` before the first).
        weights: ``{key: float64 array}``, the global weights after ``round`` (the float32
            values that were sent to the sites).
        history: the strategy's per-round entries (``MetaFedStrategy.history``).
        evaluation: the server-side evaluations so far (``[{"round", metric: value}]``).
        resumed_after: the rounds after which the run was stopped and started again.
    """

    round: int
    weights: Weights
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    resumed_after: list[int] = field(default_factory=list)


def _comparable(plan: FederatedPlan) -> dict[str, Any]:
    return {k: v for k, v in plan.to_dict().items() if k not in _MAY_CHANGE}


def save_round_state(
    folder: str | os.PathLike[str], plan: FederatedPlan, state: RoundState
) -> Path:
    """Write ``folder/federated_state.pt`` atomically (the previous one stays whole if the
    write fails: :class:`medmeta._files.WriteError`)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return atomic_save({
        "format": FORMAT, "plan": json.dumps(_comparable(plan), sort_keys=True),
        "round": int(state.round),
        "weights": {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy())
                    for k, v in state.weights.items()},
        "history": json.dumps(jsonable(state.history), allow_nan=False),
        "evaluation": json.dumps(jsonable(state.evaluation), allow_nan=False),
        "resumed_after": [int(r) for r in state.resumed_after],
    }, Path(folder) / STATE)  # fmt: skip


def _differences(saved: dict[str, Any], plan: FederatedPlan) -> list[str]:
    now = _comparable(plan)
    return [f"{k}: {now.get(k)!r} now, {saved.get(k)!r} in the file"
            for k in sorted(set(now) | set(saved)) if now.get(k) != saved.get(k)]  # fmt: skip


def load_round_state(folder: str | os.PathLike[str], plan: FederatedPlan) -> RoundState | None:
    """The state in ``folder`` (``None`` if there is none).

    Raises:
        ValueError: the file cannot be read, is not a federated state, or belongs to a run
            with another plan (the differing fields are named).
    """
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    hint = f"give another output folder, or delete {path} to start over"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"not a federated state ({FORMAT})")
        saved_plan = json.loads(ckpt["plan"])
        state = RoundState(
            int(ckpt["round"]),
            {k: v.double().numpy() for k, v in ckpt["weights"].items()},
            json.loads(ckpt["history"]), json.loads(ckpt["evaluation"]),
            [int(r) for r in ckpt["resumed_after"]],
        )  # fmt: skip
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            pickle.UnpicklingError) as err:  # fmt: skip
        raise ValueError(f"{path} cannot be read ({err}); {hint}") from None
    diff = _differences(saved_plan, plan)
    if diff:
        raise ValueError(f"{path} holds round {state.round} of a federated run with another "
                         f"plan ({'; '.join(diff)}); {hint}")  # fmt: skip
    if not 0 <= state.round <= plan.rounds:
        raise ValueError(f"{path} holds round {state.round} of {plan.rounds}; {hint}")
    return state


def prepare_output(
    folder: str | os.PathLike[str], plan: FederatedPlan, resume: bool = True
) -> RoundState | None:
    """Before a run writes ``folder``: remove the model of an earlier run there
    (``model.json``, ``last.pt``) and, with ``resume``, return the state the run will go on
    from (checked against ``plan``: ``ValueError`` before any site is started); without
    ``resume`` remove the state, so the run starts at round 1."""
    path = Path(folder)
    for stale in ("model.json", "last.pt"):
        (path / stale).unlink(missing_ok=True)
    if resume:
        return load_round_state(path, plan)
    (path / STATE).unlink(missing_ok=True)
    return None
