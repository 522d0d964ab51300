"""A site on real data (embedded blood-cell images) and its Flower ``ClientApp`` called
directly: the update is medmeta's own local meta-training, seeded per (site, round), and
travels through the message protocol unchanged; the plan survives JSON."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from medmeta.edge.preprocess import Preprocessing
from medmeta.federated import messages
from medmeta.federated.client_app import make_client_app, site_from_node_config
from medmeta.federated.plan import FederatedPlan
from medmeta.federated.planning import make_plan
from medmeta.federated.site import Site, site_from_spec
from medmeta.federated.weights import (
    build_learner,
    federated_keys,
    from_record,
    to_numpy,
    to_record,
)
from medmeta.train import meta_fit

BACKBONE = {"name": "conv4", "input_shape": [3, 28, 28], "kwargs": {"hidden": 8}}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture(scope="module")
def plan() -> FederatedPlan:
    return make_plan(("A", "B"), learner="protonet", backbone=BACKBONE, ways=3, shots=2,
                     queries=3, rounds=3, local_steps=4, meta_batch=2, seed=5,
                     preprocessing=Preprocessing.for_images((3, 28, 28)).to_dict())  # fmt: skip


def _start(plan: FederatedPlan) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    state = build_learner(plan.learner, plan.backbone).state_dict()
    return to_numpy(state, federated_keys(state))


def test_update_is_local_meta_fit_from_the_global_weights(plan: FederatedPlan) -> None:
    site = Site("A", "pbc_blood", classes="0-3")
    weights = _start(plan)
    update = site.update(plan, weights, server_round=2)
    assert set(update.delta) == set(weights)
    assert all(update.delta[k].shape == weights[k].shape for k in weights)
    assert update.examples == 4 * 600 and update.episodes == 4 * 2
    # the same training by hand: meta_fit from the global weights with the (site, round) seed
    learner = build_learner(plan.learner, plan.backbone)
    learner.load_state_dict(
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in weights.items()}, strict=False
    )
    ds = site.dataset(dict(plan.preprocessing))
    meta_fit(learner, ds, None, ways=3, shots=2, queries=3, steps=4, meta_batch=2, lr=plan.lr,
             seed=plan.site_seed("A", 2), progress=False)  # fmt: skip
    by_hand = to_numpy(learner.state_dict(), list(weights))
    for k in weights:
        np.testing.assert_allclose(weights[k] + update.delta[k], by_hand[k], rtol=1e-6, atol=1e-6)
    assert float(np.abs(update.delta["backbone.0.0.weight"]).max()) > 0  # it did train
    again = site.update(plan, weights, server_round=2)
    other = site.update(plan, weights, server_round=3)
    assert all(np.array_equal(again.delta[k], update.delta[k]) for k in weights)
    assert not np.allclose(other.delta["backbone.0.0.weight"], update.delta["backbone.0.0.weight"])


def test_seeds_differ_per_site_and_round(plan: FederatedPlan) -> None:
    seeds = {plan.site_seed(s, r) for s in ("A", "B", "C") for r in range(1, 6)}
    assert len(seeds) == 15
    assert plan.site_seed("A", 1) == FederatedPlan.from_json(plan.to_json()).site_seed("A", 1)


def test_client_app_answers_query_and_train_messages(plan: FederatedPlan) -> None:
    site = Site("B", "pbc_blood", classes="4-6")
    app = make_client_app(lambda context: site)
    context = Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})
    query = Message(RecordDict(), dst_node_id=3, message_type=MessageType.QUERY)
    described = app(query, context).content[messages.SITE]
    assert described["name"] == "B" and described["examples"] == 1800
    assert list(described["classes"]) == ["lymphocyte", "monocyte", "neutrophil"]
    weights = _start(plan)
    config = ConfigRecord({messages.ROUND: 1, messages.PLAN: plan.to_json()})
    train = Message(RecordDict({messages.ARRAYS: to_record(weights), messages.CONFIG: config}),
                    dst_node_id=3, message_type=MessageType.TRAIN)  # fmt: skip
    answer = app(train, context)
    assert not answer.has_error()
    sent = from_record(answer.content[messages.ARRAYS])
    direct = site.update(plan, from_record(to_record(weights)), 1).delta
    assert all(np.allclose(sent[k], direct[k], atol=1e-7) for k in weights)
    metrics = answer.content[messages.METRICS]
    assert metrics[messages.WEIGHT] == 1800 and metrics["episodes"] == 8
    assert 0 < metrics["loss"] < 5 and 0 <= metrics["accuracy"] <= 1


def test_site_specs_and_node_configs() -> None:
    assert site_from_spec("pbc_blood") == Site("pbc_blood", "pbc_blood")
    assert site_from_spec("blood=pbc_blood@0-3").classes == "0-3"
    spec = site_from_spec("data/scans/a.npz@basophil+platelet")
    assert (spec.name, spec.data, spec.classes) == ("a", "data/scans/a.npz", "basophil,platelet")
    with pytest.raises(ValueError, match="no data"):
        site_from_spec("x=")
    context = Context(run_id=1, node_id=1, node_config={"site": "K", "data": "knee_xray_kl"},
                      state=RecordDict(), run_config={})  # fmt: skip
    assert site_from_node_config(context).name == "K"
    with pytest.raises(ValueError, match=r"lacks \['data'\]"):
        site_from_node_config(Context(run_id=1, node_id=1, node_config={"site": "K"},
                                      state=RecordDict(), run_config={}))  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds": 0}, "rounds must be an int > 0"),
        ({"algorithm": "fedprox"}, "algorithm must be one of"),
        ({"algorithm": "fedavg", "server_lr": 0.5}, "fedavg takes the sites' mean"),
        ({"sites_per_round": 3}, "sites_per_round 3 is more than the 2 sites"),
        ({"dp_noise": 1.0}, "dp_noise needs dp_clip"),
        ({"dp_clip": 1.0, "delta": 1.5}, r"delta must be in \(0, 1\)"),
        ({"dp_clip": -1.0}, "dp_clip must be a finite number > 0"),
        ({"sites": ["A", "A"]}, "distinct names"),
    ],
)
def test_bad_plans_are_refused(plan: FederatedPlan, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedPlan.from_dict({**plan.to_dict(), **change})
    assert FederatedPlan.from_json(plan.to_json()) == plan
