"""A site (a hospital, a Flower client): its data never leaves it; it receives the global
weights, runs medmeta's own episodic meta-training on its data for a few steps and returns
the weight change.

Local training is :func:`medmeta.train.meta_fit` from the global weights for
``plan.local_steps`` steps, seeded per (run seed, site, round) (:meth:`FederatedPlan.site_seed`),
with a fresh Adam optimiser each round, as in federated meta-learning where each client runs
the inner meta-learner on its own tasks and the server aggregates the results (Chen et al.
2018, "Federated meta-learning with fast convergence and efficient communication").
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmeta.federated.plan import FederatedPlan
from medmeta.federated.weights import Weights

__all__ = ["Site", "SiteUpdate", "site_from_spec"]

logger = logging.getLogger(__name__)

#: Preprocessed datasets kept per process (a simulation actor or SuperNode serves the same
#: site round after round): (site fingerprint, preprocessing) -> ArrayDataset.
_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_CACHE_SIZE = 8


@dataclass
class SiteUpdate:
    """What a site sends back after a round.

    Attributes:
        delta: ``{key: float64 array}``, the local weights minus the global weights it
            started from (same keys and shapes as the global weights).
        examples: the site's number of examples (the FedAvg weight).
        episodes: episodes trained on this round (``local_steps * meta_batch``).
        loss, accuracy: the mean training loss and query accuracy over the local steps.
    """

    delta: Weights
    examples: int
    episodes: int
    loss: float
    accuracy: float


@dataclass
class Site:
    """One site's data and local training.

    Args:
        name: the site's name (in the logs, the card and the seeds).
        data: anything ``medmeta train --data`` takes (an embedded dataset name, an .npz, a
            folder; loaded with :func:`medmeta.cli._data.load_dataset` at the site) or a raw
            :class:`~medmeta.data.ArrayDataset` (not yet preprocessed).
        classes: a class selection of ``data`` (``--classes`` syntax), or ``None`` for all.
        device: where the site trains.
    """

    name: str
    data: Any
    classes: str | None = None
    device: str = "cpu"
    _fingerprint: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a site needs a non-empty name, got {self.name!r}")
        if not self._fingerprint:
            self._fingerprint = self._digest()

    def _digest(self) -> str:
        h = hashlib.sha1(f"{self.name}\0{self.classes}".encode())
        if isinstance(self.data, str):
            h.update(self.data.encode())
        else:  # in-memory data: identify it by content (survives pickling to a worker)
            h.update(np.ascontiguousarray(np.asarray(self.data.x)).tobytes())
            h.update(np.asarray(self.data.labels).tobytes())
        return h.hexdigest()

    def raw(self) -> Any:
        """The site's raw examples (the class selection applied)."""
        from medmeta.cli import _data

        ds = _data.load_dataset(self.data) if isinstance(self.data, str) else self.data
        return _data.select_classes(ds, self.classes, f"site {self.name} classes")

    def dataset(self, preprocessing: dict[str, Any]) -> Any:
        """The site's examples run through the plan's preprocessing (cached per process)."""
        import json

        from medmeta.cli._setup import preprocess_dataset
        from medmeta.edge.preprocess import Preprocessing

        key = (self._fingerprint, json.dumps(preprocessing, sort_keys=True))
        if key not in _CACHE:
            _CACHE[key] = preprocess_dataset(self.raw(), Preprocessing.from_dict(preprocessing))
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return _CACHE[key]

    def describe(self, preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{"site", "examples", "classes"}``: what the site tells the server (counts and
        class names, no examples)."""
        from medmeta.cli import _data

        ds = self.dataset(preprocessing) if preprocessing is not None else self.raw()
        present = _data.present_classes(ds)
        return {"site": self.name, "examples": len(ds),
                "classes": [str(ds.class_names[c]) for c in present]}  # fmt: skip

    def update(self, plan: FederatedPlan, weights: Weights, server_round: int) -> SiteUpdate:
        """Meta-train from the global ``weights`` for ``plan.local_steps`` steps and return
        the weight change (``{key: [shape of the key]}`` float64)."""
        from medmeta.federated.weights import build_learner, merge_state, to_numpy
        from medmeta.train import meta_fit

        ds = self.dataset(dict(plan.preprocessing))
        learner = build_learner(plan.learner, plan.backbone)
        learner.load_state_dict(merge_state(learner.state_dict(), weights))
        fit = meta_fit(  # seeds and restores the global RNGs itself
            learner, ds, None, ways=plan.ways, shots=plan.shots, queries=plan.queries,
            steps=plan.local_steps, meta_batch=plan.meta_batch, lr=plan.lr,
            seed=plan.site_seed(self.name, server_round), device=self.device, progress=False,
            log_every=plan.local_steps,
        )  # fmt: skip
        local = to_numpy(learner.state_dict(), list(weights))
        delta = {k: local[k] - np.asarray(weights[k], dtype=np.float64) for k in weights}
        row = fit.history[-1]
        logger.info("site %s, round %d: %d local steps, loss %.4f, accuracy %.3f",
                    self.name, server_round, plan.local_steps, row["loss"], row["accuracy"])  # fmt: skip
        return SiteUpdate(delta, len(ds), plan.local_steps * plan.meta_batch,
                          float(row["loss"]), float(row["accuracy"]))  # fmt: skip


def site_from_spec(text: str) -> Site:
    """A site from ``NAME=DATA`` or ``DATA`` (named after the data: an embedded name, or a
    file or folder's name without suffix), with an optional ``@CLASSES`` selection whose
    items are joined by ``+`` (commas separate sites on the command line), e.g.
    ``blood=pbc_blood@0-3`` or ``pbc_blood@basophil+eosinophil+platelet``."""
    from pathlib import Path

    name, sep, data = text.partition("=")
    if not sep:
        name, data = "", text
    data, at, classes = data.partition("@")
    data = data.strip()
    if not data:
        raise ValueError(f"site {text!r}: no data (expected NAME=DATA or DATA)")
    name = name.strip() or Path(data.rstrip("/")).stem or data
    selection = classes.strip().replace("+", ",") if at else ""
    return Site(name=name, data=data, classes=selection or None)
