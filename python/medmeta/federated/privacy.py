"""Site-level differential privacy of the aggregate: each site's update is clipped to L2
norm ``C``, the clipped updates are summed, Gaussian noise of standard deviation
``sigma * C`` is added to the sum, and the noisy sum is divided by the number of sites
sampled per round (DP-FedAvg, McMahan et al. 2018, "Learning differentially private
recurrent language models"; the Gaussian mechanism on the sum, whose L2 sensitivity to one
site is ``C``).

Where: clipping and noise are applied at the server (central DP), which sees the clipped
individual updates, as it does in FedAvg without secure aggregation. Noise added at each
site instead (local DP) would need about sqrt(sites) times more noise in the aggregate
for the same budget, which few hospitals cannot afford. Clipping at the server also holds
a site that ignores the bound to it.

The privacy budget ``epsilon`` at ``delta`` comes from Opacus's RDP accountant
(:class:`opacus.accountants.RDPAccountant`; Mironov 2017, "Rényi differential privacy")
with one step per round at sample rate ``q = sites per round / sites`` and noise
multiplier ``sigma``. It protects a whole site's participation (site-level DP). With
``q < 1`` the accountant assumes Poisson sampling of sites, while the server samples a
fixed number per round; with ``q = 1`` (the default, every site every round) there is no
sampling and the bound is exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medmeta.federated.weights import Weights, l2_norm

__all__ = ["add_noise", "clip", "epsilon"]


def clip(delta: Mapping[str, np.ndarray], max_norm: float) -> tuple[Weights, float]:
    """``(delta * min(1, max_norm / ||delta||_2), ||delta||_2)``: the update scaled to L2
    norm at most ``max_norm`` (all arrays together), and its norm before clipping."""
    norm = l2_norm(delta)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in delta.items()}, norm


def add_noise(
    total: Mapping[str, np.ndarray], std: float, generator: np.random.Generator
) -> Weights:
    """``total`` plus independent Gaussian noise ``N(0, std^2)`` on every entry, drawn from
    ``generator`` in the keys' order (seeded per round by the strategy)."""
    return {
        k: np.asarray(v, dtype=np.float64) + generator.normal(0.0, std, size=np.shape(v))
        for k, v in total.items()
    }


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The ``epsilon`` of ``rounds`` releases of the Gaussian mechanism with
    ``noise_multiplier`` at ``sample_rate``, at ``delta`` (Opacus RDP accountant;
    ``inf`` without noise)."""
    from opacus.accountants import RDPAccountant

    if noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta))
