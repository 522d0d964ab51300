"""Baselines a statistician would fit on the same few-shot support set, one per episode.

* :func:`support_mean_predict`: every query gets the support targets' mean;
* :func:`ridge_predict`: ridge regression with the penalty chosen on the support set by
  (efficient) leave-one-out cross-validation over a fixed grid (scikit-learn ``RidgeCV``);
* :func:`bayesian_ridge_interval`: Bayesian ridge regression (MacKay 1992; scikit-learn
  ``BayesianRidge``), whose predictive standard deviation gives a central interval;
* :func:`scratch_mlp_predict`: the meta-learners' network (MLP and a one-unit head) fitted
  from a seeded random initialisation on the support set alone with Adam, all episodes at
  once (each episode its own weights), on targets standardised with the support statistics
  exactly as the meta-learners standardise them.

Shapes: ``support_x [B, K, F]``, ``support_y [B, K]``, ``query_x [B, Q, F]`` (tensors or
arrays); predictions ``[B, Q]`` (float64 numpy). scikit-learn is imported lazily
(``pip install "medmeta[baselines]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medmeta.data.regression_tasks import standardise, support_statistics, unstandardise

__all__ = [
    "RIDGE_ALPHAS",
    "bayesian_ridge_interval",
    "ridge_predict",
    "scratch_mlp_predict",
    "support_mean_predict",
]

#: The ridge penalties tried by leave-one-out on each support set.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))

_SKLEARN = (
    "the ridge baselines need scikit-learn; install the baselines extra: "
    'pip install "medmeta[baselines]"'
)


def _sklearn_linear_model() -> Any:
    try:
        from sklearn import linear_model
    except ImportError as error:
        raise ImportError(_SKLEARN) from error
    return linear_model


def _arrays(
    support_x: Any, support_y: Any, query_x: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sx, sy, qx = (np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float64)
                  for a in (support_x, support_y, query_x))  # fmt: skip
    if sx.ndim != 3 or qx.ndim != 3 or sy.ndim != 2 or sx.shape[:2] != sy.shape:
        raise ValueError(
            "expected support_x [B, K, F], support_y [B, K], query_x [B, Q, F]; got "
            f"{list(sx.shape)}, {list(sy.shape)}, {list(qx.shape)}"
        )
    if qx.shape[0] != sx.shape[0] or qx.shape[2] != sx.shape[2]:
        raise ValueError(f"query_x {list(qx.shape)} does not match support_x {list(sx.shape)}")
    if not np.isfinite(sy).all():
        b, k = np.argwhere(~np.isfinite(sy))[0]
        raise ValueError(f"support_y holds a non-finite target at episode {b}, position {k}")
    return sx, sy, qx


def support_mean_predict(support_y: Any, queries: int) -> np.ndarray:
    """The support mean for every query: ``[B, K]`` -> ``[B, queries]``."""
    sy = np.asarray(torch.as_tensor(support_y).detach().cpu(), dtype=np.float64)
    return np.repeat(sy.mean(1, keepdims=True), queries, axis=1)


def ridge_predict(
    support_x: Any, support_y: Any, query_x: Any, alphas: Sequence[float] = RIDGE_ALPHAS
) -> np.ndarray:
    """Ridge regression (with intercept) per episode, the penalty chosen from ``alphas`` by
    leave-one-out on the support set (``RidgeCV``'s efficient LOO). ``[B, Q]``."""
    lm = _sklearn_linear_model()
    sx, sy, qx = _arrays(support_x, support_y, query_x)
    out = np.empty(qx.shape[:2])
    for b in range(len(sx)):
        model = lm.RidgeCV(alphas=np.array(alphas, dtype=np.float64)).fit(sx[b], sy[b])
        out[b] = model.predict(qx[b])
    return out


def bayesian_ridge_interval(
    support_x: Any, support_y: Any, query_x: Any, level: float = 0.9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bayesian ridge per episode: ``(mean, lower, upper)``, each ``[B, Q]``, the interval
    ``mean ± z std`` from the predictive standard deviation (noise included)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lm = _sklearn_linear_model()
    sx, sy, qx = _arrays(support_x, support_y, query_x)
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    mean, std = np.empty(qx.shape[:2]), np.empty(qx.shape[:2])
    for b in range(len(sx)):
        model = lm.BayesianRidge().fit(sx[b], sy[b])
        mean[b], std[b] = model.predict(qx[b], return_std=True)
    return mean, mean - z * std, mean + z * std


def _mlp_parameters(
    features: int, hidden: Sequence[int], tasks: int, seed: int
) -> tuple[Any, dict[str, torch.Tensor]]:
    """A seeded MLP + 1-unit head (the meta-learners' architecture without batch norm) and
    its parameters copied to ``[tasks, ...]`` leaves."""
    from medmeta.nn import MLP
    from medmeta.nn.layers import Linear, TaskSequential

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = MLP(features, hidden=tuple(hidden), batch_norm=False)
        net = TaskSequential(body, Linear(hidden[-1] if hidden else features, 1))
    params = {
        k: p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())).requires_grad_()
        for k, p in net.named_parameters()
    }
    return net, params


def scratch_mlp_predict(
    support_x: Any,
    support_y: Any,
    query_x: Any,
    *,
    hidden: Sequence[int] = (64, 64),
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """The MLP fitted from scratch on each support set: ``steps`` full-batch Adam steps on
    the mean squared error of the standardised support targets, from one seeded
    initialisation (the same for every episode), in float32 like the meta-learners.
    Episodes are independent: each has its own weights and the loss is a sum over
    episodes, so Adam's per-element updates never mix them. ``[B, Q]`` in the targets'
    units."""
    sx, sy, qx = (torch.from_numpy(a).float() for a in _arrays(support_x, support_y, query_x))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    mean, scale = support_statistics(sy)
    z = standardise(sy, mean, scale)
    net, params = _mlp_parameters(sx.shape[2], hidden, len(sx), seed)
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            out = net.forward_tasks(sx, params)[..., 0]
            loss = (out - z).pow(2).mean(1).sum()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        pred = unstandardise(net.forward_tasks(qx, params)[..., 0], mean, scale)
    return pred.double().numpy()
