"""The plan of a federated run: everything the server and the sites agree on before round 1.

A :class:`FederatedPlan` is plain data (JSON): the server sends it to every site in the
configuration of each training message, so a site needs nothing but its own data and the
plan (in the deployment engine, a SuperNode knows only its site name and data location).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["ALGORITHMS", "FederatedPlan"]

#: Server updates: ``fedavg`` replaces the global weights by the sites' weighted mean
#: (a server step of 1); ``reptile`` moves them a step towards it that starts at
#: ``server_lr`` and is annealed linearly over the rounds (Nichol et al. 2018).
ALGORITHMS = ("fedavg", "reptile")


def _positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number > 0
    (``>= 0`` with ``zero``; an int with ``integer``)."""
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        what = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {what} {'>= 0' if zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class FederatedPlan:
    """What a federated meta-learning run does.

    Attributes:
        sites: the site names, in a fixed order (sampling and the card follow it).
        rounds: federated rounds ``R``.
        local_steps: meta-updates each site runs per round (:func:`medmeta.train.meta_fit`).
        learner: the learner's ``spec()`` (``{"algorithm", "ways", "hparams"}``).
        backbone: the backbone description (``{"name", "input_shape", "kwargs"}``).
        preprocessing: the :class:`medmeta.edge.preprocess.Preprocessing` dict every site
            applies to its raw data.
        ways, shots, queries, meta_batch, lr: the sites' episodes and Adam learning rate.
        algorithm: ``"fedavg"`` or ``"reptile"`` (see :data:`ALGORITHMS`).
        server_lr: the first server step of ``reptile`` (``fedavg``: 1, constant); see
            :meth:`server_step`.
        sites_per_round: sites sampled per round (``None``: all of them).
        seed: seeds the initialisation, the sites' episodes, the sampling and the noise.
        dp_clip: the L2 bound ``C`` on each site's update (``None``: no differential privacy).
        dp_noise: the noise multiplier ``sigma`` (noise standard deviation ``sigma * C`` on
            the sum of the clipped updates).
        delta: the ``delta`` at which the privacy budget ``epsilon`` is reported.
        round_timeout: seconds the server waits for the sites' replies in a round.
    """

    sites: tuple[str, ...]
    rounds: int
    local_steps: int
    learner: Mapping[str, Any]
    backbone: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    ways: int
    shots: int
    queries: int
    meta_batch: int = 1
    lr: float = 1e-3
    algorithm: str = "reptile"
    server_lr: float = 1.0
    sites_per_round: int | None = None
    seed: int = 0
    dp_clip: float | None = None
    dp_noise: float = 0.0
    delta: float = 1e-5
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(str(s) for s in self.sites))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if len(self.sites) < 1 or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites must be distinct names, at least one, got {self.sites}")
        for name in ("rounds", "local_steps", "ways", "shots", "queries", "meta_batch"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("lr", "server_lr", "round_timeout"):
            _positive(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "fedavg" and self.server_lr != 1.0:
            raise ValueError(
                f"server_lr {self.server_lr}: fedavg takes the sites' mean (a server step of "
                "1); use algorithm='reptile' for another server step"
            )
        if self.sites_per_round is not None:
            _positive("sites_per_round", self.sites_per_round, integer=True)
            if self.sites_per_round > len(self.sites):
                raise ValueError(
                    f"sites_per_round {self.sites_per_round} is more than the "
                    f"{len(self.sites)} sites"
                )
        if self.dp_clip is not None:
            _positive("dp_clip", self.dp_clip)
            _positive("dp_noise", self.dp_noise, zero=True)
            _positive("delta", self.delta)
            if self.delta >= 1:
                raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        elif self.dp_noise:
            raise ValueError("dp_noise needs dp_clip (the noise is sigma * C)")
        for name in ("learner", "backbone", "preprocessing"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name))}")
        for key in ("algorithm", "ways", "hparams"):
            if key not in self.learner:
                raise ValueError(f"learner must hold {key!r} (a learner's spec()), got "
                                 f"{sorted(self.learner)}")  # fmt: skip

    # -- derived ---------------------------------------------------------------------
    @property
    def per_round(self) -> int:
        """Sites sampled per round."""
        return len(self.sites) if self.sites_per_round is None else self.sites_per_round

    @property
    def sample_rate(self) -> float:
        """The share of the sites sampled per round (the accountant's ``q``)."""
        return self.per_round / len(self.sites)

    @property
    def private(self) -> bool:
        """Whether updates are clipped and noised (differential privacy)."""
        return self.dp_clip is not None

    def server_step(self, server_round: int) -> float:
        """The server step of ``server_round`` (1-based): 1 for ``fedavg``; for ``reptile``
        ``server_lr * (1 - (round - 1) / rounds)``, Reptile's outer step size annealed
        linearly (Nichol et al. 2018, "On first-order meta-learning algorithms")."""
        if self.algorithm == "fedavg":
            return 1.0
        return self.server_lr * (1.0 - (server_round - 1) / self.rounds)

    def site_seed(self, site: str, server_round: int) -> int:
        """The seed of ``site``'s local training in ``server_round``: fixed per (run seed,
        site, round) and distinct across them."""
        key = zlib.crc32(site.encode("utf-8"))
        return int(np.random.SeedSequence([self.seed, key, server_round]).generate_state(1)[0])

    # -- plain data ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``from_dict`` inverts it)."""
        out = asdict(self)
        out["sites"] = list(self.sites)
        return json.loads(json.dumps(out))  # plain lists and dicts only

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedPlan:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown federated plan fields {unknown}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FederatedPlan:
        return cls.from_dict(json.loads(text))

    def with_sites(self, sites: Sequence[str]) -> FederatedPlan:
        """The same plan for other site names."""
        return FederatedPlan.from_dict({**self.to_dict(), "sites": list(sites)})
