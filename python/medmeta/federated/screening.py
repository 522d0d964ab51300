"""Which site updates enter the aggregate: a reply that is an error (the site failed or
dropped out), is missing (no reply in time), or holds NaN/inf values, arrays of the wrong
keys or shapes, or a bad weight, is left out, so the round continues with the others; the
site and the reason are named in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmeta.federated import messages
from medmeta.federated.weights import Weights

__all__ = ["Accepted", "Rejected", "screen"]

logger = logging.getLogger(__name__)


@dataclass
class Accepted:
    """A site update that passed the checks: ``delta`` ``{key: float64 array}`` with the
    global weights' keys and shapes, all finite; ``weight`` > 0."""

    site: str
    node_id: int
    delta: Weights
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Rejected:
    """A site left out of a round, and why."""

    site: str
    node_id: int
    reason: str


def _problem(content: Any, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a reply's content cannot be aggregated (``None`` when it can)."""
    if messages.ARRAYS not in content.array_records:
        return f"no {messages.ARRAYS!r} ArrayRecord in the reply"
    if messages.METRICS not in content.metric_records:
        return f"no {messages.METRICS!r} MetricRecord in the reply"
    record = content.array_records[messages.ARRAYS]
    missing, extra = sorted(set(shapes) - set(record)), sorted(set(record) - set(shapes))
    if missing or extra:
        return f"wrong arrays: missing {missing[:5]}, unexpected {extra[:5]}"
    for key, expected in shapes.items():
        got = tuple(int(s) for s in record[key].shape)
        if got != tuple(expected):
            return f"wrong shape: {key} is {list(got)}, expected {list(expected)}"
    weight = content.metric_records[messages.METRICS].get(messages.WEIGHT)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not (math.isfinite(weight) and weight > 0)
    ):
        return f"{messages.WEIGHT} must be a finite number > 0, got {weight!r}"
    return None


def _short(text: str | None, limit: int = 400) -> str:
    """An error reason on one line, at most ``limit`` characters (tracebacks end with
    the exception, so the end is kept)."""
    flat = " ".join(str(text or "unknown error").split())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def _non_finite(delta: Weights) -> str | None:
    for key, value in delta.items():
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            return f"{bad} NaN/inf value(s) in {key}"
    return None


def screen(
    replies: Iterable[Any],
    shapes: Mapping[str, tuple[int, ...]],
    names: Mapping[int, str],
    sent: Collection[int],
    server_round: int,
) -> tuple[list[Accepted], list[Rejected]]:
    """Split a round's train ``replies`` (Flower ``Message`` s) into the updates to
    aggregate and the sites left out.

    Args:
        shapes: the global weights' ``{key: shape}``; an update must match it exactly.
        names: node id -> site name (from the server's query); unknown nodes are named by id.
        sent: the node ids the round's train messages went to (those without a reply are
            left out as dropped out).
        server_round: for the log.
    """
    from medmeta.federated.weights import from_record

    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    seen: set[int] = set()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        seen.add(node)
        site = names.get(node, f"node {node}")
        if msg.has_error():
            rejected.append(Rejected(site, node, f"failed: {_short(msg.error.reason)}"))
            continue
        reason = _problem(msg.content, shapes)
        delta: Weights = {}
        if reason is None:
            delta = from_record(msg.content.array_records[messages.ARRAYS])
            reason = _non_finite(delta)
        if reason is not None:
            rejected.append(Rejected(site, node, reason))
            continue
        metrics = {k: float(v) for k, v in msg.content.metric_records[messages.METRICS].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
        accepted.append(Accepted(site, node, delta, metrics[messages.WEIGHT], metrics))
    for node in sorted(set(sent) - seen):
        rejected.append(Rejected(names.get(node, f"node {node}"), node,
                                 "no reply (dropped out or timed out)"))  # fmt: skip
    for r in rejected:
        logger.warning("round %d: left out site %s: %s", server_round, r.site, r.reason)
    return accepted, rejected
