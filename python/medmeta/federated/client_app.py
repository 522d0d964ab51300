"""The Flower ``ClientApp`` of a site: answers the server's query (who it is, how many
examples) and its train messages (:meth:`Site.update` from the global weights).

:func:`make_client_app` builds one around a function that finds the site from the Flower
``Context`` (a simulation maps ``node_config["partition-id"]`` to an in-memory site);
:data:`app` is the deployment engine's: each ``flower-supernode`` names its site in its
node config (``site``, ``data``, optionally ``classes`` and ``device``; a TOML file works,
see :mod:`medmeta.federated.deployment`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from medmeta.federated import messages
from medmeta.federated.plan import FederatedPlan
from medmeta.federated.site import Site

__all__ = ["app", "make_client_app", "site_from_node_config"]

logger = logging.getLogger(__name__)


def make_client_app(find_site: Callable[[Context], Site]) -> ClientApp:
    """A ``ClientApp`` serving the site ``find_site(context)`` returns."""
    client = ClientApp()

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        site = find_site(context)
        return Message(messages.query_reply(site.describe()), reply_to=msg)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from medmeta.federated.weights import from_record

        site = find_site(context)
        config = msg.content[messages.CONFIG]
        plan = FederatedPlan.from_json(str(config[messages.PLAN]))
        server_round = int(config[messages.ROUND])
        weights = from_record(msg.content[messages.ARRAYS])
        update = site.update(plan, weights, server_round)
        return Message(messages.train_reply(site.name, update), reply_to=msg)

    return client


@functools.lru_cache(maxsize=8)
def _site(name: str, data: str, classes: str | None, device: str) -> Site:
    return Site(name=name, data=data, classes=classes, device=device)


def site_from_node_config(context: Context) -> Site:
    """The site a SuperNode serves, from its node config (``site`` and ``data`` required)."""
    config = context.node_config
    missing = [k for k in ("site", "data") if k not in config]
    if missing:
        raise ValueError(
            f"the SuperNode's --node-config lacks {missing}: start it with --node-config "
            '\'site="NAME" data="DATA"\' (or a TOML file with these keys)'
        )
    classes: Any = config.get("classes")
    return _site(str(config["site"]), str(config["data"]),
                 None if classes in (None, "") else str(classes), str(config.get("device", "cpu")))  # fmt: skip


#: The deployment engine's ClientApp (``medmeta.federated.client_app:app``).
app = make_client_app(site_from_node_config)
