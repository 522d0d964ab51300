"""Regression metrics (MSE, R², interval coverage and width, CIs over episodes) against
brute force, the bootstrap predictive interval against a written-out reference and its
coverage on data where the model is right, and the statistician's baselines (ridge, Bayesian
ridge, the MLP from scratch) against closed forms and per-episode fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maml_helpers import torch_threads
from medmeta.algorithms.regressor import bootstrap_interval
from medmeta.eval import regression as R
from medmeta.eval import regression_baselines as RB


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: one thread (OpenMP waits dominate on a loaded 2-core machine)."""
    with torch_threads(1):
        yield


def _data(E=6, Q=5, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(E, Q)) * 2 + 1
    pred = target + rng.normal(size=(E, Q))
    return pred, target


# ------------------------------------------------------------------------- metrics


def test_mse_and_r2_equal_brute_force():
    pred, target = _data()
    for e in range(len(pred)):
        sse = sum((t - p) ** 2 for p, t in zip(pred[e], target[e], strict=True))
        m = sum(target[e]) / len(target[e])
        sst = sum((t - m) ** 2 for t in target[e])
        assert R.mse(pred, target)[e] == pytest.approx(sse / len(target[e]), rel=1e-12)
        assert R.r2(pred, target)[e] == pytest.approx(1 - sse / sst, rel=1e-12)


def test_r2_reference_points_and_undefined_episodes():
    target = np.array([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    assert R.r2(target, target)[0] == pytest.approx(1.0)
    assert R.r2(np.full((2, 3), 2.0), target)[0] == pytest.approx(0.0)  # the query mean
    assert math.isnan(R.r2(target, target)[1])  # constant queries: undefined
    summary = R.summarize_regression(np.full((2, 3), 2.0), target)
    assert summary["r2_undefined"] == 1 and summary["r2"] == pytest.approx(0.0)


def test_coverage_and_width_equal_brute_force():
    pred, target = _data(E=7, Q=9, seed=3)
    half = np.abs(np.random.default_rng(4).normal(size=pred.shape))
    lower, upper = pred - half, pred + half
    cov, width = R.coverage(lower, upper, target), R.interval_width(lower, upper)
    for e in range(len(pred)):
        inside = sum(lo <= t <= hi for lo, hi, t in zip(lower[e], upper[e], target[e], strict=True))
        assert cov[e] == pytest.approx(inside / pred.shape[1])
        assert width[e] == pytest.approx(2 * sum(half[e]) / pred.shape[1])
    summary = R.summarize_regression(pred, target, lower, upper)
    assert summary["coverage"] == pytest.approx(cov.mean())
    assert summary["coverage_ci95"] == pytest.approx(1.96 * cov.std() / math.sqrt(len(cov)))
    assert summary["mse_ci95"] == pytest.approx(1.96 * R.mse(pred, target).std() / math.sqrt(7))


def test_paired_difference():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.5, 2.5, 3.0])
    mean, ci = R.paired_difference(a, b)
    d = a - b
    assert mean == pytest.approx(d.mean()) and ci == pytest.approx(1.96 * d.std() / math.sqrt(3))


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match=r"must both be \[E, Q\], got \[2, 3\] and \[2, 4\]"):
        R.mse(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="target holds a non-finite value at episode 1, query 2"):
        R.r2(np.zeros((2, 3)), np.array([[0, 1, 2], [0, 1, np.nan]]))
    with pytest.raises(ValueError, match="upper is below lower"):
        R.coverage(np.ones((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)))


# ------------------------------------------------------------------------ intervals


def _support_mean(sx, sy, qx):
    return sy.mean(1, keepdim=True).expand(-1, qx.shape[1])


def test_bootstrap_interval_equals_written_out_reference():
    """Members = the support mean of each resample; the written-out ensemble (same draws):
    member variance plus the out-of-bag residual variance, mean ± z sd."""
    g = torch.Generator().manual_seed(0)
    B, K, Q, M = 3, 6, 4, 5
    sx, qx = torch.randn(B, K, 2, generator=g), torch.randn(B, Q, 2, generator=g)
    sy = torch.randn(B, K, generator=g, dtype=torch.float64) + 3
    out = bootstrap_interval(_support_mean, sx, sy, qx, members=M, level=0.8,
                             generator=torch.Generator().manual_seed(7))  # fmt: skip
    draws = torch.randint(K, (B, M, K), generator=torch.Generator().manual_seed(7))
    z = 1.2815515655446004  # the normal 0.9 quantile
    for b in range(B):
        means = [float(sy[b, draws[b, m]].mean()) for m in range(M)]
        oob = [(float(sy[b, i]) - means[m]) ** 2
               for m in range(M) for i in range(K) if i not in draws[b, m].tolist()]  # fmt: skip
        noise = sum(oob) / len(oob)
        centre = sum(means) / M
        spread = sum((v - centre) ** 2 for v in means) / (M - 1)
        sd = math.sqrt(spread + noise)
        assert float(out.mean[b, 0]) == pytest.approx(centre, rel=1e-12)
        assert float(out.noise_std[b]) == pytest.approx(math.sqrt(noise), rel=1e-12)
        assert float(out.lower[b, 2]) == pytest.approx(centre - z * sd, rel=1e-9)
        assert float(out.upper[b, 3]) == pytest.approx(centre + z * sd, rel=1e-9)


def test_bootstrap_interval_covers_when_the_model_is_right():
    """Calibration check: Gaussian targets and the support mean as the model (correct):
    the 90% interval covers about 90% of 2000 episodes' queries."""
    g = torch.Generator().manual_seed(1)
    B, K, Q = 2000, 20, 5
    y = torch.randn(B, K + Q, generator=g, dtype=torch.float64) * 2 + 5
    x = torch.zeros(B, K + Q, 1)
    out = bootstrap_interval(_support_mean, x[:, :K], y[:, :K], x[:, K:], members=20,
                             generator=torch.Generator().manual_seed(2))  # fmt: skip
    cov = R.coverage(out.lower.numpy(), out.upper.numpy(), y[:, K:].numpy()).mean()
    assert 0.87 < cov < 0.93, cov


def test_bootstrap_interval_errors():
    sx, sy, qx = torch.zeros(1, 3, 2), torch.zeros(1, 3), torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="members must be an int >= 2"):
        bootstrap_interval(_support_mean, sx, sy, qx, members=1)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        bootstrap_interval(_support_mean, sx, sy, qx, level=90)
    with pytest.raises(ValueError, match="'support_y' holds a non-finite target"):
        bootstrap_interval(_support_mean, sx, torch.tensor([[0.0, math.nan, 1.0]]), qx)


# ------------------------------------------------------------------------ baselines


def _linear_episodes(B=4, K=8, Q=5, F=3, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, K + Q, F))
    w = rng.normal(size=(B, F))
    y = (x * w[:, None]).sum(-1) + 2.0 + noise * rng.normal(size=(B, K + Q))
    return x[:, :K], y[:, :K], x[:, K:], y[:, K:]


def test_ridge_with_one_penalty_equals_the_closed_form():
    pytest.importorskip("sklearn")
    sx, sy, qx, _ = _linear_episodes()
    got = RB.ridge_predict(sx, sy, qx, alphas=[0.7])
    for b in range(len(sx)):
        xm, ym = sx[b].mean(0), sy[b].mean()
        xc = sx[b] - xm
        w = np.linalg.solve(xc.T @ xc + 0.7 * np.eye(3), xc.T @ (sy[b] - ym))
        np.testing.assert_allclose(got[b], (qx[b] - xm) @ w + ym, rtol=1e-8)


def test_bayesian_ridge_interval_brackets_its_mean():
    pytest.importorskip("sklearn")
    sx, sy, qx, qy = _linear_episodes(K=12, noise=0.3)
    mean, lower, upper = RB.bayesian_ridge_interval(sx, sy, qx)
    assert mean.shape == lower.shape == qy.shape and (lower < mean).all() and (mean < upper).all()
    assert R.mse(mean, qy).mean() < 0.5 * R.mse(RB.support_mean_predict(sy, 5), qy).mean()


def test_scratch_mlp_fits_each_episode_on_its_own():
    """Episodes are independent (one fitted alone predicts the same), and the fit learns a
    linear relation: far below the support mean's error on held-out queries."""
    sx, sy, qx, qy = _linear_episodes(B=3, K=30, noise=0.05)
    together = RB.scratch_mlp_predict(sx, sy, qx, steps=150, lr=1e-2)
    alone = RB.scratch_mlp_predict(sx[1:2], sy[1:2], qx[1:2], steps=150, lr=1e-2)
    np.testing.assert_allclose(together[1:2], alone, rtol=1e-5, atol=1e-5)
    assert R.mse(together, qy).mean() < 0.3 * R.mse(RB.support_mean_predict(sy, 5), qy).mean()


def test_baselines_refuse_nan_targets_and_bad_shapes():
    sx, sy, qx, _ = _linear_episodes()
    sy = sy.copy()
    sy[2, 1] = np.nan
    with pytest.raises(
        ValueError, match="support_y holds a non-finite target at episode 2, position 1"
    ):
        RB.scratch_mlp_predict(sx, sy, qx)
    with pytest.raises(ValueError, match=r"expected support_x \[B, K, F\]"):
        RB.ridge_predict(sx[0], sy[0], qx[0])


def test_a_diverged_interval_is_counted_not_raised():
    target = np.zeros((3, 2))
    lower, upper = np.full((3, 2), -1.0), np.full((3, 2), 1.0)
    upper[2, 0] = np.inf  # one bootstrap member diverged in episode 2
    lower[1, 1] = np.nan
    width = R.interval_width(lower, upper)
    np.testing.assert_allclose(width[0], 2.0)
    assert np.isinf(width[2]) and np.isinf(width[1])
    summary = R.summarize_regression(np.zeros((3, 2)), target, lower, upper)
    assert summary["nonfinite_intervals"] == 2 and summary["width"] == pytest.approx(2.0)
    assert summary["coverage"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert summary["nonfinite_predictions"] == 0
