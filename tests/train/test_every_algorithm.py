"""meta_fit with every registered algorithm on real blood-cell images (pbc_blood, tiny
Conv4): exact resume after a stop, validation and evaluation with fewer ways than
training, adaptation to fewer classes, and a clear refusal of more ways than a
fixed-width method has outputs."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from medmeta import algorithms
from medmeta.algorithms import MetaLearner
from medmeta.data.episodes import split_classes
from medmeta.eval import evaluate
from medmeta.nn import Conv4
from medmeta.train import load_checkpoint, meta_fit

IMAGE_SHAPE = (3, 28, 28)
WAYS, SHOTS, QUERIES = 3, 1, 2
#: Small, fast settings (one inner step, small SNAIL) so each algorithm trains in seconds.
SMALL = {
    "maml": {"inner_steps": 1, "eval_steps": 2},
    "fomaml": {"inner_steps": 1, "eval_steps": 2},
    "reptile": {"inner_steps": 2, "eval_steps": 2},
    "metasgd": {"inner_steps": 1, "eval_steps": 2},
    "anil": {"inner_steps": 1, "eval_steps": 2},
    "mamlpp": {"inner_steps": 2, "msl_steps": 2, "first_order_steps": 2},
    "snail": {"key_size": 8, "value_size": 4, "filters": 8, "shots": SHOTS},
}
ALGORITHMS = algorithms.available("classification")


@functools.cache
def _splits():
    """pbc_blood: classes 0-4 for meta-training, 5-6 (two classes) for validation."""
    from medmeta.data import load

    train, val = split_classes(load("pbc_blood"), classes=[[0, 1, 2, 3, 4], [5, 6]])
    return train, val


def _learner(name: str, seed: int) -> MetaLearner:
    """``name`` on a seeded tiny Conv4, made the README's way (``create`` + input_shape)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = Conv4(3, hidden=8)
        return algorithms.create(
            name, backbone, ways=WAYS, input_shape=IMAGE_SHAPE, num_classes=8,
            **SMALL.get(name, {}),
        )  # fmt: skip


def _fit(learner: MetaLearner, out_dir, steps: int):
    train, val = _splits()
    return meta_fit(
        learner, train, val, ways=WAYS, shots=SHOTS, queries=QUERIES, steps=steps,
        meta_batch=2, seed=0, val_every=2, val_episodes=4, val_ways=2, log_every=1,
        out_dir=out_dir, progress=False,
    )  # fmt: skip


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # three short trainings per algorithm (~10 s each on 2 cores)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_exact_resume_and_fewer_validation_ways(name, tmp_path):
    """Stop at step 2 of 4, resume in a new learner object with other initial weights:
    bit-identical to the uninterrupted run. Validation is 2-way on a 3-way learner."""
    whole = _learner(name, seed=0)
    ref = _fit(whole, tmp_path / "whole", steps=4)
    assert ref.best_step is not None and 0.0 <= ref.best_accuracy <= 1.0

    _fit(_learner(name, seed=0), tmp_path / "stopped", steps=2)
    resumed = _learner(name, seed=1)  # all state must come from last.pt
    res = _fit(resumed, tmp_path / "stopped", steps=4)
    assert res.resumed_from == 2 and res.last_step == 4

    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "stopped"))
    assert _same(a["learner"]["state_dict"], b["learner"]["state_dict"]), name
    assert _same(whole.state_dict(), resumed.state_dict()), name  # the best step's weights
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(ref.history) == strip(res.history)
    for key, gen in whole.generators().items():
        assert torch.equal(gen.get_state(), resumed.generators()[key].get_state())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_evaluate_and_adapt_with_fewer_ways(name):
    """A 3-way learner evaluates 2-way episodes ([.., 2] logits) and adapts to a 2-class
    support set; a fixed-width method refuses 4 ways with a clear error, a metric method
    classifies them."""
    learner = _learner(name, seed=0)
    _, val = _splits()
    result = evaluate(learner, val, ways=2, shots=2, queries=3, episodes=4, seed=0)
    assert result.confusion.shape == (2, 2)  # predict_episodes also checks [B, Q, 2] logits
    assert 0.0 <= result.accuracy <= 1.0

    x = _images(val)
    sx, sy, qx = x[[0, 1, 20, 21]], torch.tensor([0, 0, 1, 1]), x[[2, 22]]
    adapted = learner.adapt(sx, sy)
    assert adapted.ways == 2
    with torch.no_grad():
        assert adapted(qx).shape == (2, 2)
        episode = learner.eval().predict(sx[None], sy[None], qx[None])
    assert episode.shape == (1, 2, 2)

    train, _ = _splits()
    four = _images(train, per_class=1, classes=4)
    labels = torch.arange(4)
    if learner.fixed_ways:
        with pytest.raises(ValueError, match=rf"{name} was built for 3-way tasks"):
            learner.predict(four[None], labels[None], four[None])
        with pytest.raises(ValueError, match="cannot classify 4 classes"):
            learner.adapt(four, labels)
    else:
        assert learner.predict(four[None], labels[None], four[None]).shape == (1, 4, 4)


def _images(dataset, per_class: int = 20, classes: int = 2) -> torch.Tensor:
    """``per_class`` preprocessed images of each of the first ``classes`` classes of
    ``dataset``, class-major: ``[classes * per_class, 3, 28, 28]``."""
    from medmeta.data.episodes import as_features

    features = as_features(dataset.x)
    labels = torch.as_tensor(dataset.labels)
    chosen = [torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()[:classes]]
    return features[torch.cat(chosen)]


def test_resume_without_best_checkpoint_keeps_weights_and_files_consistent(tmp_path, caplog):
    """best.pt lost after training: resuming forgets the recorded best step with a warning,
    and the returned weights are those of the checkpoint the result names."""
    out = tmp_path / "run"
    _fit(_learner("protonet", seed=0), out, steps=4)
    (out / "best.pt").unlink()
    learner = _learner("protonet", seed=3)
    with caplog.at_level(logging.WARNING, logger="medmeta.train.fit"):
        result = _fit(learner, out, steps=4)
    assert "best.pt is missing" in caplog.text
    named = result.best_path if result.best_path is not None else result.last_path
    assert named.exists()
    assert _same(load_checkpoint(named)["learner"]["state_dict"], learner.state_dict())
    assert (result.best_step is None) == (result.best_path is None)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_create_needs_only_the_input_shape(name):
    """create works for every method given input_shape; methods sized from the backbone
    name input_shape in their error when it is missing."""
    learner = algorithms.create(
        name, Conv4(3, hidden=8), ways=3, input_shape=IMAGE_SHAPE, num_classes=8
    )
    assert learner.name == name and learner.ways == 3
    cls = type(learner)
    if cls.shape_hparams:
        with pytest.raises(ValueError, match=r"input_shape=\(3, 28, 28\)"):
            algorithms.create(name, Conv4(3, hidden=8), ways=3, num_classes=8)
    else:
        algorithms.create(name, Conv4(3, hidden=8), ways=3)


def test_fixed_width_learner_refuses_more_ways_before_training(tmp_path):
    learner = _learner("maml", seed=0)
    train, val = _splits()
    with pytest.raises(ValueError, match=r"maml was built for 3-way tasks .* cannot classify 4"):
        meta_fit(learner, train, val, ways=4, shots=1, queries=1, steps=1, meta_batch=1,
                 seed=0, out_dir=tmp_path, progress=False)  # fmt: skip
    assert not (tmp_path / "last.pt").exists()
