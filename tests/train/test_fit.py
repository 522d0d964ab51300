"""meta_fit on a tiny real task (pbmc68k cell types, novel classes for validation and test):
learning, logs, checkpoints, best-step selection, exact resume and bad arguments."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

import medmeta.train.fit as fit_module
from medmeta.data import DataError
from medmeta.eval import evaluate, plots
from medmeta.nn import MLP
from medmeta.train import CSV_FIELDS, load_checkpoint, meta_fit, read_csv
from train.standin import (
    PBMC_FEATURES,
    CentroidLearner,
    CustomStepLearner,
    TorchCentroidLearner,
    mlp_learner,
    pbmc_splits,
)

TASK = {"ways": 3, "shots": 3, "queries": 5}


def _fit(learner, out_dir=None, *, steps=8, val=True, **kw):
    train, val_set, _ = pbmc_splits()
    args = {
        **TASK,
        "steps": steps,
        "meta_batch": 2,
        "seed": 0,
        "val_every": 4,
        "val_episodes": 10,
        "val_ways": 2,
        "log_every": 2,
        "progress": False,
        "out_dir": out_dir,
    }
    args.update(kw)
    return meta_fit(learner, train, val_set if val else None, **args)


def test_learns_novel_classes_and_writes_logs(tmp_path):
    test = pbmc_splits()[2]
    learner = mlp_learner(seed=0)
    before = evaluate(learner, test, ways=2, shots=3, queries=5, episodes=60, seed=0)
    result = _fit(learner, tmp_path, steps=40, meta_batch=4, val_every=10, val_episodes=20,
                  log_every=5, progress=True)  # fmt: skip
    assert result.learner is learner and result.last_step == 40
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    after = evaluate(learner, test, ways=2, shots=3, queries=5, episodes=60, seed=0)
    # held-out test classes: above chance, and better than before meta-training
    assert after.accuracy - after.ci95 > 0.5
    assert after.accuracy > before.accuracy + 0.05
    # best validation step
    vals = [(r["step"], r["val_accuracy"]) for r in result.history if r["val_accuracy"] is not None]
    assert [s for s, _ in vals] == [10, 20, 30, 40]
    best_step, best_acc = max(vals, key=lambda sv: (sv[1], -sv[0]))
    assert (result.best_step, result.best_accuracy) == (best_step, best_acc)
    # logs
    rows = read_csv(result.csv_path)
    assert result.csv_path.read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    for row, h in zip(rows, result.history, strict=True):
        assert row["loss"] == h["loss"] and row["val_accuracy"] == h["val_accuracy"]
        assert row["lr"] == 1e-3 and row["time"] > 0
    assert rows[1]["val_ci95"] == result.history[1]["val_ci95"] > 0
    assert rows[0]["val_accuracy"] is None
    log = json.loads(result.json_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert log["finished"] and log["step"] == 40 and log["best"]["step"] == best_step
    assert log["config"]["learner"] == learner.spec() and len(log["history"]) == 8
    png = plots.plot_learning_curves(result, tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plots.plot_learning_curves(result.json_path, tmp_path / "c2.png").stat().st_size > 10_000


def test_checkpoints_load_weights_only_and_hold_the_best_weights(tmp_path):
    learner = mlp_learner(seed=0)
    spec = {"name": "mlp", "input_shape": [PBMC_FEATURES], "kwargs": {"hidden": [32]}}
    result = _fit(learner, tmp_path, steps=8, backbone_spec=spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "last.pt",
        "log.csv",
        "log.json",
    ]
    for path in (result.last_path, result.best_path):
        raw = torch.load(path, weights_only=True)  # plain data only
        assert raw["learner"]["spec"] == learner.spec() and raw["backbone"] == spec
    last = load_checkpoint(result.last_path)
    best = load_checkpoint(result.best_path)
    assert last["kind"] == "last" and last["step"] == 8
    assert best["kind"] == "best" and best["step"] == result.best_step
    assert best["val_accuracy"] == result.best_accuracy
    assert set(last) >= {"optimizer", "sampler", "rng", "history", "best", "config"}
    for k, v in learner.state_dict().items():
        assert torch.equal(v, best["learner"]["state_dict"][k]), k


def test_best_step_is_selected_and_loaded(tmp_path, monkeypatch):
    scripted = iter([0.6, 0.9, 0.7])
    monkeypatch.setattr(fit_module, "_validate", lambda *a: (next(scripted), 0.01, 0.5))
    learner = mlp_learner(seed=0)
    result = _fit(learner, tmp_path, steps=6, val_every=2, checkpoint_every=100)
    assert [r["val_accuracy"] for r in result.history] == [0.6, 0.9, 0.7]
    assert (result.best_step, result.best_accuracy, result.best_ci95) == (4, 0.9, 0.01)
    best = load_checkpoint(result.best_path)["learner"]["state_dict"]
    last = load_checkpoint(result.last_path)["learner"]["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in learner.state_dict().items())
    assert not all(torch.equal(v, last[k]) for k, v in learner.state_dict().items())
    # without a validation set: no best.pt, the final weights are returned
    learner2 = mlp_learner(seed=0)
    r2 = _fit(learner2, tmp_path / "noval", steps=6, val=False)
    assert r2.best_step is None and r2.best_path is None
    assert not (tmp_path / "noval" / "best.pt").exists()
    final = load_checkpoint(r2.last_path)["learner"]["state_dict"]
    assert all(torch.equal(v, final[k]) for k, v in learner2.state_dict().items())


def test_validation_uses_the_same_episodes_each_time():
    torch.manual_seed(0)
    learner = CentroidLearner(MLP(PBMC_FEATURES, hidden=(32,), batch_norm=False), 3)
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)  # the weights never change
    result = _fit(learner, steps=12, optimizer=frozen)
    vals = [r["val_accuracy"] for r in result.history if r["val_accuracy"] is not None]
    assert len(vals) == 3 and len(set(vals)) == 1


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    kw = {"steps": 9, "checkpoint_every": 3, "log_every": 2,
          "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.7)}  # fmt: skip
    # dropout draws from the training RNG, the sampler from its generator: both must resume
    whole = mlp_learner(seed=0, dropout=0.3)
    ref = _fit(whole, tmp_path / "a", **kw)

    crashed = mlp_learner(seed=0, dropout=0.3)
    crashed.crash_after = 4  # dies inside step 4; the last checkpoint is at step 3
    with pytest.raises(KeyboardInterrupt):
        _fit(crashed, tmp_path / "b", **kw)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    assert not list((tmp_path / "b").glob("*.tmp"))

    fresh = mlp_learner(seed=123, dropout=0.3)  # other initial weights: all comes from last.pt
    res = _fit(fresh, tmp_path / "b", **kw)
    assert res.resumed_from == 3 and res.last_step == 9
    assert _states_equal(whole.state_dict(), fresh.state_dict())
    a, b = (load_checkpoint(p / "last.pt") for p in (tmp_path / "a", tmp_path / "b"))
    assert _states_equal(a["learner"]["state_dict"], b["learner"]["state_dict"])
    for (ka, va), (kb, vb) in zip(
        a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True
    ):
        assert ka == kb and _states_equal(va, vb)
    assert torch.equal(a["sampler"]["generator"], b["sampler"]["generator"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(ref.history) == strip(res.history)
    assert (ref.best_step, ref.best_accuracy) == (res.best_step, res.best_accuracy)
    # the CSV holds each logged step once (the rows after step 3 of the crashed run replaced)
    assert strip(read_csv(tmp_path / "a" / "log.csv")) == strip(
        read_csv(tmp_path / "b" / "log.csv")
    )

    # resuming a finished run trains nothing and returns the same (best) weights
    again = mlp_learner(seed=7, dropout=0.3)
    r3 = _fit(again, tmp_path / "b", **kw)
    assert r3.resumed_from == 9 and _states_equal(again.state_dict(), whole.state_dict())
    # other settings are refused; resume=False starts afresh
    with pytest.raises(ValueError, match="other settings"):
        _fit(mlp_learner(dropout=0.3), tmp_path / "b", **{**kw, "meta_batch": 3})
    r4 = _fit(mlp_learner(seed=0, dropout=0.3), tmp_path / "b", resume=False, **kw)
    assert r4.resumed_from is None and strip(r4.history) == strip(ref.history)


def test_global_rng_untouched_and_amp_is_a_noop_on_cpu():
    state = torch.get_rng_state()
    a = mlp_learner(seed=0, dropout=0.3)
    _fit(a, steps=4, val=False)
    assert torch.equal(state, torch.get_rng_state())
    b = mlp_learner(seed=0, dropout=0.3)
    r = _fit(b, steps=4, val=False, amp=True)
    assert r.config["amp_dtype"] is None
    assert _states_equal(a.state_dict(), b.state_dict())


def test_bad_arguments(tmp_path):
    learner = mlp_learner()
    out = tmp_path / "never"
    with pytest.raises(DataError, match="7-way episodes need 7 classes"):
        _fit(learner, out, ways=7)
    with pytest.raises(DataError, match="3-way episodes need 3 classes"):
        _fit(learner, out, val_ways=None)  # the validation part has 2 classes
    assert not out.exists()  # refused before anything is written
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            _fit(learner, out, steps=bad)
    with pytest.raises(ValueError, match="meta_batch"):
        _fit(learner, out, meta_batch=0)
    with pytest.raises(ValueError, match="val_every"):
        _fit(learner, out, val_every=0)
    with pytest.raises(ValueError, match="lr"):
        _fit(learner, out, lr=0.0)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="learner's parameters"):
        _fit(learner, out, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="MetaLearner"):
        meta_fit(other, pbmc_splits()[0], **TASK, steps=1, meta_batch=1, seed=0)
    assert not out.exists()


def test_non_finite_loss_is_reported(monkeypatch):
    learner = mlp_learner()

    def nan_loss(batch):
        loss = learner.backbone(batch.query_x.flatten(0, 1)).sum() * math.nan
        return loss, torch.zeros(batch.batch_size)

    monkeypatch.setattr(learner, "meta_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="step 1"):
        _fit(learner, steps=3, val=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_paths_on_cpu(tmp_path, monkeypatch, caplog, dtype):
    # CPU autocast stands in for CUDA: force the precision meta_fit picks on a GPU
    monkeypatch.setattr(fit_module, "_amp_dtype", lambda amp, device: dtype)
    kw = {"steps": 6, "val": False, "checkpoint_every": 2, "log_every": 2}

    def make(seed: int = 0) -> TorchCentroidLearner:
        torch.manual_seed(seed)
        return TorchCentroidLearner(MLP(PBMC_FEATURES, hidden=(32,), dropout=0.2), 3)

    whole = make()
    ref = _fit(whole, tmp_path / "a", **kw)
    assert whole.seen_dtype == dtype
    assert all(math.isfinite(r["loss"]) for r in ref.history)
    last = load_checkpoint(ref.last_path)
    assert last["config"]["amp_dtype"] == str(dtype).removeprefix("torch.")
    assert (last["scaler"] is not None) == (dtype == torch.float16)
    # exact resume holds under mixed precision (the grad scaler state included)
    crashed = make()
    crashed.crash_after = 4
    with pytest.raises(KeyboardInterrupt):
        _fit(crashed, tmp_path / "b", **kw)
    resumed = make(5)
    assert _fit(resumed, tmp_path / "b", **kw).resumed_from == 2
    assert _states_equal(whole.state_dict(), resumed.state_dict())
    # a learner with its own meta_train_step runs whole under autocast (fp16: unscaled, warned)
    torch.manual_seed(0)
    custom = CustomStepLearner(MLP(PBMC_FEATURES, hidden=(32,)), 3)
    with caplog.at_level(logging.WARNING, logger="medmeta.train.fit"):
        r = _fit(custom, steps=2, val=False, log_every=1)
    assert custom.seen_dtype == dtype and r.history[-1]["extra"] == {"custom": 2.0}
    assert ("without loss scaling" in caplog.text) == (dtype == torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-scaler"])
def test_mixed_precision_on_cuda(tmp_path, monkeypatch, bf16):
    if not bf16:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    elif not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    learner = mlp_learner(seed=0)
    result = _fit(learner, tmp_path, steps=20, device="cuda", meta_batch=4)
    assert result.config["amp_dtype"] == ("bfloat16" if bf16 else "float16")
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    last = load_checkpoint(Path(result.last_path))
    assert (last["scaler"] is None) == bf16
    assert next(learner.parameters()).device.type == "cuda"
