"""Build a :class:`FederatedPlan` from a method name and a backbone description: the learner
is built once (filling in the hyper-parameters that depend on the input shape), and its
``spec()`` is what the server and the sites rebuild it from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medmeta.federated.plan import FederatedPlan

__all__ = ["learner_spec", "make_plan"]


def learner_spec(
    learner: str,
    backbone: Mapping[str, Any],
    ways: int,
    params: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """``spec()`` of the method ``learner`` built on ``backbone`` (``{"name", "input_shape",
    "kwargs"}``) for ``ways``-way episodes, with ``params`` as hyper-parameters."""
    from medmeta import algorithms
    from medmeta.nn import make_backbone

    net = make_backbone(
        backbone["name"], backbone["input_shape"], **dict(backbone.get("kwargs", {}))
    )
    built = algorithms.build(learner, net, ways, input_shape=backbone["input_shape"],
                             num_classes=num_classes, **dict(params or {}))  # fmt: skip
    return built.spec()


def make_plan(
    sites: Sequence[str],
    *,
    learner: str,
    backbone: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    ways: int,
    params: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> FederatedPlan:
    """A plan for the method ``learner`` (see :func:`learner_spec`); ``options`` are the
    other :class:`FederatedPlan` fields (``rounds``, ``local_steps``, ``shots``,
    ``algorithm`` of the server, ...)."""
    spec = learner_spec(learner, backbone, ways, params, num_classes)
    return FederatedPlan(sites=tuple(sites), learner=spec, backbone=dict(backbone),
                         preprocessing=dict(preprocessing), ways=ways, **options)  # fmt: skip
