"""The federated model as an ordinary medmeta model folder, so that ``medmeta eval``,
``adapt`` and ``export`` take it: ``last.pt`` in the checkpoint format of
:mod:`medmeta.train.checkpoint` (``weights_only``, written atomically) and ``model.json``,
a card of kind ``"trained"`` with the usual fields (the learner, backbone, preprocessing,
episodes, training summary), plus:

* ``federated``: the engine, the server algorithm and step, rounds, local steps, the sites
  (name, examples, class names), sites per round and the per-round history (who was
  aggregated, who was left out and why, the local loss and accuracy, the update norms) and
  ``resumed_after``, the rounds after which the run was stopped and started again;
* ``privacy``: ``None``, or the mechanism, ``clip`` ``C``, ``noise_multiplier`` ``sigma``,
  ``sample_rate``, ``rounds``, ``delta`` and ``epsilon`` from Opacus's RDP accountant.

No validation is run during federated training, so ``checkpoint`` is ``last.pt`` and the
probabilities are uncalibrated (``temperature`` ``None``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medmeta._files import atomic_write_bytes
from medmeta.federated.plan import FederatedPlan
from medmeta.train.checkpoint import FORMAT, atomic_save
from medmeta.train.logs import jsonable

__all__ = ["CARD", "CARD_FORMAT", "CHECKPOINT", "privacy_card", "write_model_folder"]

logger = logging.getLogger(__name__)

#: The file names and card format of :mod:`medmeta.cli._model` (kept equal by a test).
CARD = "model.json"
CARD_FORMAT = "medmeta.model/1"
CHECKPOINT = "last.pt"


def privacy_card(plan: FederatedPlan) -> dict[str, Any] | None:
    """The card's ``privacy`` block (``None`` without differential privacy)."""
    if not plan.private:
        return None
    import opacus

    from medmeta.federated.privacy import epsilon

    eps = epsilon(plan.dp_noise, plan.sample_rate, plan.rounds, plan.delta)
    return {
        "mechanism": "site-level: each update clipped to L2 norm C at the server, Gaussian "
        "noise N(0, (sigma*C)^2) added to the sum, divided by the sites per round",
        "clip": plan.dp_clip, "noise_multiplier": plan.dp_noise,
        "sample_rate": plan.sample_rate, "rounds": plan.rounds, "delta": plan.delta,
        "epsilon": eps if eps != float("inf") else None,
        "accountant": f"opacus.accountants.RDPAccountant (opacus {opacus.__version__})",
    }  # fmt: skip


def _card(
    plan: FederatedPlan, sites: Sequence[Mapping[str, Any]], history: list[dict[str, Any]],
    engine: str, evaluation: list[dict[str, Any]], command: str | None,
    resumed_after: list[int],
) -> dict[str, Any]:  # fmt: skip
    import flwr

    from medmeta import __version__

    classes = [f"{s['name']}:{c}" for s in sites for c in s.get("classes", [])]
    return {
        "format": CARD_FORMAT, "kind": "trained",
        "algorithm": plan.learner["algorithm"], "hparams": dict(plan.learner["hparams"]),
        "backbone": dict(plan.backbone), "preprocessing": dict(plan.preprocessing),
        "episodes": {"ways": plan.ways, "shots": plan.shots, "queries": plan.queries},
        "training": {
            "data": "federated: " + ", ".join(s["name"] for s in sites), "classes": classes,
            "val_classes": [], "steps": plan.rounds * plan.local_steps,
            "meta_batch": plan.meta_batch, "lr": plan.lr, "seed": plan.seed,
            "best_step": None, "val_accuracy": None, "val_ci95": None,
        },
        "federated": {
            "engine": engine, "flwr_version": flwr.__version__,
            "algorithm": plan.algorithm, "server_lr": plan.server_lr, "rounds": plan.rounds,
            "local_steps": plan.local_steps, "sites_per_round": plan.per_round,
            "sites": [dict(s) for s in sites], "history": history, "evaluation": evaluation,
            "resumed_after": resumed_after,
        },
        "privacy": privacy_card(plan),
        "temperature": None,
        "calibration": None,
        "checkpoint": CHECKPOINT,
        "medmeta_version": __version__,
        "command": command,
    }  # fmt: skip


def write_model_folder(
    out: str | os.PathLike[str],
    plan: FederatedPlan,
    learner: Any,
    *,
    sites: Sequence[Mapping[str, Any]],
    history: list[dict[str, Any]],
    engine: str,
    evaluation: list[dict[str, Any]] | None = None,
    command: str | None = None,
    resumed_after: list[int] | None = None,
) -> dict[str, Any]:
    """Write ``last.pt`` (``learner``'s weights) and ``model.json`` to ``out``; returns
    the card."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"federated_plan": plan.to_dict(), "engine": engine}
    atomic_save(
        {"format": FORMAT, "kind": "last", "step": plan.rounds * plan.local_steps,
         "learner": {"spec": learner.spec(),
                     "class": f"{type(learner).__module__}.{type(learner).__qualname__}",
                     "state_dict": learner.state_dict()},
         "backbone": dict(plan.backbone), "config": json.loads(json.dumps(config)),
         "torch_version": str(torch.__version__)},
        folder / CHECKPOINT,
    )  # fmt: skip
    card = jsonable(_card(plan, sites, history, engine, evaluation or [], command,
                          list(resumed_after or [])))  # fmt: skip
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(folder / CARD, text.encode())
    logger.info("federated model written to %s", folder)
    return card
