"""Distributed meta-training (medmeta.train.distributed) with 2 gloo processes on loopback:
the same model as one process for ProtoNet, second-order MAML and Reptile; sharded
validation (classification, segmentation, regression) and evaluation equal to one
process's; resume with another number of processes; a process that dies or hangs makes the
other stop with a clear error; the ``--nproc`` launcher. The processes run
tests/train/dist_worker.py with torchrun's environment."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import medmeta.train.distributed as D
from medmeta.cli import _launch
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler
from medmeta.edge.cli.errors import UsageError
from medmeta.eval.evaluate import iter_episodes, predict_episodes
from medmeta.train import read_csv
from train import dist_worker as W

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend"
)

WORKER = Path(__file__).with_name("dist_worker.py")


@dataclass
class Finished:
    rank: int
    returncode: int | None
    stdout: str
    stderr: str
    at: float  # seconds after the start when the process had ended (or was killed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(scenario: str, out: Path, *, timeout_s: float = 120, dist_timeout: float = 60,
           world: int = 2, wait_for: tuple[int, ...] | None = None) -> list[Finished]:  # fmt: skip
    """Run ``world`` worker processes until those of ``wait_for`` (default: all) have
    ended, at most ``timeout_s``; the others are then killed (``returncode`` None).
    Returned in the order they ended."""
    port = _free_port()
    procs = []
    start = time.perf_counter()
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "MEDMETA_DIST_TIMEOUT": str(dist_timeout)}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    wait_for = tuple(range(world)) if wait_for is None else wait_for
    ended: dict[int, float] = {}
    while not set(wait_for) <= set(ended) and time.perf_counter() - start < timeout_s:
        for rank, p in enumerate(procs):
            if rank not in ended and p.poll() is not None:
                ended[rank] = time.perf_counter() - start
        time.sleep(0.05)
    finished = []
    for rank, p in enumerate(procs):
        if rank not in ended:
            p.kill()
        out_text, err_text = p.communicate()
        code = p.returncode if rank in ended else None
        at = ended.get(rank, time.perf_counter() - start)
        finished.append(Finished(rank, code, out_text, err_text, at))
    return sorted(finished, key=lambda f: f.at)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One launch of 2 processes for the equality, evaluation and resume tests."""
    out = tmp_path_factory.mktemp("distributed")
    W.train("protonet", steps=3, out_dir=out / "shrink", distributed=False)  # 1 process, then 2
    for f in launch("suite", out):
        assert f.returncode == 0, f"rank {f.rank}:\n{f.stderr[-4000:]}"
    return out


def _load(out: Path, job: str, rank: int) -> dict:
    return torch.load(out / f"{job}.rank{rank}.pt", weights_only=True)


def _assert_same_weights(got: dict, ref: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")  # fmt: skip


# -- the same model as one process ---------------------------------------------------


@pytest.mark.parametrize("name", list(W.LEARNERS))
def test_two_processes_train_the_single_process_model(suite: Path, name: str) -> None:
    ref = W.outcome(W.train(name, distributed=False))
    init = W.build(name).state_dict()
    moved = max(float((ref["state"][k] - init[k]).abs().max()) for k in init)
    assert moved > 1e-3  # training moved the weights far beyond the tolerance
    ours = [_load(suite, name, rank) for rank in (0, 1)]
    for got in ours:
        assert got["processes"] == 2 and ref["processes"] == 1
        _assert_same_weights(got["state"], ref["state"])
        assert [r["step"] for r in got["history"]] == list(range(1, W.STEPS + 1))
        for a, b in zip(got["history"], ref["history"], strict=True):
            # loss and accuracy averaged over the 2 + 1 episodes of the shards, weighted (an
            # unweighted mean of the two shards' would be off by percents)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
            assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
            # sharded validation: the same episodes, gathered, the same mean and CI
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-12)
            assert a["val_ci95"] == pytest.approx(b["val_ci95"], abs=1e-12)
        assert got["best"] == pytest.approx(ref["best"], abs=1e-12)
    for k, v in ours[0]["state"].items():  # both processes end with the very same model
        assert torch.equal(v, ours[1]["state"][k]), k


def test_sharded_evaluation_equals_single_process(suite: Path) -> None:
    ref = W.evaluation("protonet", distributed=False)
    for rank in (0, 1):
        got = _load(suite, "evaluate", rank)
        assert len(got["episode_accuracy"]) == W.EVAL["episodes"]  # 4 + 3 episodes gathered
        torch.testing.assert_close(got["episode_accuracy"], ref["episode_accuracy"], rtol=0, atol=1e-12)  # fmt: skip
        for key in ("accuracy", "ci95", "auroc"):
            assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0 < ref["ci95"] < ref["accuracy"]


def test_sharded_segmentation_validation_equals_single_process(suite: Path) -> None:
    ref = W.segmentation_validation()
    assert 0 < ref[0] < 1 and ref[1] > 0  # (mean Dice, CI, NLL) of 5 episodes
    for rank in (0, 1):
        torch.testing.assert_close(_load(suite, "segmentation", rank), ref, rtol=1e-6, atol=1e-9)


def test_sharded_regression_validation_equals_single_process(suite: Path) -> None:
    ref = W.regression_validation()
    r2, ci, mse = ref["validation"].tolist()
    assert ci > 0 and mse > 0 and -1 < r2 < 1  # (mean R², CI, MSE) of 5 episodes
    assert len(set(ref["tasks"].tolist())) > 1  # episodes of several tasks
    for rank in (0, 1):
        got = _load(suite, "regression", rank)
        # the 3 + 2 episodes of the shards gathered in episode order: the same rows
        for key in ("target", "support_y", "tasks"):
            assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), key
        torch.testing.assert_close(got["pred"], ref["pred"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["validation"], ref["validation"], rtol=0, atol=1e-12)


def test_regression_training_validates_sharded(suite: Path) -> None:
    """meta_fit of a regressor with 2 processes: each predicts its share of the 5
    validation episodes (3 + 2), and the validation equals one process's."""
    ref = W.regression_fit(distributed=False)
    assert ref["predicted"] == W.REG["episodes"] and ref["processes"] == 1
    ours = [_load(suite, "regression_fit", rank) for rank in (0, 1)]
    assert [got["predicted"] for got in ours] == [3, 2]
    for got in ours:
        assert got["processes"] == 2
        _assert_same_weights(got["state"], ref["state"])
        a, b = got["history"][-1], ref["history"][-1]
        for key in ("val_accuracy", "val_ci95", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


# -- checkpoints and resume with another number of processes ---------------------------


def test_resume_with_fewer_processes(suite: Path, tmp_path: Path) -> None:
    """3 steps with 2 processes, 3 more with 1: the uninterrupted single-process model."""
    uninterrupted = W.outcome(W.train("protonet", steps=6, distributed=False))
    grow = _load(suite, "grow", 0)
    assert grow["processes"] == 2 and [r["step"] for r in grow["history"]] == [1, 2, 3]
    run = tmp_path / "run"
    shutil.copytree(suite / "grow", run)
    # rank 0 alone wrote the log: one row per step (two writers would duplicate them)
    assert [r["step"] for r in read_csv(run / "log.csv")] == [1, 2, 3]
    resumed = W.train("protonet", steps=6, out_dir=run, distributed=False)
    assert resumed.resumed_from == 3 and resumed.config["processes"] == 1
    _assert_same_weights(W.outcome(resumed)["state"], uninterrupted["state"])
    assert [r["step"] for r in read_csv(run / "log.csv")] == list(range(1, 7))


def test_resume_with_more_processes(suite: Path) -> None:
    """3 steps with 1 process, 3 more with 2: the uninterrupted single-process model."""
    uninterrupted = W.outcome(W.train("protonet", steps=6, distributed=False))
    for rank in (0, 1):
        got = _load(suite, "shrink", rank)
        assert got["resumed_from"] == 3 and got["processes"] == 2
        _assert_same_weights(got["state"], uninterrupted["state"])
        assert [r["step"] for r in got["history"]] == list(range(1, 7))
    assert [r["step"] for r in read_csv(suite / "shrink" / "log.csv")] == list(range(1, 7))


# -- a process that fails ------------------------------------------------------------------


def test_a_dead_process_stops_the_other_with_a_clear_error(tmp_path: Path) -> None:
    first, second = launch("exit", tmp_path, timeout_s=90, dist_timeout=60)
    assert (first.rank, first.returncode) == (1, 3), first.stderr[-2000:]
    # rank 0 notices at once (the broken connection), well before the 60 s timeout
    assert second.rank == 0 and second.returncode not in (0, None), second.stderr[-3000:]
    assert second.at - first.at < 20
    assert "DistributedError" in second.stderr
    assert "the all-reduce of the meta-gradients failed in process 0 of 2" in second.stderr
    assert "another process stopped" in second.stderr


@pytest.mark.slow
def test_a_hanging_process_times_out_with_a_clear_error(tmp_path: Path) -> None:
    finished = launch("hang", tmp_path, timeout_s=120, dist_timeout=4, wait_for=(0,))
    rank0 = next(f for f in finished if f.rank == 0)
    rank1 = next(f for f in finished if f.rank == 1)
    assert rank1.returncode is None  # still asleep: killed by the test
    # rank 0 ended by itself (without the timeout it would wait for rank 1 for ever)
    assert rank0.returncode not in (0, None), rank0.stderr[-3000:]
    assert "did not answer within the 4 s timeout" in rank0.stderr
    assert "Timed out" in rank0.stderr


# -- in one process: the pieces ---------------------------------------------------------


def test_shard_bounds_cover_the_batch_in_rank_order() -> None:
    for n in range(0, 12):
        for world in range(1, 6):
            bounds = [D.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="rank 2 must be in"):
        D.shard_bounds(5, 2, 2)


def test_shard_batch_slices_every_episode_tensor() -> None:
    sampler = EpisodeSampler(W.splits()[0], 3, 2, 3, batch_size=5, generator=0)
    batch = sampler.sample()
    parts = [D.shard_batch(batch, r, 2) for r in range(2)]
    assert [p.batch_size for p in parts] == [3, 2]
    for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(batch, field))
    assert (parts[1].ways, parts[1].shots, parts[1].queries) == (3, 2, 3)
    with pytest.raises(ValueError, match="meta_batch must be at least the number of processes"):
        D.shard_batch(batch, 5, 6)


def test_selected_episodes_are_those_of_the_full_stream() -> None:
    def episodes(select=None) -> list[EpisodeBatch]:
        sampler = EpisodeSampler(W.splits()[2], 2, 2, 3, batch_size=1, generator=3)
        return list(iter_episodes(sampler, 7, 2, select))

    full = torch.cat([b.query_x for b in episodes()])
    shard = episodes(range(4, 7))
    assert [b.batch_size for b in shard] == [2, 1]
    assert torch.equal(torch.cat([b.query_x for b in shard]), full[4:7])
    assert episodes(range(0)) == []
    with pytest.raises(ValueError, match="select must be a contiguous range"):
        episodes(range(5, 9))
    # a process with no episode (fewer episodes than processes) predicts an empty shard
    sampler = EpisodeSampler(W.splits()[2], 2, 2, 3, batch_size=1, generator=3)
    empty = predict_episodes(W.build("protonet"), sampler, 1, 2, torch.device("cpu"), select=range(0))  # fmt: skip
    assert (empty.logits.shape, empty.labels.shape, empty.classes.shape) == ((0, 6, 2), (0, 6), (0, 2))  # fmt: skip


def test_selected_regression_episodes_are_those_of_the_full_stream() -> None:
    from medmeta.eval.regression import predict_regression_episodes

    def predict(select=None):
        sampler = W.regression_tasks().episode_sampler(1, 5, 4, generator=3)
        return predict_regression_episodes(W.build_regressor(), sampler, 5, 2, torch.device("cpu"), select=select)  # fmt: skip

    full, shard = predict(), predict(range(3, 5))
    for key in ("pred", "target", "support_y", "tasks"):
        torch.testing.assert_close(getattr(shard, key), getattr(full, key)[3:5], rtol=0, atol=1e-6)
    # a process with no episode (fewer episodes than processes) predicts an empty shard
    empty = predict(range(0))
    shapes = [tuple(getattr(empty, k).shape) for k in ("pred", "target", "support_y", "tasks")]
    assert shapes == [(0, 4), (0, 4), (0, 5), (0,)] and empty.tasks.dtype == torch.int64


def test_distributed_training_without_torchrun_names_the_missing_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert D.resolve(None, "cpu") is None  # automatic: one process
    with pytest.raises(ValueError, match=r"RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing"):
        W.train("protonet", steps=1, distributed=True)
    monkeypatch.setenv("MEDMETA_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MEDMETA_DIST_TIMEOUT must be a number of seconds"):
        D.init_from_env("cpu")


@pytest.fixture
def one_process_group():
    """A gloo group of one process (this one), destroyed afterwards."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield D.init_from_env("cpu")
    finally:
        dist.destroy_process_group()


def test_gradient_all_reduce_weights_gradients_and_keeps_missing_ones(one_process_group) -> None:
    ctx = one_process_group
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, "gloo", True)
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a, b], lr=1.0)
    hook = D.GradientAllReduce(opt, ctx)
    hook.weight = 0.25
    a.grad = torch.tensor([4.0, 8.0, -4.0])
    opt.step()  # the hook scales before the step: a -= 0.25 * grad
    assert torch.equal(a.detach(), torch.tensor([0.0, -1.0, 2.0])) and b.grad is None
    assert torch.equal(b.detach(), torch.ones(2)) and hook.calls == 1
    hook.remove()
    a.grad = torch.ones(3)
    opt.step()
    assert hook.calls == 1 and torch.equal(a.detach(), torch.tensor([-1.0, -2.0, 1.0]))


def test_one_process_group_trains_as_without_one(one_process_group) -> None:
    alone = W.outcome(W.train("reptile", steps=2, distributed=False))
    grouped = W.outcome(W.train("reptile", steps=2, distributed=True))
    assert grouped["processes"] == 1
    for k, v in alone["state"].items():
        assert torch.equal(grouped["state"][k], v), k


# -- the --nproc launcher ---------------------------------------------------------------


def test_launcher_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["train", "--nproc", "2", "--data", "x", "--nproc=3", "--out", "d"]
    assert _launch.strip_nproc(argv) == ["train", "--data", "x", "--out", "d"]
    command = _launch.torchrun_command(argv, 4)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node=4", "-m", "medmeta.cli._launch", "train", "--data",
                       "x", "--out", "d"]  # fmt: skip
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert _launch.should_relaunch(2) and not _launch.should_relaunch(1)
    assert _launch.is_main_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not _launch.should_relaunch(2)  # already a torchrun process
    monkeypatch.setenv("RANK", "1")
    assert not _launch.is_main_process()
    with pytest.raises(UsageError, match="already runs under torchrun"):
        _launch.relaunch_under_torchrun(["train"], 2)
    with pytest.raises(UsageError, match="--nproc: expected an integer >= 1, got 0"):
        _launch.relaunch_under_torchrun(["train"], 0)


@pytest.mark.slow
def test_train_and_eval_with_nproc_run_torchrun(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from medmeta.cli import main

    out = tmp_path / "model"
    argv = ["train", "--nproc", "2", "--data", "pbmc68k_celltypes", "--classes", "0-5",
            "--val-classes", "6,7", "--ways", "3", "--shots", "2", "--queries", "3", "--steps",
            "4", "--meta-batch", "3", "--val-every", "2", "--val-episodes", "5", "--width", "16",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capfd.readouterr()
    assert "--nproc-per-node=2 -m medmeta.cli._launch train" in printed.err
    assert printed.out.count("trained protonet for 4 steps") == 1  # rank 0 prints, alone
    log = json.loads((out / "log.json").read_text())
    assert log["config"]["processes"] == 2 and log["finished"]
    assert [r["step"] for r in read_csv(out / "log.csv")] == [1, 2, 3, 4]
    assert (out / "model.json").is_file() and (out / "best.pt").is_file()
    evaluation = ["eval", "--model", str(out), "--data", "pbmc68k_celltypes", "--classes",
                  "6-9", "--ways", "3", "--shots", "2", "--queries", "3", "--episodes", "7",
                  "--json"]  # fmt: skip
    results = []
    for extra in (["--nproc", "2"], []):
        assert main([*evaluation, *extra]) == 0
        results.append(json.loads(capfd.readouterr().out))
    sharded, single = results
    for key in ("accuracy", "ci95", "auroc", "episodes"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-9, abs=1e-12), key
