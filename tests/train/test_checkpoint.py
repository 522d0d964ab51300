"""Checkpoint helpers: atomic writes, weights_only-safe content, RNG states, rebuilding a
learner from a checkpoint."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import medmeta.algorithms.base as base
from medmeta.train import atomic_save, check_plain, load_checkpoint, load_learner, meta_fit
from medmeta.train.checkpoint import get_rng_state, set_rng_state
from train.standin import PBMC_FEATURES, CentroidLearner, mlp_learner, pbmc_splits


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_save({"format": "x", "w": torch.arange(3)}, path)
    atomic_save({"format": "x", "w": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # like a normally created file


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(2)}, path)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_check_plain_names_what_weights_only_would_refuse():
    check_plain({"a": [1, 2.0, "s", None, True, (torch.zeros(1), torch.Size([2]))]})
    with pytest.raises(TypeError, match=r"checkpoint\['a'\]\[1\]: numpy.float64"):
        check_plain({"a": [1, np.float64(2.0)]})
    with pytest.raises(TypeError, match="TorchVersion"):
        check_plain({"v": torch.__version__})
    with pytest.raises(TypeError, match="key"):
        check_plain({(1, 2): 3})
    with pytest.raises(TypeError):
        atomic_save({"obj": object()}, "/nonexistent/never-written.pt")


def test_load_checkpoint_refuses_other_files(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a medmeta checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trip():
    state = get_rng_state(torch.device("cpu"))
    check_plain(state)
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state, torch.device("cpu"))
    second = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_load_learner_rebuilds_from_spec_and_backbone_description(tmp_path, monkeypatch):
    # register the stand-in for create(); keep the real algorithm modules out of it
    monkeypatch.setitem(base._REGISTRY, CentroidLearner.name, CentroidLearner)
    monkeypatch.setattr(base, "_import_all", lambda: None)
    train, val, _ = pbmc_splits()
    learner = mlp_learner(seed=0, scale=2.0)
    spec = {"name": "mlp", "input_shape": [PBMC_FEATURES], "kwargs": {"hidden": [32]}}
    result = meta_fit(learner, train, val, ways=3, shots=3, queries=5, steps=4, meta_batch=2,
                      seed=0, val_every=2, val_episodes=4, val_ways=2, progress=False,
                      out_dir=tmp_path, backbone_spec=spec)  # fmt: skip
    rebuilt = load_learner(result.best_path)
    assert isinstance(rebuilt, CentroidLearner) and rebuilt.spec() == learner.spec()
    learner.eval()
    rebuilt.eval()
    x = torch.as_tensor(train.x[:12]).float()
    sx, qx = x[:6].reshape(1, 6, -1), x[6:].reshape(1, 6, -1)
    sy = torch.tensor([[0, 0, 1, 1, 2, 2]])
    torch.testing.assert_close(rebuilt.predict(sx, sy, qx), learner.predict(sx, sy, qx))
    # without a backbone description, a backbone must be passed
    plain = meta_fit(mlp_learner(), train, None, ways=3, shots=3, queries=5, steps=1,
                     meta_batch=1, seed=0, progress=False, out_dir=tmp_path / "b")  # fmt: skip
    with pytest.raises(ValueError, match="backbone"):
        load_learner(plain.last_path)
    again = load_learner(plain.last_path, backbone=mlp_learner().backbone)
    assert again.spec() == plain.learner.spec()
