"""meta_fit with every registered segmentation algorithm on real nuclei images (DSB 2018,
32x32, tiny SegEncoder): exact resume after a stop (labels and superpixel self-supervision),
Dice validation and best-step selection, the self-supervised default for unlabelled
images, and the refusal of self-supervision for classifiers."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta import algorithms
from medmeta.data import SegmentationDataset
from medmeta.nn import Conv4, SegEncoder
from medmeta.train import load_checkpoint, meta_fit

NUCLEI = Path("/work/shared/data/dsb2018_nuclei.npz")  # CC0
SEGMENTERS = algorithms.available("segmentation")
pytestmark = pytest.mark.skipif(not NUCLEI.exists(), reason="DSB nuclei not available")


@functools.cache
def _nuclei() -> tuple[SegmentationDataset, SegmentationDataset]:
    """120 training and 60 validation images at 32x32 (grayscale)."""
    z = np.load(NUCLEI)
    img = z["images"][:180].reshape(-1, 32, 4, 32, 4, 3).mean((2, 4, 5)) / 255
    masks, names, groups = z["masks"][:180, ::4, ::4], list(z["class_names"]), z["source_ids"]
    make = lambda s: SegmentationDataset(  # noqa: E731
        img[s].astype(np.float32), masks[s], names, groups=groups[s]
    )
    return make(slice(0, 120)), make(slice(120, 180))


def _learner(name: str) -> algorithms.SegmentationLearner:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return algorithms.create(name, SegEncoder(1, channels=(8, 16), out_channels=16), ways=1)


def _fit(learner, out_dir, steps: int, train=None, **kw):
    train_set, val = _nuclei()
    return meta_fit(
        learner, train_set if train is None else train, val, ways=1, shots=1, queries=2,
        steps=steps, meta_batch=2, seed=0, val_every=2, val_episodes=3, log_every=1,
        out_dir=out_dir, progress=False, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("self_supervised", [False, True], ids=["labels", "superpixels"])
@pytest.mark.parametrize("name", SEGMENTERS)
def test_resume_is_exact(name: str, self_supervised: bool, tmp_path) -> None:
    straight = _fit(_learner(name), tmp_path / "a", 4, self_supervised=self_supervised)
    _fit(_learner(name), tmp_path / "b", 2, self_supervised=self_supervised)
    resumed = _fit(_learner(name), tmp_path / "b", 4, self_supervised=self_supervised)
    assert resumed.resumed_from == 2
    for k, v in straight.learner.state_dict().items():
        torch.testing.assert_close(resumed.learner.state_dict()[k], v, rtol=0, atol=0)
    assert straight.config["task"] == "segmentation"
    assert straight.config["self_supervised"] is self_supervised
    # the best step's validation Dice is a fraction, recorded in best.pt
    assert 0 <= straight.best_accuracy <= 1
    assert load_checkpoint(straight.best_path)["step"] == straight.best_step


def test_unlabelled_images_train_on_superpixels_by_default(tmp_path) -> None:
    train, _ = _nuclei()
    result = _fit(_learner("alpnet"), tmp_path, 2, train=np.asarray(train.images))
    assert result.config["self_supervised"] is True
    labelled = _fit(_learner("alpnet"), tmp_path / "l", 2)
    assert labelled.config["self_supervised"] is False


def test_self_supervision_needs_a_segmentation_learner() -> None:
    train, _ = _nuclei()
    learner = algorithms.create("protonet", Conv4(1, hidden=8), ways=2)
    with pytest.raises(ValueError, match="self_supervised=True needs a segmentation learner"):
        meta_fit(learner, train, ways=2, shots=1, queries=1, steps=1, meta_batch=1, seed=0,
                 self_supervised=True, progress=False)  # fmt: skip
