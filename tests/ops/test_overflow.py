"""Sizes whose index products overflow 32 (or 64) bits (issue 16).

The CPU kernels index with int64: checked here past 2^31 elements on buffers that are mapped
but never allocated (anonymous zero pages, a few written pages at the end). Everything else is
refused by the bindings' size checks (csrc/common/sizes.h) before any data is read (most of
these tests pass null pointers): negative sizes, element counts past 2^56 (int64 overflow of
byte counts and offsets), the CUDA kernels' 32-bit row limit (checked in every build, so on
this CPU too), inner_update rate sizes that do not divide their tensor, and the same in the
edge kernel library's C interface.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from medmeta import ops
from medmeta.edge import kernels
from medmeta.ops import _native

CUDA_MAX_ROWS = (1 << 31) - (1 << 16)  # kCudaMaxRows of csrc/common/sizes.h
BIG = 1 << 20  # three of these make 2^60 elements


def _c():
    return _native.lib()


def _distance(dev: int, B: int, Q: int, N: int, D: int) -> None:
    _c().distance_forward(dev, 0, 0, 0, 0, 0, 0, B, Q, N, D, 0)


def _loss(dev: int, B: int, Q: int, N: int, D: int) -> None:
    _c().protoloss_forward(dev, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, B, Q, N, D, 0, 1.0, False)


def _prototypes(dev: int, B: int, S: int, N: int, D: int) -> None:
    _c().prototypes_forward(dev, 0, 0, 0, 0, 0, 0, 0, B, S, N, D, False)


def _masked(dev: int, B: int, S: int, C: int, D: int, HW: int) -> None:
    _c().masked_prototypes_forward(dev, 0, 0, 0, 0, 0, 0, B, S, C, D, HW, False)


def _masked_backward(dev: int, B: int, S: int, C: int, D: int, HW: int) -> None:
    _c().masked_prototypes_backward(dev, 0, 0, 0, 0, 0, 0, 0, 0, 0, B, S, C, D, HW)


def _distance_backward(dev: int, B: int, Q: int, N: int, D: int) -> None:
    _c().distance_backward(dev, 0, 0, 0, 0, 0, 0, 0, 0, 0, B, Q, N, D, 0)


@pytest.mark.parametrize(
    ("call", "sizes", "message"),
    [
        (_distance, (1, -1, 2, 3), "pairwise_distance: size Q must be >= 0, got -1"),
        (_distance_backward, (1, 2, 3, -4), "pairwise_distance: size D must be >= 0, got -4"),
        (_loss, (-2, 1, 1, 1), "prototypical_loss: size B must be >= 0, got -2"),
        (_prototypes, (1, 4, -1, 8), "prototypes: size N must be >= 0, got -1"),
        (_masked, (1, 1, 2, 3, -9), "masked_prototypes: size HW must be >= 0, got -9"),
        (_masked_backward, (1, -5, 2, 3, 4), "masked_prototypes: size S must be >= 0, got -5"),
    ],
)
def test_negative_sizes_are_refused_before_any_data_is_read(call, sizes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(-1, *sizes)


@pytest.mark.parametrize(
    ("call", "sizes", "message"),
    [
        (_distance, (BIG, BIG, 1, BIG), r"queries \[B=1048576, Q=1048576, D=1048576\]"),
        (_distance_backward, (1, 1 << 40, 1 << 40, 1), r"distances \[B=1, Q=1099511627776, N="),
        (_loss, (1 << 62, 1, 1, 1 << 62), r"prototypical_loss: queries \[B="),
        (_prototypes, (BIG, BIG, 1, BIG), r"prototypes: embeddings \[B="),
        (_masked, (1, 1, 1 << 31, 1, 1 << 31), r"masked_prototypes: masks \[B=1, S=1, C="),
    ],
)
def test_element_counts_past_2_56_are_refused(call, sizes, message):
    """Products that would overflow int64 offsets or byte counts (undefined behaviour, then
    a wild read) are refused with the sizes named."""
    with pytest.raises(ValueError, match=message + r".*would hold more than 2\^56 elements"):
        call(-1, *sizes)


@pytest.mark.parametrize(
    ("call", "sizes", "name"),
    [
        (_distance, (0, CUDA_MAX_ROWS + 1, 4, 8), "Q"),
        (_distance_backward, (0, 4, CUDA_MAX_ROWS + 1, 8), "N"),
        (_loss, (0, 1 << 31, 4, 8), "Q"),
        (_prototypes, (0, 5, 1 << 31, 8), "N"),
        (_masked, (0, 2, CUDA_MAX_ROWS + 1, 8, 16), "C"),
    ],
)
def test_cuda_row_limit_is_checked_in_every_build(call, sizes, name):
    """The CUDA kernels index the rows of an episode with int, rounded up to whole tiles: more
    than 2^31 - 2^16 rows is refused before any launch, here without a GPU (no episodes, B = 0:
    every buffer is empty, and the CPU kernels, which index with int64, take the sizes)."""
    limit = f"exceed the CUDA kernels' limit of {CUDA_MAX_ROWS}"
    with pytest.raises(ValueError, match=rf"{name} = \d+ .*{limit}"):
        call(0, *sizes)
    call(-1, *sizes)
    if not _c().build_info()["cuda"]:  # at the limit the check passes; this build has no kernels
        at_limit = tuple(CUDA_MAX_ROWS if s > CUDA_MAX_ROWS else s for s in sizes)
        with pytest.raises(ValueError, match="no CUDA kernels"):
            call(0, *at_limit)


def test_inner_update_rate_sizes_must_divide_the_tensor():
    """A rate of 3 elements on a tensor of 10: the CPU kernel's last row ran past the tensor
    (ASan: heap-buffer-overflow); now refused."""
    p, g, out = (np.ones(10, np.float32) for _ in range(3))
    lr = np.ones(3, np.float32)
    ptrs = [[a.ctypes.data] for a in (p, g, lr, out)]
    with pytest.raises(ValueError, match="tensor 0: lr_numel must be 1 or divide numel 10, got 3"):
        _c().inner_update_forward(-1, 0, 0, *ptrs, [10], [3], 0.1, False)
    assert (out == 1).all()  # nothing written
    with pytest.raises(ValueError, match="tensor 0: sizes must be >= 0, got numel -4"):
        _c().inner_update_backward(-1, 0, 0, [0], [0], [0], [0], [0], [-4], [1], 0.1, [])
    with pytest.raises(ValueError, match=r"tensors hold more than 2\^56 elements"):
        _c().inner_update_forward(-1, 0, 0, [0] * 2, [0] * 2, [0] * 2, [0] * 2, [1 << 56] * 2,
                                  [1] * 2, 0.1, False)  # fmt: skip


def test_edge_c_interface_refuses_overflowing_sizes():
    """The C interface takes sizes from any caller: products past int64 are an error message,
    never undefined behaviour (UBSan reported `batch * n_x * n_y` overflowing for these sizes
    before the check), and a NULL buffer is named."""
    null = ctypes.POINTER(ctypes.c_float)()
    with pytest.raises(ValueError, match=r"out \[batch=1048576, n_x=1048576, n_y=1073741824\]"):
        kernels._call("medmeta_pairwise_distances_f32", null, null, BIG, BIG, 1 << 30, 0, 0, null,
                      null)  # fmt: skip
    labels = ctypes.POINTER(ctypes.c_int64)()
    with pytest.raises(ValueError, match=r"embeddings \[n_examples=4611686018427387904, dim="):
        kernels._call("medmeta_class_prototypes_f32", null, labels, 1 << 62, 1, 1 << 62, null,
                      null)  # fmt: skip
    with pytest.raises(ValueError, match="medmeta_pairwise_distances_f32: x is NULL"):
        kernels._call("medmeta_pairwise_distances_f32", null, null, 1, 2, 2, 3, 0, null, null)


# ---------------------------------------------------------------- 64-bit indexing on the CPU

_PAGE = 4096


@contextmanager
def _mapped_zeros(shape: tuple[int, ...], tail: int) -> Iterator[torch.Tensor]:
    """A float32 tensor of ``shape`` over an anonymous read-only mapping of zero pages (no
    memory is committed for it), whose last ``tail`` elements are writable; unmapped on exit."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux mmap flags")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    n = int(np.prod(shape))
    size = -(-n * 4 // _PAGE) * _PAGE
    prot_read, prot_write, private_anonymous_noreserve = 1, 2, 0x02 | 0x20 | 0x4000
    addr = libc.mmap(None, size, prot_read, private_anonymous_noreserve, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        pytest.skip(f"cannot map {size >> 30} GiB of address space")
    try:
        libc.madvise(addr, size, 14)  # MADV_HUGEPAGE: reads map the huge zero page (fewer faults)
        start = (size - tail * 4) // _PAGE * _PAGE
        assert libc.mprotect(addr + start, size - start, prot_read | prot_write) == 0
        buffer = (ctypes.c_float * n).from_address(addr)
        yield torch.frombuffer(buffer, dtype=torch.float32).view(shape)
    finally:
        libc.munmap(addr, size)


D = 1 << 16
ROWS = (1 << 15) + 2  # ROWS * D > 2^31: the last two rows start past 2^31 elements


def _tail_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values in the last two rows of ``x [1, ROWS, D]`` (the writable pages); a copy."""
    x[0, -2:] = torch.randn(2, D, generator=gen)
    return x[0, -2:].clone()


def test_cpu_distances_index_past_2_31_elements(gen):
    """Query rows past 2^31 elements (the dot metric reads x once; the fused loss runs the
    same row kernels)."""
    with _mapped_zeros((1, ROWS, D), 2 * D) as x:
        tail = _tail_rows(x, gen)
        y = torch.randn(1, 1, D, generator=gen)  # one prototype: x is read once
        out = ops.pairwise_distance(x, y, "dot")[0]
        del x
    # float32 sums of 2^16 terms: a few ulps from the float64 reference; a wrong row is far off
    want_tail = -(tail.double() @ y[0].double().T)
    torch.testing.assert_close(out[-2:].double(), want_tail, rtol=1e-4, atol=1e-2)
    assert torch.count_nonzero(out[:-2]) == 0  # all other rows are zeros


def test_cpu_prototypes_index_past_2_31_elements(gen):
    labels = torch.zeros(1, ROWS, dtype=torch.int64)
    labels[0, -2:] = 1
    with _mapped_zeros((1, ROWS, D), 2 * D) as emb:
        tail = _tail_rows(emb, gen)
        protos = ops.prototypes(emb, labels, 2)[0]
        del emb
    assert torch.count_nonzero(protos[0]) == 0  # the mean of ROWS - 2 zero rows
    torch.testing.assert_close(protos[1], tail.mean(0), rtol=1e-6, atol=1e-6)


def test_cpu_masked_prototypes_index_past_2_31_elements(gen):
    masks = torch.rand(1, 1, 2, 256, 256, generator=gen)  # H * W = D pixels
    with _mapped_zeros((1, 1, ROWS, 256, 256), 2 * D) as feat:
        tail = _tail_rows(feat.view(1, ROWS, D), gen)  # the last two channels
        protos = ops.masked_prototypes(feat, masks)[0]
        del feat
    m = masks.reshape(2, D).double()
    want = (m[:, None] * tail.double()[None]).sum(-1) / m.sum(-1, keepdim=True)
    assert torch.count_nonzero(protos[:, :-2]) == 0
    torch.testing.assert_close(protos[:, -2:].double(), want, rtol=1e-5, atol=1e-6)
