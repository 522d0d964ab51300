"""masked_prototypes: masked average pooling for few-shot segmentation."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, rand, randn, strided
from medmeta import ops
from medmeta.ops import _reference

# (B, S, C, D, H, W)
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 3, 2, 5, 4, 6),
    (1, 5, 2, 64, 16, 16),
    (3, 1, 3, 7, 9, 1),
    (2, 2, 1, 33, 50, 50),
    # many classes (segmentation: class and local prototypes): pixel blocks of grad_feat
    # smaller than a map, whole and partial
    (1, 5, 42, 24, 16, 16),
    (1, 1, 22, 10, 32, 32),
    (2, 2, 9, 5, 7, 13),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, gen, shape):
    device, dtype = device_dtype
    B, S, C, D, H, W = shape
    f = randn(gen, B, S, D, H, W, device=device, requires_grad=True)
    m = (rand(gen, B, S, C, H, W, device=device) + 0.05).requires_grad_()
    fd, md = f.detach().to(dtype).requires_grad_(), m.detach().to(dtype).requires_grad_()
    out = ops.masked_prototypes(fd, md)
    ref = _reference.masked_prototypes(f, m)
    assert out.shape == (B, C, D) and out.dtype == dtype
    assert_close(out, ref, dtype)
    g = randn(gen, B, C, D, device=device)
    got = torch.autograd.grad(out, (fd, md), g.to(dtype))
    want = torch.autograd.grad(ref, (f, m), g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, dtype)


def test_gradcheck_and_gradgradcheck(device, gen):
    f = randn(gen, 2, 2, 3, 4, 5, device=device, requires_grad=True)
    m = (rand(gen, 2, 2, 2, 4, 5, device=device) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(ops.masked_prototypes, (f, m))
    assert torch.autograd.gradgradcheck(ops.masked_prototypes, (f, m))


def test_binary_mask_is_the_mean_of_the_masked_pixels(gen):
    f = randn(gen, 1, 1, 2, 3, 3)
    m = torch.zeros(1, 1, 1, 3, 3, dtype=torch.float64)
    m[..., 0, :2] = 1.0
    out = ops.masked_prototypes(f, m)
    torch.testing.assert_close(out[0, 0], f[0, 0, :, 0, :2].mean(-1))


def test_non_contiguous_and_empty(gen):
    f, m = randn(gen, 2, 2, 3, 4, 5), rand(gen, 2, 2, 2, 4, 5) + 0.1
    torch.testing.assert_close(
        ops.masked_prototypes(strided(f), strided(m)), ops.masked_prototypes(f, m)
    )
    empty = ops.masked_prototypes(torch.zeros(0, 2, 3, 4, 5), torch.ones(0, 2, 2, 4, 5))
    assert empty.shape == (0, 2, 3)


def test_zero_mask_mass_names_episode_and_class():
    m = torch.ones(2, 1, 2, 3, 3)
    m[1, :, 1] = 0
    with pytest.raises(ValueError, match=r"episode 1, class 1 has zero mask mass"):
        ops.masked_prototypes(torch.zeros(2, 1, 4, 3, 3), m)


def test_nan_mask_is_reported():
    m = torch.ones(1, 1, 1, 2, 2)
    m[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"episode 0, class 0"):
        ops.masked_prototypes(torch.zeros(1, 1, 4, 2, 2), m)


def test_checks_off_zero_mass_class_is_nan_in_native_and_reference(device_dtype, gen, monkeypatch):
    """A class with zero mask mass is NaN (the mean of no pixels) and passes no gradient:
    native kernels (fused and many-class backward) and the reference agree."""
    device, dtype = device_dtype
    ops.set_value_checks(False)
    try:
        for C in (3, 10):  # C > 8 takes the many-class backward kernels on CUDA
            f = randn(gen, 2, 2, 4, 3, 3, device=device, dtype=dtype, requires_grad=True)
            m = (rand(gen, 2, 2, C, 3, 3, device=device, dtype=dtype) + 0.1).detach()
            m[1, :, 1] = 0
            m.requires_grad_()
            g = randn(gen, 2, C, 4, device=device, dtype=dtype)
            results = {}
            for backend in ("native", "reference"):
                monkeypatch.setenv("MEDMETA_BACKEND", backend)
                out = ops.masked_prototypes(f, m)
                results[backend] = (out, torch.autograd.grad(out, (f, m), g))
            monkeypatch.delenv("MEDMETA_BACKEND")
            (out, grads), (ref, ref_grads) = results["native"], results["reference"]
            assert torch.isnan(out[1, 1]).all() and torch.isnan(ref[1, 1]).all()
            keep = torch.ones(2, C, dtype=torch.bool, device=device)
            keep[1, 1] = False
            assert not torch.isnan(out[keep]).any()
            assert_close(out[keep], ref[keep], dtype)
            for a, b in zip(grads, ref_grads, strict=True):
                assert not torch.isnan(a).any() and not torch.isnan(b).any()
                assert_close(a, b, dtype)
            if dtype == torch.float64 and C == 3:
                assert torch.autograd.gradcheck(
                    lambda a, b, keep=keep: ops.masked_prototypes(a, b)[keep], (f, m)
                )
    finally:
        ops.set_value_checks(True)


@pytest.mark.parametrize(
    ("features", "masks", "match"),
    [
        (
            torch.zeros(1, 2, 3, 4),
            torch.ones(1, 2, 1, 4, 4),
            r"'features' must be a 5-D tensor \[B,S,D,H,W\]",
        ),
        (
            torch.zeros(1, 2, 3, 4, 4),
            torch.ones(1, 2, 1, 4, 5),
            r"'masks' must have shape \[1, 2, C, 4, 4\]",
        ),
        (
            torch.zeros(1, 2, 3, 4, 4),
            torch.ones(2, 2, 1, 4, 4),
            r"'masks' must have shape \[1, 2, C, 4, 4\]",
        ),
    ],
)
def test_bad_input_errors(features, masks, match):
    with pytest.raises(ValueError, match=match):
        ops.masked_prototypes(features, masks)
