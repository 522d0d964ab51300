"""The Flower ``ServerApp``: asks the connected sites who they are, runs the rounds with
:class:`~medmeta.federated.strategy.MetaFedStrategy` and writes the model folder.

:func:`make_server_app` builds one for a plan held in memory (the simulation engine);
:data:`app` is the deployment engine's, which reads its run file (plan, output folder,
command) from the run config key ``medmeta-run`` (see :mod:`medmeta.federated.deployment`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from medmeta.federated import messages
from medmeta.federated.model_folder import write_model_folder
from medmeta.federated.plan import FederatedPlan
from medmeta.federated.round_state import RoundState, load_round_state, save_round_state
from medmeta.federated.strategy import MetaFedStrategy
from medmeta.federated.weights import (
    build_learner,
    federated_keys,
    from_record,
    merge_state,
    to_numpy,
    to_record,
)

__all__ = ["RUN_KEY", "app", "discover_sites", "initial_learner", "make_server_app", "run_server"]

logger = logging.getLogger(__name__)

#: The run config key holding the path of the deployment run file.
RUN_KEY = "medmeta-run"

#: ``evaluate(server_round, learner) -> {metric: value} | None``, run on the global model
#: before round 1 (round 0) and after every round (e.g. few-shot accuracy on held-out data).
EvaluateFn = Callable[[int, Any], "Mapping[str, float] | None"]


def initial_learner(plan: FederatedPlan) -> Any:
    """The plan's learner initialised from ``plan.seed`` (the global model of round 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(plan.seed)
        return build_learner(plan.learner, plan.backbone)


def discover_sites(grid: Grid, expected: int, timeout: float) -> dict[int, dict[str, Any]]:
    """``{node id: {"name", "examples", "classes"}}`` of the connected sites: waits up to
    ``timeout`` seconds for ``expected`` nodes, then sends each a query message. A site
    that fails to answer is left out (logged); two sites of one name are an error."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    if not nodes:
        raise RuntimeError(f"no site connected within {timeout:g} s (expected {expected})")
    if len(nodes) < expected:
        logger.warning("%d of %d sites connected within %g s; going on with them",
                       len(nodes), expected, timeout)  # fmt: skip
    queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    found: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            logger.warning("node %d left out: it failed to describe its site (%s)",
                           node, " ".join(str(reply.error.reason).split())[-300:])  # fmt: skip
            continue
        info = reply.content[messages.SITE]
        found[node] = {"name": str(info["name"]), "examples": int(info["examples"]),
                       "classes": [str(c) for c in info["classes"]]}  # fmt: skip
    names = [s["name"] for s in found.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"two sites share a name: {sorted(names)}")
    logger.info("sites: %s", ", ".join(f"{s['name']} ({s['examples']} examples)"
                                       for s in found.values()))  # fmt: skip
    return found


class _AfterRound:
    """Flower's server-side evaluation hook (``evaluate_fn``, called before the first round
    and after every round with the global weights): evaluates the global model with
    ``evaluate`` and, after a round, saves the run's state (:mod:`.round_state`). Flower's
    round ``r`` is the run's round ``done + r`` in a resumed run."""

    def __init__(
        self, plan: FederatedPlan, out: str | Path, learner: Any, evaluate: EvaluateFn | None,
        resumed: RoundState | None,
    ) -> None:  # fmt: skip
        self.plan, self.out, self.learner, self.evaluate = plan, out, learner, evaluate
        state = learner.state_dict()
        self.start = resumed.weights if resumed else to_numpy(state, federated_keys(state))
        self.done = resumed.round if resumed else 0
        self.history = list(resumed.history) if resumed else []
        self.evaluation: list[dict[str, Any]] = list(resumed.evaluation) if resumed else []
        self.resumed_after = [*resumed.resumed_after, self.done] if resumed else []
        self.strategy: MetaFedStrategy | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and self.done:  # evaluated before the run stopped
            return None
        weights, now = from_record(arrays), self.done + server_round
        scores = None
        if self.evaluate is not None:
            self.learner.load_state_dict(merge_state(self.learner.state_dict(), weights))
            scores = self.evaluate(now, self.learner)
        if scores:
            self.evaluation.append({"round": now, **{k: float(v) for k, v in scores.items()}})
        if server_round and self.strategy is not None:
            save_round_state(self.out, self.plan, RoundState(
                now, weights, self.strategy.history, self.evaluation, self.resumed_after))  # fmt: skip
        return MetricRecord({k: float(v) for k, v in scores.items()}) if scores else None


def run_server(
    grid: Grid,
    plan: FederatedPlan,
    out: str | Path,
    *,
    engine: str,
    evaluate: EvaluateFn | None = None,
    command: str | None = None,
    connect_timeout: float = 300.0,
) -> dict[str, Any]:
    """Run the federated rounds on ``grid`` and write the model folder ``out``; returns
    its card. Sites not named in ``plan.sites`` are not sampled (logged). The state is
    saved in ``out`` after every round, and a run whose state is there goes on after its
    last finished round (:mod:`medmeta.federated.round_state`)."""
    found = discover_sites(grid, len(plan.sites), connect_timeout)
    names = {n: s["name"] for n, s in found.items() if s["name"] in plan.sites}
    for node, site in found.items():
        if node not in names:
            logger.warning("site %s is not in the plan (%s): not sampled", site["name"],
                           ", ".join(plan.sites))  # fmt: skip
    for missing in sorted(set(plan.sites) - set(names.values())):
        logger.warning("site %s never connected", missing)
    learner = initial_learner(plan)
    resumed = load_round_state(out, plan)
    if resumed:
        logger.info("resuming the federated run in %s after round %d of %d", out,
                    resumed.round, plan.rounds)  # fmt: skip
    hook = _AfterRound(plan, out, learner, evaluate, resumed)
    strategy = hook.strategy = MetaFedStrategy(plan, names, hook.done, hook.history)
    final = hook.start
    if hook.done < plan.rounds:
        result = strategy.start(
            grid=grid, initial_arrays=to_record(hook.start), num_rounds=plan.rounds - hook.done,
            timeout=plan.round_timeout, train_config=ConfigRecord(), evaluate_fn=hook,
        )  # fmt: skip
        final = from_record(result.arrays) if len(result.arrays) else hook.start
    learner.load_state_dict(merge_state(learner.state_dict(), final))
    sites = [found[n] for n in sorted(names, key=lambda n: plan.sites.index(names[n]))]
    return write_model_folder(out, plan, learner, sites=sites, history=strategy.history,
                              engine=engine, evaluation=hook.evaluation, command=command,
                              resumed_after=hook.resumed_after)  # fmt: skip


def make_server_app(
    plan: FederatedPlan,
    out: str | Path,
    *,
    engine: str = "flower simulation",
    evaluate: EvaluateFn | None = None,
    command: str | None = None,
) -> ServerApp:
    """A ``ServerApp`` running :func:`run_server` for ``plan``."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, plan, out, engine=engine, evaluate=evaluate, command=command)

    return server


app = ServerApp()


@app.main()
def _deployed(grid: Grid, context: Context) -> None:
    """The deployment engine's entry: the run file names the plan and the output folder."""
    path = str(context.run_config.get(RUN_KEY, ""))
    if not path:
        raise ValueError(f"run config {RUN_KEY!r} is empty: submit the run with "
                         f"--run-config '{RUN_KEY}=\"/path/run.json\"'")  # fmt: skip
    run = json.loads(Path(path).read_text(encoding="utf-8"))
    run_server(grid, FederatedPlan.from_dict(run["plan"]), run["out"], engine="flower deployment",
               command=run.get("command"), connect_timeout=float(run.get("connect_timeout", 300)))  # fmt: skip
