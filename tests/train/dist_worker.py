"""One process of the distributed meta-training tests (tests/train/test_distributed.py).

``python tests/train/dist_worker.py SCENARIO OUT`` with torchrun's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) set by the test. The training jobs are
also imported by the test, which runs them in one process as the reference.

Scenarios:

* ``suite``: train ProtoNet, second-order MAML and Reptile (:data:`LEARNERS`), evaluate
  sharded, validate a segmenter and a MAML regressor sharded (and train the regressor 2
  steps), train 3 steps afresh in ``OUT/grow`` and resume ``OUT/shrink`` (3 steps written
  by one process) to 6; every process saves what it ends with as ``OUT/<job>.rank<r>.pt``.
* ``exit`` / ``hang``: rank 1 exits abruptly / stops answering inside its third step;
  rank 0 must fail with a clear error (the test checks how fast, and the message).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medmeta.algorithms import create
from medmeta.data import load
from medmeta.data.episodes import split_classes
from medmeta.data.regression_tasks import RegressionTask, RegressionTasks
from medmeta.eval import evaluate
from medmeta.nn import MLP
from medmeta.train import meta_fit

FEATURES = 765  # pbmc68k_celltypes
TASK = {"ways": 3, "shots": 2, "queries": 3}
#: learner -> hyper-parameters; small MLPs without batch norm (see medmeta.train.distributed)
LEARNERS: dict[str, dict[str, Any]] = {
    "protonet": {},
    "maml": {"first_order": False, "inner_steps": 2, "inner_lr": 0.3},
    "reptile": {"inner_steps": 2, "inner_lr": 0.3},
}
STEPS = 4
META_BATCH = 3  # uneven shards over 2 processes (2 + 1 episodes)
EVAL = {"ways": 2, "shots": 2, "queries": 3, "episodes": 7, "seed": 5, "batch_size": 2}
REG_FEATURES = 4
#: regression validation: 5 episodes, uneven shards over 2 processes (3 + 2)
REG = {"shots": 5, "queries": 4, "episodes": 5, "seed": 7, "batch_size": 2}


@functools.cache
def splits():
    """pbmc68k cell types split by class: (train 6 classes, val 2, test 2)."""
    return split_classes(load("pbmc68k_celltypes"), seed=0)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    backbone = MLP(FEATURES, hidden=(16,), batch_norm=False)
    return create(name, backbone, TASK["ways"], input_shape=(FEATURES,), **LEARNERS[name])


def sgd(params):
    """SGD keeps float-level differences float-level (Adam's first steps are about
    ``lr * sign(g)``, so a near-zero gradient's rounding noise moves a weight by ``lr``)."""
    return torch.optim.SGD(params, lr=0.05)


def train(name: str, *, steps: int = STEPS, out_dir: Path | None = None, distributed: bool | None = None, **kw: Any):  # fmt: skip
    """meta_fit of one learner with validation every 2 steps; returns the FitResult."""
    train_set, val_set, _ = splits()
    args = {**TASK, "steps": steps, "meta_batch": META_BATCH, "seed": 0, "val_every": 2,
            "val_episodes": 5, "val_ways": 2, "log_every": 1, "progress": False,
            "optimizer": sgd, "out_dir": out_dir, "distributed": distributed, **kw}  # fmt: skip
    return meta_fit(build(name), train_set, val_set, **args)


def outcome(fit) -> dict[str, Any]:
    """What the test compares: final weights, history, best step and validation."""
    return {
        "state": {k: v.detach().clone() for k, v in fit.learner.state_dict().items()},
        "history": [
            {k: v for k, v in row.items() if k not in ("time", "extra")} for row in fit.history
        ],
        "best": [fit.best_step, fit.best_accuracy, fit.best_ci95],
        "processes": fit.config["processes"],
    }


def evaluation(name: str, distributed: bool | None = None) -> dict[str, Any]:
    """A sharded (or not) evaluation of an untrained learner on the test classes."""
    test_set = splits()[2]
    result = evaluate(build(name, seed=1), test_set, distributed=distributed, **EVAL)
    return {"accuracy": result.accuracy, "ci95": result.ci95, "auroc": result.auroc,
            "episode_accuracy": torch.as_tensor(result.episode_accuracy)}  # fmt: skip


def segmentation_validation(ctx=None) -> torch.Tensor:
    """(mean Dice, CI, NLL) of an untrained PANet on 5 nuclei episodes (shared by the
    processes of ``ctx``), as meta_fit validates segmenters."""
    from medmeta.algorithms import create
    from medmeta.data.segmentation_episodes import SegmentationEpisodeSampler
    from medmeta.nn import SegEncoder
    from medmeta.train.fit import _validate_segmentation

    torch.manual_seed(0)
    learner = create("panet", SegEncoder(3, channels=(4, 8), out_channels=8), ways=1)
    sampler = SegmentationEpisodeSampler(load("dsb_nuclei"), 1, 1, 2, generator=0)
    return torch.tensor(_validate_segmentation(learner, sampler, 7, 5, torch.device("cpu"), ctx))


@functools.cache
def regression_tasks() -> RegressionTasks:
    """6 tiny linear tasks ``y = x @ w_t + 0.1 noise`` (4 features, 20 rows each)."""
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(6):
        x = torch.randn(20, REG_FEATURES, generator=g)
        y = x @ torch.randn(REG_FEATURES, generator=g) + 0.1 * torch.randn(20, generator=g)
        tasks.append(RegressionTask(f"t{t}", x, y))
    return RegressionTasks(tasks, name="toy regression")


def build_regressor(seed: int = 0):
    torch.manual_seed(seed)
    backbone = MLP(REG_FEATURES, hidden=(8,), batch_norm=False)
    return create("maml", backbone, 1, task="regression", input_shape=(REG_FEATURES,),
                  inner_steps=2, inner_lr=0.3)  # fmt: skip


def regression_validation(ctx=None) -> dict[str, torch.Tensor]:
    """(mean R², CI, MSE) of an untrained MAML regressor on 5 episodes (shared by the
    processes of ``ctx``), as meta_fit validates regressors, and the predictions
    (pred, target, support_y, tasks) of the same episodes, sharded and gathered or not."""
    from medmeta.eval.regression import predict_regression_episodes, predict_regression_sharded
    from medmeta.train.fit import _validate_regression

    learner, cpu = build_regressor(), torch.device("cpu")
    sampler = regression_tasks().episode_sampler(1, REG["shots"], REG["queries"], generator=0)
    args = (learner, sampler, REG["episodes"], REG["batch_size"])
    val = _validate_regression(*args[:2], REG["seed"], *args[2:], cpu, ctx)
    sampler.generator.manual_seed(REG["seed"])
    preds = predict_regression_episodes(*args, cpu) if ctx is None else predict_regression_sharded(*args, ctx)  # fmt: skip
    return {"validation": torch.tensor(val, dtype=torch.float64), **dataclasses.asdict(preds)}


def regression_fit(distributed: bool | None = None) -> dict[str, Any]:
    """2 steps of meta_fit of the MAML regressor, validated at step 2 on 5 episodes;
    with how many validation episodes this process predicted itself."""
    learner = build_regressor()
    predicted, predict = [], learner.predict

    def counting(support_x, support_y, query_x):
        predicted.append(int(support_x.shape[0]))
        return predict(support_x, support_y, query_x)

    learner.predict = counting
    fit = meta_fit(learner, regression_tasks(), regression_tasks(), ways=1, shots=REG["shots"],
                   queries=REG["queries"], steps=2, meta_batch=META_BATCH, seed=0, val_every=2,
                   val_episodes=REG["episodes"], log_every=1, progress=False, optimizer=sgd,
                   distributed=distributed)  # fmt: skip
    return outcome(fit) | {"predicted": sum(predicted)}


def suite(out: Path, rank: int) -> None:
    from medmeta.train.distributed import init_from_env

    for name in LEARNERS:
        torch.save(outcome(train(name)), out / f"{name}.rank{rank}.pt")
    torch.save(evaluation("protonet"), out / f"evaluate.rank{rank}.pt")
    torch.save(segmentation_validation(init_from_env()), out / f"segmentation.rank{rank}.pt")
    torch.save(regression_validation(init_from_env()), out / f"regression.rank{rank}.pt")
    torch.save(regression_fit(), out / f"regression_fit.rank{rank}.pt")
    torch.save(outcome(train("protonet", steps=3, out_dir=out / "grow")), out / f"grow.rank{rank}.pt")  # fmt: skip
    resumed = train("protonet", steps=6, out_dir=out / "shrink")
    torch.save(outcome(resumed) | {"resumed_from": resumed.resumed_from}, out / f"shrink.rank{rank}.pt")  # fmt: skip


class _Fails:
    """Makes rank 1 exit abruptly (as a crash or a kill would) or hang inside its third
    meta-update."""

    def __init__(self, learner, rank: int, how: str) -> None:
        self.calls, self.rank, self.how, self.inner = 0, rank, how, learner.meta_loss

    def __call__(self, batch):
        self.calls += 1
        if self.rank == 1 and self.calls == 3:
            print(f"rank 1: {self.how} now", file=sys.stderr, flush=True)
            if self.how == "exit":
                os._exit(3)
            time.sleep(600)
        return self.inner(batch)


def fail(out: Path, rank: int, how: str) -> None:
    learner = build("protonet")
    learner.meta_loss = _Fails(learner, rank, how)
    train_set, val_set, _ = splits()
    meta_fit(learner, train_set, val_set, **TASK, steps=50, meta_batch=META_BATCH, seed=0,
             val_every=25, val_episodes=4, val_ways=2, progress=False, out_dir=out / how)  # fmt: skip


if __name__ == "__main__":
    scenario, folder, rank = sys.argv[1], Path(sys.argv[2]), int(os.environ["RANK"])
    if scenario == "suite":
        suite(folder, rank)
    else:
        fail(folder, rank, scenario)
