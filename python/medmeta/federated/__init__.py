"""Federated meta-learning on Flower (``pip install medmeta[federated]``): each site keeps
its data and runs medmeta's episodic meta-training locally; only weight updates leave it.
The server combines them with FedAvg or a Reptile-style step (Chen et al. 2018; Jiang et al.
2019) on Flower's ``FedAvg`` strategy, leaves out broken updates and absent sites, and can
clip and noise the updates for site-level differential privacy with the budget from
Opacus's RDP accountant. Runs in Flower's simulation engine (:func:`run_simulation`) or its
deployment engine (:func:`run_deployment`: a SuperLink and one SuperNode per site), and
writes an ordinary medmeta model folder.

Submodules import Flower; this package imports them lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FederatedPlan",
    "MetaFedStrategy",
    "Site",
    "SiteUpdate",
    "epsilon",
    "make_plan",
    "run_deployment",
    "run_simulation",
    "site_from_spec",
]

_WHERE = {
    "FederatedPlan": "plan",
    "MetaFedStrategy": "strategy",
    "Site": "site",
    "SiteUpdate": "site",
    "site_from_spec": "site",
    "epsilon": "privacy",
    "make_plan": "planning",
    "run_deployment": "deployment",
    "run_simulation": "simulation",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
