"""What the server and the sites send each other, as Flower ``RecordDict`` s.

* query (server -> site, before round 1): nothing; the reply's ``ConfigRecord`` ``"site"``
  holds the site's ``name``, its number of ``examples`` and its ``classes`` (names only).
* train (server -> site): ``"arrays"``, the global weights (float32 ``ArrayRecord``), and
  ``"config"`` with ``"server-round"`` and ``"medmeta-plan"`` (the :class:`FederatedPlan` as
  JSON). The reply holds ``"arrays"``, the site's weight change (same keys and shapes),
  ``"metrics"`` (``num-examples``, the FedAvg weight; ``episodes``; ``loss``;
  ``accuracy``) and ``"site"`` (its ``name``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "PLAN",
    "ROUND",
    "SITE",
    "WEIGHT",
    "query_reply",
    "train_reply",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
PLAN = "medmeta-plan"
ROUND = "server-round"
#: The MetricRecord entry FedAvg weights by.
WEIGHT = "num-examples"


def train_reply(name: str, update: Any) -> Any:
    """The content of a site's reply to a train message (``update``: a
    :class:`~medmeta.federated.site.SiteUpdate`)."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from medmeta.federated.weights import to_record

    metrics = MetricRecord({WEIGHT: int(update.examples), "episodes": int(update.episodes),
                            "loss": float(update.loss), "accuracy": float(update.accuracy)})  # fmt: skip
    return RecordDict(
        {ARRAYS: to_record(update.delta), METRICS: metrics, SITE: ConfigRecord({"name": name})}
    )


def query_reply(description: dict[str, Any]) -> Any:
    """The content of a site's reply to the query message."""
    from flwr.app import ConfigRecord, RecordDict

    site = ConfigRecord({"name": str(description["site"]),
                         "examples": int(description["examples"]),
                         "classes": [str(c) for c in description["classes"]]})  # fmt: skip
    return RecordDict({SITE: site})
