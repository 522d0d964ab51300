"""Crash-safe federated runs: the server's state after every round, checked against the
plan on restart; a resumed strategy numbers its rounds on (seeds, sampling, the Reptile
step and the privacy noise); and, end to end, ``medmeta federate`` killed with SIGKILL
after a round and started again ends at the weights of the federated algorithm written
out without Flower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from federated.fakes import Grid, reply, toy_plan, written_out
from helpers import torch_threads
from medmeta.cli import main
from medmeta.federated import messages
from medmeta.federated.round_state import (
    STATE,
    RoundState,
    load_round_state,
    prepare_output,
    save_round_state,
)
from medmeta.federated.strategy import MetaFedStrategy
from medmeta.federated.weights import from_record, to_record

NAMES = {11: "a", 22: "b", 33: "c"}


pytestmark = pytest.mark.usefixtures("task_identity")  # messages built outside a federation


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(3, 4)), "bn.running_var": rng.uniform(0.5, 1.5, size=(4,))}


def test_state_round_trips_as_the_float32_that_travelled(tmp_path: Path) -> None:
    plan, weights = toy_plan(), _weights()
    history = [{"round": 1, "sites": ["a"], "loss": 0.25, "left_out": []}]
    save_round_state(
        tmp_path, plan, RoundState(1, weights, history, [{"round": 1, "acc": 0.5}], [0])
    )
    state = load_round_state(tmp_path, plan)
    assert (state.round, state.history, state.evaluation) == (
        1,
        history,
        [{"round": 1, "acc": 0.5}],
    )
    assert state.resumed_after == [0]
    for k, v in weights.items():
        np.testing.assert_array_equal(state.weights[k], v.astype(np.float32).astype(np.float64))
    assert load_round_state(tmp_path / "elsewhere", plan) is None


def test_a_state_of_another_plan_or_a_damaged_one_is_refused(tmp_path: Path) -> None:
    save_round_state(tmp_path, toy_plan(rounds=4), RoundState(2, _weights()))
    with pytest.raises(ValueError, match=r"holds round 2 of a federated run with another plan "
                       r"\(rounds: 5 now, 4 in the file\); give another output folder"):  # fmt: skip
        load_round_state(tmp_path, toy_plan(rounds=5))
    assert load_round_state(tmp_path, toy_plan(rounds=4, round_timeout=10.0)).round == 2
    (tmp_path / STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{STATE} cannot be read"):
        load_round_state(tmp_path, toy_plan(rounds=4))


def test_prepare_output_keeps_the_state_or_starts_over(tmp_path: Path) -> None:
    plan = toy_plan()
    save_round_state(tmp_path, plan, RoundState(3, _weights()))
    (tmp_path / "model.json").write_text("{}")
    assert prepare_output(tmp_path, plan, resume=True).round == 3
    assert not (tmp_path / "model.json").exists()  # an earlier model never passes as this one
    assert prepare_output(tmp_path, plan, resume=False) is None
    assert not (tmp_path / STATE).exists()


def _round(strategy: MetaFedStrategy, flower_round: int, theta, deltas) -> tuple[dict, list]:
    grid = Grid(list(NAMES))
    sent = list(strategy.configure_train(flower_round, to_record(theta), ConfigRecord(), grid))
    rounds = [m.content[messages.CONFIG][messages.ROUND] for m in sent]
    replies = [reply(m, deltas[m.metadata.dst_node_id]) for m in sent]
    arrays, _ = strategy.aggregate_train(flower_round, replies)
    return from_record(arrays), rounds


@pytest.mark.parametrize("options", [
    {"algorithm": "reptile", "server_lr": 0.9, "sites_per_round": 2},
    {"algorithm": "fedavg", "dp_clip": 0.5, "dp_noise": 0.7, "delta": 1e-3},
])  # fmt: skip
def test_a_resumed_strategy_goes_on_with_the_round_numbers(options) -> None:
    plan = toy_plan(rounds=6, **options)
    theta = {k: v.astype(np.float32).astype(np.float64) for k, v in _weights().items()}
    rng = np.random.default_rng(1)
    deltas = {n: {k: 0.1 * rng.normal(size=v.shape) for k, v in theta.items()} for n in NAMES}
    fresh = MetaFedStrategy(plan, NAMES)
    resumed = MetaFedStrategy(plan, NAMES, rounds_done=3, history=[{"round": r} for r in (1, 2, 3)])
    expected, sent_rounds = _round(fresh, 4, theta, deltas)
    got, resumed_rounds = _round(resumed, 1, theta, deltas)  # Flower counts from 1 again
    assert sent_rounds == resumed_rounds == [4] * plan.per_round  # the sites' seeds
    for k in theta:
        np.testing.assert_array_equal(got[k], expected[k])
    assert [h["round"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["sites"] == fresh.history[-1]["sites"]
    # the same round without the offset is another step (other noise, step or sites)
    other, _ = _round(MetaFedStrategy(plan, NAMES), 1, theta, deltas)
    assert any(not np.array_equal(other[k], expected[k]) for k in theta)


SITES = "a=pbc_blood@0-2,b=pbc_blood@2-4,c=pbc_blood@4-6"
TINY = ["--ways", "3", "--shots", "2", "--queries", "3", "--meta-batch", "1", "--width", "8",
        "--local-steps", "2", "--quiet", "--threads", "1"]  # fmt: skip


def test_federate_refuses_a_folder_of_another_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fed"
    save_round_state(out, toy_plan(), RoundState(1, _weights()))
    assert main(["federate", "--sites", SITES, *TINY, "--rounds", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "holds round 1 of a federated run with another plan" in err
    assert "(or add --fresh)" in err


def _processes_marked(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow  # two Flower simulations (Ray) in child processes: about 40-60 s
def test_federate_killed_after_a_round_resumes_to_the_same_model(tmp_path: Path) -> None:
    from medmeta.cli._model import load_model
    from medmeta.federated.plan import FederatedPlan
    from medmeta.federated.site import site_from_spec
    from medmeta.federated.weights import federated_keys, to_numpy

    out, mark = tmp_path / "fed", f"medmeta-resume-{os.getpid()}-{time.time_ns()}"
    command = [sys.executable, "-c", "import sys; from medmeta.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "federate", "--sites", SITES, *TINY,
               "--rounds", "3", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "MEDMETA_TEST_MARK": mark}
    first = subprocess.Popen(command, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / STATE).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the CLI, Ray and its workers: one process group
        first.wait()
    finally:
        for pid in _processes_marked(mark):
            os.kill(pid, signal.SIGKILL)
    stopped = torch.load(out / STATE, weights_only=True)["round"]
    assert 1 <= stopped < 3 and not (out / "model.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["federated"]["resumed_after"] == [stopped]
    assert [h["round"] for h in card["federated"]["history"]] == [1, 2, 3]
    plan = FederatedPlan.from_dict(
        torch.load(out / "last.pt", weights_only=True)["config"]["federated_plan"]
    )
    with torch_threads(1):  # as the simulation's sites train (one CPU per Ray actor)
        expected = written_out(plan, [site_from_spec(s) for s in SITES.split(",")])
    state = load_model(out).learner.state_dict()
    got = to_numpy(state, federated_keys(state))
    # bitwise equal here; the tolerance only allows another BLAS build, while a resumed run
    # that restarted the round numbers (other episodes) moves weights by about 1e-2
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6, err_msg=k)
