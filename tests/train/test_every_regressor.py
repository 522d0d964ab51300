"""meta_fit with every regression-capable method on real regression tasks (pbmc68k: genes
from a 12-gene panel in held-out cell types): exact resume after a stop, the best step chosen
by the lowest validation MSE with its R² reported, and clear refusals of mismatched data."""

from __future__ import annotations

import functools

import pytest
import torch

from maml_helpers import torch_threads
from medmeta import algorithms
from medmeta.algorithms import MetaLearner
from medmeta.data.regression_protocols import expression_tasks
from medmeta.nn import MLP
from medmeta.train import load_checkpoint, meta_fit

REGRESSORS = algorithms.available("regression")
SMALL = {"reptile": {"inner_steps": 2, "eval_steps": 2}}
PANEL = 12


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@functools.cache
def _split():
    return expression_tasks(inputs=PANEL, targets=10)


def _learner(name: str, seed: int) -> MetaLearner:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = MLP(PANEL, hidden=(16,), batch_norm=False)
        hparams = {"inner_steps": 1, "eval_steps": 2} | SMALL.get(name, {})
        return algorithms.create(name, backbone, ways=1, task="regression",
                                 input_shape=(PANEL,), **hparams)  # fmt: skip


def _fit(learner: MetaLearner, out_dir, steps: int):
    split = _split()
    return meta_fit(
        learner, split.train, split.test, ways=1, shots=5, queries=5, steps=steps,
        meta_batch=3, seed=0, lr=1e-2, val_every=2, val_episodes=6, log_every=1,
        out_dir=out_dir, progress=False,
    )  # fmt: skip


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", REGRESSORS)
def test_exact_resume_and_best_step_by_validation_mse(name, tmp_path):
    """Stop at step 2 of 6, resume in a new learner with other weights: bit-identical to
    the uninterrupted run. The kept weights are those of the step with the lowest
    validation MSE; its R² is the reported best accuracy."""
    whole = _learner(name, seed=0)
    ref = _fit(whole, tmp_path / "whole", steps=6)
    _fit(_learner(name, seed=0), tmp_path / "stopped", steps=2)
    resumed = _learner(name, seed=1)
    res = _fit(resumed, tmp_path / "stopped", steps=6)
    assert res.resumed_from == 2 and res.last_step == 6

    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "stopped"))
    assert _same(a["learner"]["state_dict"], b["learner"]["state_dict"]), name
    assert _same(whole.state_dict(), resumed.state_dict()), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(ref.history) == strip(res.history)

    validated = [r for r in ref.history if r["val_loss"] is not None]
    assert [r["step"] for r in validated] == [2, 4, 6]
    best = min(validated, key=lambda r: r["val_loss"])
    assert ref.best_step == best["step"] and ref.best_accuracy == best["val_accuracy"]
    assert a["best"]["loss"] == best["val_loss"] and a["config"]["task"] == "regression"
    best_ckpt = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert _same(best_ckpt["learner"]["state_dict"], whole.state_dict())
    assert best_ckpt["learner"]["spec"]["hparams"]["task"] == "regression"
    assert all(-50 < r["accuracy"] <= 1 for r in ref.history)  # training R² (finite)


def test_mismatched_learner_and_data_are_refused(tmp_path):
    from medmeta.data import load

    split = _split()
    with pytest.raises(ValueError, match=r"holds regression tasks but maml is a classification"):
        algorithms_maml = algorithms.create("maml", MLP(PANEL, hidden=(16,)), ways=1,
                                            input_shape=(PANEL,))  # fmt: skip
        meta_fit(algorithms_maml, split.train, ways=1, shots=5, queries=5, steps=1,
                 meta_batch=1, seed=0, out_dir=tmp_path, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"reptile is a regression learner: train_set must be"):
        meta_fit(_learner("reptile", 0), load("pbmc68k_celltypes"), ways=1, shots=5,
                 queries=5, steps=1, meta_batch=1, seed=0, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="ways must be 1, got 3"):
        meta_fit(_learner("maml", 0), split.train, ways=3, shots=5, queries=5, steps=1,
                 meta_batch=1, seed=0, progress=False)  # fmt: skip
    assert not (tmp_path / "last.pt").exists()
