"""End to end in Flower's simulation engine on real data: three hospitals with different
blood-cell class mixes meta-train a ProtoNet together, beside three broken sites (one sends
NaN, one sends an array of the wrong shape, one drops out after round 1). The federated
model must beat its initialisation on classes no site holds, the broken updates must be
left out and the sites named in the log, and the folder must load as a medmeta model."""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated.fakes import DropsOutSite, NaNSite, WrongShapeSite
from medmeta.cli._model import load_model
from medmeta.data import load
from medmeta.edge.preprocess import Preprocessing
from medmeta.federated.planning import make_plan
from medmeta.federated.simulation import run_simulation
from medmeta.federated.site import Site

pytestmark = pytest.mark.slow  # a Ray cluster is started: about 15-40 s

GOOD = ("A", "B", "C")
HELD_OUT = [5, 6, 7]  # monocyte, neutrophil, platelet: at no site


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medmeta.cli._setup import preprocess_dataset
    from medmeta.eval import evaluate

    pre = Preprocessing.for_images((3, 28, 28))
    blood = load("pbc_blood")
    held = preprocess_dataset(blood.subset(np.flatnonzero(np.isin(blood.labels, HELD_OUT))), pre)
    sites = [Site("A", "pbc_blood", "0-2"), Site("B", "pbc_blood", "1-3"),
             Site("C", "pbc_blood", "2-4"), NaNSite("nan-site", "pbc_blood", "0-2"),
             WrongShapeSite("odd-site", "pbc_blood", "1-3"),
             DropsOutSite("gone-site", "pbc_blood", "2-4")]  # fmt: skip
    plan = make_plan(
        [s.name for s in sites], learner="protonet", preprocessing=pre.to_dict(),
        backbone={"name": "conv4", "input_shape": [3, 28, 28], "kwargs": {"hidden": 8}},
        ways=3, shots=2, queries=5, meta_batch=2, lr=3e-3, rounds=3, local_steps=8,
        algorithm="fedavg", seed=0,
    )  # fmt: skip

    def accuracy(server_round: int, learner: Any) -> dict[str, float]:
        result = evaluate(learner, held, ways=3, shots=5, queries=10, episodes=60, seed=0)
        return {"accuracy": result.accuracy, "ci95": result.ci95}

    out = tmp_path_factory.mktemp("federated") / "model"
    collect = _Collect()
    logger = logging.getLogger("medmeta.federated")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings():
            # Ray leaves /dev/null handles and Popen objects of its helper processes for the
            # garbage collector; collected here, their ResourceWarnings are not test failures
            warnings.simplefilter("ignore", ResourceWarning)
            card = run_simulation(plan, sites, out, evaluate=accuracy, command="test")
            gc.collect()
    finally:
        logger.removeHandler(collect)
    return {"card": card, "out": out, "log": collect.messages}


def test_federated_model_learns_classes_no_site_holds(run: dict[str, Any]) -> None:
    evaluation = {e["round"]: e for e in run["card"]["federated"]["evaluation"]}
    assert sorted(evaluation) == [0, 1, 2, 3]
    start, end = evaluation[0], evaluation[3]
    assert end["accuracy"] > 1 / 3 + 0.25  # 3-way 5-shot on unseen cell types
    assert end["accuracy"] - start["accuracy"] > 0.05 + start["ci95"] + end["ci95"]
    history = run["card"]["federated"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]  # the sites' local episodes got easier


def test_broken_updates_and_dropouts_are_left_out_and_named(run: dict[str, Any]) -> None:
    history = run["card"]["federated"]["history"]
    assert [h["sites"] for h in history] == [[*GOOD, "gone-site"], list(GOOD), list(GOOD)]
    for h in history:
        reasons = {r["site"]: r["reason"] for r in h["left_out"]}
        assert reasons["nan-site"].endswith("NaN/inf value(s) in backbone.0.0.weight")
        assert reasons["odd-site"] == ("wrong shape: backbone.0.0.weight is [9, 3, 3, 3], "
                                       "expected [8, 3, 3, 3]")  # fmt: skip
        if h["round"] > 1:
            assert "lost its connection in round" in reasons["gone-site"]
    for site in ("nan-site", "odd-site", "gone-site"):
        assert any(f"left out site {site}: " in m for m in run["log"]), site
    model = load_model(run["out"])
    state = model.learner.state_dict()
    assert all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


def test_folder_is_an_ordinary_trained_model(run: dict[str, Any]) -> None:
    card = run["card"]
    assert card["kind"] == "trained" and card["algorithm"] == "protonet"
    assert card["checkpoint"] == "last.pt" and card["privacy"] is None
    assert card["federated"]["engine"] == "flower simulation"
    assert [s["name"] for s in card["federated"]["sites"]] == [
        "A", "B", "C", "nan-site", "odd-site", "gone-site"]  # fmt: skip
    assert card["training"]["steps"] == 3 * 8 and card["episodes"]["shots"] == 2
    model = load_model(Path(run["out"]))
    assert model.learner.spec()["algorithm"] == "protonet" and model.learner.ways == 3
