"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# (B, Q, N, D): episode sizes down to 1, plus odd sizes that hit the kernels' tails.
SHAPES = [
    (1, 1, 1, 1),
    (2, 5, 3, 7),
    (3, 15, 5, 64),
    (1, 9, 20, 33),
    (4, 6, 2, 130),
    (2, 75, 5, 16),
]

CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {  # (atol, rtol) of each dtype against the float64 reference
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (3e-2, 3e-2),
    torch.bfloat16: (1e-1, 5e-2),
}


def randn(
    gen: torch.Generator,
    *shape: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    requires_grad: bool = False,
) -> torch.Tensor:
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def rand(
    gen: torch.Generator, *shape: int, device: torch.device | str = "cpu", dtype=torch.float64
):
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def randint(gen: torch.Generator, high: int, *shape: int, device: torch.device | str = "cpu"):
    return torch.randint(0, high, shape, generator=gen).to(device)


def labels_covering(gen: torch.Generator, B: int, S: int, N: int, device="cpu") -> torch.Tensor:
    """[B,S] labels in [0,N) where every class occurs at least once per episode (S >= N)."""
    base = torch.arange(S) % N
    perms = (
        torch.stack([base[torch.randperm(S, generator=gen)] for _ in range(B)])
        if B
        else base[None][:0]
    )
    return perms.to(device)


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (a strided view of a larger buffer)."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
    view = big[..., 1::2]
    view.copy_(t.detach())
    return view.requires_grad_(t.requires_grad)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Compare with the float64 reference at ``dtype``'s tolerance, scaled by the magnitude."""
    atol, rtol = TOLERANCE[dtype]
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().double().cpu(),
        expected.detach().double().cpu(),
        atol=atol * scale,
        rtol=rtol,
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the count. Tiny models
    and many-small-op loops run on one: on a small shared machine, OpenMP threads that wait
    for each other at every op make them up to 20x slower under load (measured 268 s vs
    12 s for one MAML test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
