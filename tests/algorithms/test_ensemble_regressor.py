"""The deployable bootstrap ensemble (:func:`adapt_ensemble`): the same members, noise level
and interval as :func:`bootstrap_interval` on the same resamples, for every regression learner;
deterministic for a seed; clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from maml_helpers import torch_threads
from medmeta import algorithms
from medmeta.algorithms.ensemble_regressor import EnsembleRegressor, adapt_ensemble
from medmeta.algorithms.regressor import bootstrap_interval
from medmeta.nn import MLP

F_IN = 5


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _learner(name: str):
    torch.manual_seed(0)
    backbone = MLP(F_IN, hidden=[16], batch_norm=False)
    return algorithms.create(name, backbone, ways=1, task="regression", input_shape=(F_IN,))


def _task(K: int = 12, Q: int = 9):
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(K, F_IN, generator=g), torch.randn(Q, F_IN, generator=g)
    y = 3 * x[:, 0] - x[:, 1] + 20 + 0.3 * torch.randn(K, generator=g)
    return x, y, q


@pytest.mark.parametrize("name", algorithms.available("regression"))
def test_ensemble_equals_the_batched_bootstrap_interval(name):
    learner = _learner(name)
    x, y, q = _task()
    ensemble = adapt_ensemble(learner, x, y, members=5, level=0.8,
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
    got = ensemble.interval(q)
    want = bootstrap_interval(learner.predict, x[None], y[None], q[None], members=5, level=0.8,
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert ensemble(q).shape == (len(q), 5)
    for field in ("mean", "lower", "upper", "member_std"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field)[0], atol=1e-4,
                                   rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(got.noise_std, want.noise_std, atol=1e-5, rtol=1e-5)
    assert bool((got.lower < got.mean).all() and (got.mean < got.upper).all())


def test_interval_is_the_written_out_normal_interval():
    x, y, q = _task()
    ensemble = adapt_ensemble(_learner("maml"), x, y, members=4, level=0.9)
    with torch.no_grad():
        members = ensemble(q).double()
    sd = (members.var(1) + float(ensemble.noise_std) ** 2).sqrt()
    got = ensemble.interval(q)
    torch.testing.assert_close(got.upper.double(), members.mean(1) + 1.6448536269514722 * sd,
                               atol=1e-5, rtol=1e-6)  # fmt: skip
    assert ensemble.z == pytest.approx(1.6448536269514722)


def test_same_seed_same_ensemble_other_seed_other_resamples():
    x, y, q = _task()
    learner = _learner("reptile")
    a, b, c = (adapt_ensemble(learner, x, y, members=3, generator=torch.Generator().manual_seed(s))
               for s in (7, 7, 8))  # fmt: skip
    with torch.no_grad():
        assert torch.equal(a(q), b(q))
        assert not torch.equal(a(q), c(q))


def test_bad_input_is_refused():
    x, y, _ = _task()
    learner = _learner("maml")
    with pytest.raises(ValueError, match="members must be an int >= 2"):
        adapt_ensemble(learner, x, y, members=1)
    with pytest.raises(ValueError, match="level must be in"):
        adapt_ensemble(learner, x, y, level=1.5)
    with pytest.raises(ValueError, match="non-finite target"):
        adapt_ensemble(learner, x, torch.where(torch.arange(len(y)) == 2, torch.nan, y))
    classifier = algorithms.create("protonet", MLP(F_IN, hidden=[8]), ways=2, input_shape=(F_IN,))
    with pytest.raises(ValueError, match="needs a regression learner"):
        adapt_ensemble(classifier, x, y)
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleRegressor([learner.adapt(x, y)], 1.0, 0.9)
