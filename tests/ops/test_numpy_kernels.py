"""The CPU kernels are framework-agnostic: they run on numpy buffers through medmeta._C,
which is how the torch-free edge runtime enrols prototypes."""

from __future__ import annotations

import numpy as np
import torch

from medmeta import _C, ops

FLOAT32 = 0
SQEUCLIDEAN = 0


def test_prototypes_and_distances_on_numpy_arrays():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2, 10, 16)).astype(np.float32)
    labels = np.tile(np.arange(10) % 5, (2, 1)).astype(np.int64)
    protos = np.empty((2, 5, 16), np.float32)
    wsum = np.empty((2, 5), np.float32)
    _C.prototypes_forward(
        -1,
        0,
        FLOAT32,
        emb.ctypes.data,
        labels.ctypes.data,
        0,
        protos.ctypes.data,
        wsum.ctypes.data,
        2,
        10,
        5,
        16,
    )
    want = ops.prototypes(torch.from_numpy(emb), torch.from_numpy(labels), 5).numpy()
    np.testing.assert_allclose(protos, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(wsum, np.full((2, 5), 2.0, np.float32))

    queries = rng.standard_normal((2, 3, 16)).astype(np.float32)
    dist = np.empty((2, 3, 5), np.float32)
    workspace = np.empty(2 * (3 + 5), np.float32)
    _C.distance_forward(
        -1,
        0,
        FLOAT32,
        queries.ctypes.data,
        protos.ctypes.data,
        dist.ctypes.data,
        workspace.ctypes.data,
        2,
        3,
        5,
        16,
        SQEUCLIDEAN,
    )
    expected = ((queries[:, :, None, :] - protos[:, None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)


def test_raw_kernel_gives_nan_for_a_class_without_examples():
    """The kernel's documented empty-class value (the edge runtime refuses such classes first)."""
    emb = np.ones((1, 2, 3), np.float32)
    labels = np.array([[0, 0]], np.int64)
    protos = np.zeros((1, 2, 3), np.float32)
    wsum = np.empty((1, 2), np.float32)
    _C.prototypes_forward(
        -1, 0, FLOAT32, emb.ctypes.data, labels.ctypes.data, 0, protos.ctypes.data,
        wsum.ctypes.data, 1, 2, 2, 3,
    )  # fmt: skip
    np.testing.assert_array_equal(protos[0, 0], np.ones(3, np.float32))
    assert np.isnan(protos[0, 1]).all() and wsum[0, 1] == 0
