"""Run federated meta-learning in Flower's simulation engine (``flwr.simulation``): the
``ServerApp`` in a thread of this process, each site's ``ClientApp`` in Ray actors (one
virtual SuperNode per site), for quick experiments and tests.

Needs ``flwr[simulation]`` (Ray): ``pip install medmeta[federated]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmeta.federated.plan import FederatedPlan
from medmeta.federated.round_state import prepare_output
from medmeta.federated.server_app import EvaluateFn
from medmeta.federated.site import Site

__all__ = ["run_simulation"]

logger = logging.getLogger(__name__)


def _backend_config(workers: int, gpu: bool) -> dict[str, Any]:
    """Ray: ``workers`` actors of one CPU each (sharing one GPU when the sites train on
    CUDA; Ray hides the GPU from actors that ask for none), no dashboard, quiet."""
    init: dict[str, Any] = {"num_cpus": workers, "include_dashboard": False,
                            "logging_level": logging.WARNING, "log_to_driver": True}  # fmt: skip
    if gpu:
        init["num_gpus"] = 1
    return {"client_resources": {"num_cpus": 1, "num_gpus": 1.0 / workers if gpu else 0.0},
            "init_args": init}  # fmt: skip


def run_simulation(
    plan: FederatedPlan,
    sites: Sequence[Site],
    out: str | os.PathLike[str],
    *,
    evaluate: EvaluateFn | None = None,
    workers: int = 1,
    command: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run ``plan`` with ``sites`` (in ``plan.sites`` order or any order; names must match)
    in Flower's simulation engine and write the model folder ``out``; returns its card.

    Args:
        evaluate: called on the global learner before round 1 and after every round
            (``evaluate(round, learner) -> {metric: value}``), recorded in the card.
        workers: Ray actors (CPU cores) running the sites' ClientApps concurrently.
        resume: go on after the last round finished in ``out`` by an earlier start of
            the same plan (:mod:`medmeta.federated.round_state`); ``False``: start over.

    Raises:
        ValueError: ``out`` holds the state of a run with another plan (with ``resume``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = [s.name for s in sites]
    if sorted(names) != sorted(plan.sites):
        raise ValueError(f"the sites {names} do not match the plan's {list(plan.sites)}")
    prepare_output(out, plan, resume)
    try:
        from flwr.simulation import run_simulation as flower_run
    except ImportError as err:  # pragma: no cover - flwr is in the federated extra
        raise ImportError("Flower simulation needs pip install medmeta[federated]") from err
    from medmeta.federated.client_app import make_client_app
    from medmeta.federated.server_app import make_server_app

    ordered = list(sites)
    gpu = any(str(s.device).startswith("cuda") for s in ordered)
    server = make_server_app(plan, Path(out), engine="flower simulation", evaluate=evaluate,
                             command=command)  # fmt: skip
    client = make_client_app(lambda context: ordered[int(context.node_config["partition-id"])])
    folder = Path(out)
    saved = os.environ.get("PYTHONPATH")  # the Ray backend rewrites it for its workers
    try:
        flower_run(server_app=server, client_app=client, num_supernodes=len(ordered),
                   backend_config=_backend_config(min(workers, len(ordered)), gpu))  # type: ignore[arg-type]  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    card = folder / "model.json"
    if not card.is_file():
        raise RuntimeError(f"the simulation ended without writing {card}")
    return json.loads(card.read_text(encoding="utf-8"))
