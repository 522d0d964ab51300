"""The server strategy: FedAvg of the meta-learned initialisation with a Reptile-style
server step, on Flower's ``FedAvg`` (Flower samples the sites, sends the messages and
runs the rounds; this class decides who is sampled and how the replies are combined).

Each round the sampled sites start from the global weights ``theta``, meta-train locally
and send back ``delta_i = theta_i - theta`` with their number of examples ``n_i``. The
server moves the initialisation towards the sites' solutions:

    theta <- theta + eta_r * sum_i n_i delta_i / sum_i n_i

With ``eta_r = 1`` (``algorithm="fedavg"``) this is FedAvg of the meta-learned
initialisation (McMahan et al. 2017); with ``algorithm="reptile"`` it is Reptile's outer
step with the sites as tasks, ``eta_r = server_lr * (1 - (r - 1) / R)`` annealed linearly
as in Nichol et al. 2018 (:meth:`FederatedPlan.server_step`): the federated meta-learning
of Chen et al. 2018 ("Federated meta-learning with fast convergence and efficient
communication") and Jiang et al. 2019 ("Improving federated learning personalization via
model agnostic meta learning"), who show that FedAvg itself is such a Reptile step.

Updates with NaN/inf, the wrong keys or shapes, and sites that fail or drop out are left
out (:mod:`medmeta.federated.screening`). With differential privacy (``plan.dp_clip``)
each update is clipped to L2 norm ``C``, the clipped updates are summed with equal weights,
Gaussian noise ``N(0, (sigma C)^2)`` seeded per round is added, and the sum is divided by
the number of sites sampled per round (:mod:`medmeta.federated.privacy`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from medmeta.federated import messages, privacy
from medmeta.federated.plan import FederatedPlan
from medmeta.federated.screening import Accepted, screen
from medmeta.federated.weights import Weights, floor_variances, from_record, l2_norm, to_record

__all__ = ["MetaFedStrategy"]

logger = logging.getLogger(__name__)


class MetaFedStrategy(FedAvg):
    """Federated meta-learning on Flower's FedAvg (see the module docstring).

    Args:
        plan: the run's :class:`FederatedPlan`.
        names: node id -> site name of the connected sites (the server's query).
        rounds_done: rounds finished before this start (a resumed run): Flower's round
            ``r`` is the run's round ``rounds_done + r`` (seeds, sampling, server step).
        history: the history of those rounds.

    Attributes:
        history: one dict per round: ``round``, ``sites`` (aggregated), ``left_out``
            (``[{"site", "reason"}]``), ``loss`` and ``accuracy`` (the sites' local
            training, weighted like the update), ``update_norm`` (L2 norm of the server
            step), ``server_step``, ``site_norms`` (without differential privacy) and, with
            it, ``noise_std``. With differential privacy the history (part of the model
            card, released with the model) holds no per-site statistic and no training
            loss or accuracy: only the noised aggregate is private.
    """

    def __init__(
        self, plan: FederatedPlan, names: Mapping[int, str], rounds_done: int = 0,
        history: list[dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            fraction_train=plan.sample_rate, fraction_evaluate=0.0,
            min_train_nodes=plan.per_round, min_evaluate_nodes=0,
            min_available_nodes=max(1, min(plan.per_round, len(names))),
            weighted_by_key=messages.WEIGHT, arrayrecord_key=messages.ARRAYS,
            configrecord_key=messages.CONFIG,
        )  # fmt: skip
        self.plan = plan
        self.names = dict(names)
        self.rounds_done = rounds_done
        self.history: list[dict[str, Any]] = list(history or [])
        self._global: Weights = {}
        self._sent: list[int] = []

    def summary(self) -> None:
        logger.info(
            "federated meta-learning: %s, first server step %g, %d of %d sites per round, "
            "%d local steps%s", self.plan.algorithm, self.plan.server_step(1), self.plan.per_round,
            len(self.plan.sites), self.plan.local_steps,
            f", DP clip {self.plan.dp_clip:g} noise {self.plan.dp_noise:g}" if self.plan.private else "",
        )  # fmt: skip
        super().summary()

    # -- sampling and messages -------------------------------------------------------
    def sample(self, server_round: int, node_ids: Iterable[int]) -> list[int]:
        """The nodes trained in ``server_round``: ``plan.per_round`` of the connected
        sites, drawn with a generator seeded by (seed, round) over the sites in name order
        (so the draw does not depend on Flower's random node ids)."""
        known = sorted((n for n in node_ids if n in self.names), key=lambda n: self.names[n])
        k = min(self.plan.per_round, len(known))
        if k < self.plan.per_round:
            logger.warning("round %d: only %d of the %d sites to sample are connected",
                           server_round, len(known), self.plan.per_round)  # fmt: skip
        rng = np.random.default_rng([self.plan.seed, server_round, 0x5EED])
        pick = sorted(rng.choice(len(known), size=k, replace=False).tolist()) if k else []
        return [known[i] for i in pick]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Train messages to the sampled sites: the global weights and the plan."""
        server_round += self.rounds_done
        self._global = from_record(arrays)
        self._sent = self.sample(server_round, grid.get_node_ids())
        logger.info("round %d: training at %s", server_round,
                    ", ".join(self.names[n] for n in self._sent) or "no site")  # fmt: skip
        config[messages.ROUND] = server_round
        config[messages.PLAN] = self.plan.to_json()
        record = RecordDict({messages.ARRAYS: arrays, messages.CONFIG: config})
        return self._construct_messages(record, self._sent, MessageType.TRAIN)

    # -- aggregation ------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global weights from the round's replies (the screened, weighted,
        optionally clipped and noised mean of the updates, times the round's server step)."""
        server_round += self.rounds_done
        shapes = {k: v.shape for k, v in self._global.items()}
        accepted, rejected = screen(replies, shapes, self.names, self._sent, server_round)
        accepted.sort(key=lambda a: self.plan.sites.index(a.site))  # a fixed summation order
        entry: dict[str, Any] = {
            "round": server_round, "sites": [a.site for a in accepted],
            "left_out": [{"site": r.site, "reason": r.reason} for r in rejected],
        }  # fmt: skip
        if not accepted:
            logger.warning("round %d: no usable update; the global model is unchanged",
                           server_round)  # fmt: skip
            self.history.append({**entry, "loss": None, "accuracy": None, "update_norm": 0.0})
            return to_record(self._global), MetricRecord({"sites": 0})
        step = self._private_mean(accepted, server_round, entry) if self.plan.private else (
            self._weighted_mean(accepted, entry))  # fmt: skip
        eta = self.plan.server_step(server_round)
        new = floor_variances({k: g + eta * step[k] for k, g in self._global.items()})
        weights = np.array([a.weight for a in accepted])
        if self.plan.private:  # the private aggregate treats every site alike
            weights = np.ones_like(weights)
        metrics = {name: float(np.average([a.metrics.get(name, np.nan) for a in accepted],
                                          weights=weights)) for name in ("loss", "accuracy")}  # fmt: skip
        entry.update(metrics, server_step=eta, update_norm=eta * l2_norm(step))
        if self.plan.private:  # the card is released with the model: no site statistic in it
            entry.update(loss=None, accuracy=None)
        self.history.append(entry)
        logger.info("round %d: %d site(s) aggregated, %d left out; local loss %.4f, "
                    "accuracy %.3f", server_round, len(accepted), len(rejected),
                    metrics["loss"], metrics["accuracy"])  # fmt: skip
        return to_record(new), MetricRecord({**metrics, "sites": len(accepted)})

    def _weighted_mean(self, accepted: list[Accepted], entry: dict[str, Any]) -> Weights:
        """``sum_i n_i delta_i / sum_i n_i`` (float64)."""
        total = sum(a.weight for a in accepted)
        entry["site_norms"] = {a.site: l2_norm(a.delta) for a in accepted}
        return {k: sum(a.weight * a.delta[k] for a in accepted) / total for k in self._global}

    def _private_mean(
        self, accepted: list[Accepted], server_round: int, entry: dict[str, Any]
    ) -> Weights:
        """``(sum_i clip(delta_i, C) + N(0, (sigma C)^2)) / sites per round``."""
        clip, sigma = float(self.plan.dp_clip), float(self.plan.dp_noise)  # type: ignore[arg-type]
        clipped = [privacy.clip(a.delta, clip) for a in accepted]
        logger.info("round %d: %d of %d update(s) clipped to norm %g", server_round,
                    sum(norm > clip for _, norm in clipped), len(clipped), clip)  # fmt: skip
        entry["noise_std"] = sigma * clip
        total = {k: sum(c[k] for c, _ in clipped) for k in self._global}
        rng = np.random.default_rng([self.plan.seed, server_round, 0xD9])
        noisy = privacy.add_noise(total, sigma * clip, rng) if sigma > 0 else total
        return {k: v / self.plan.per_round for k, v in noisy.items()}
