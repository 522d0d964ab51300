"""Stand-ins for the federated tests: Flower messages built outside a running federation,
a grid that only lists nodes, and sites that misbehave (NaN, wrong shapes, failure in a
given round). Importable as ``federated.fakes`` here and in Ray's simulation workers (they
get this process's ``sys.path``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medmeta.federated.plan import FederatedPlan
from medmeta.federated.site import Site, SiteUpdate

#: A learner spec and preprocessing the plan validation accepts (the aggregation tests never
#: build the learner).
TOY = {
    "learner": {"algorithm": "protonet", "ways": 2, "hparams": {}},
    "backbone": {"name": "mlp", "input_shape": [4], "kwargs": {"hidden": [3]}},
    "preprocessing": {"kind": "vector"},
}


def toy_plan(sites: tuple[str, ...] = ("a", "b", "c"), **options: Any) -> FederatedPlan:
    """A plan over ``sites`` for the strategy tests (``options`` override fields)."""
    base = {"rounds": 4, "local_steps": 2, "ways": 2, "shots": 1, "queries": 1, **TOY}
    return FederatedPlan(sites=sites, **{**base, **options})


class Grid:
    """The part of a Flower ``Grid`` the strategy's ``configure_train`` uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def reply(instruction: Any, delta: Mapping[str, np.ndarray] | None, examples: float = 10,
          **metrics: float) -> Any:  # fmt: skip
    """A site's reply to a train ``instruction``: ``delta`` as the update (``None``: an
    error reply, the site failed)."""
    from flwr.app import Error, Message

    from medmeta.federated import messages

    if delta is None:
        return Message(Error(code=1, reason="site crashed: out of memory"), reply_to=instruction)
    update = SiteUpdate({k: np.asarray(v) for k, v in delta.items()}, 0, 0,
                        metrics.get("loss", 1.0), metrics.get("accuracy", 0.5))  # fmt: skip
    content = messages.train_reply("ignored", update)
    content["metrics"][messages.WEIGHT] = examples
    return Message(content, reply_to=instruction)


def _zero_update(weights: Mapping[str, np.ndarray]) -> SiteUpdate:
    return SiteUpdate({k: np.zeros_like(v) for k, v in weights.items()}, 100, 1, 1.0, 0.5)


class NaNSite(Site):
    """Sends an update with NaN in its first array (a diverged local training)."""

    def update(self, plan: FederatedPlan, weights: Any, server_round: int) -> SiteUpdate:
        out = _zero_update(weights)
        key = next(iter(out.delta))
        out.delta[key][...] = np.nan
        return out


class WrongShapeSite(Site):
    """Sends its first array with a row too many (a model of another architecture)."""

    def update(self, plan: FederatedPlan, weights: Any, server_round: int) -> SiteUpdate:
        out = _zero_update(weights)
        key = next(k for k, v in out.delta.items() if np.ndim(v) >= 1)
        value = out.delta[key]
        out.delta[key] = np.concatenate([value, value[:1]], axis=0)
        return out


class DropsOutSite(Site):
    """Trains normally until ``round``, then fails (the process dies mid-round)."""

    fail_from: int = 2

    def update(self, plan: FederatedPlan, weights: Any, server_round: int) -> SiteUpdate:
        if server_round >= self.fail_from:
            raise ConnectionError(f"site {self.name} lost its connection in round {server_round}")
        return super().update(plan, weights, server_round)


def written_out(plan: FederatedPlan, sites: list[Site]) -> dict[str, np.ndarray]:
    """The global weights after ``plan.rounds`` rounds, computed here without Flower: every
    site trains each round from the global weights, their updates travel as float32, the
    server takes the weighted mean and the plan's server step (no differential privacy)."""
    from medmeta.federated.server_app import initial_learner
    from medmeta.federated.weights import federated_keys, floor_variances, to_numpy

    state = initial_learner(plan).state_dict()
    theta = to_numpy(state, federated_keys(state))
    for r in range(1, plan.rounds + 1):
        updates = [s.update(plan, theta, r) for s in sites]
        total = sum(u.examples for u in updates)
        step = {k: sum(u.examples * u.delta[k].astype(np.float32).astype(np.float64) for u in updates) / total
                for k in theta}  # fmt: skip
        eta = plan.server_step(r)
        theta = floor_variances({k: (theta[k] + eta * step[k]).astype(np.float32).astype(np.float64)
                                 for k in theta})  # fmt: skip
    return theta
