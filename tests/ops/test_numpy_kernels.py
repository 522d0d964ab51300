"""The CPU kernels are framework-agnostic: they run on numpy buffers through medmeta._C,
which is how the torch-free edge runtime enrols prototypes."""

from __future__ import annotations

import re

import numpy as np
import pytest
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
        dev=-1,
        stream=0,
        dt=FLOAT32,
        emb=emb.ctypes.data,
        labels=labels.ctypes.data,
        w=0,
        out=protos.ctypes.data,
        wsum=wsum.ctypes.data,
        B=2,
        S=10,
        N=5,
        D=16,
    )
    want = ops.prototypes(torch.from_numpy(emb), torch.from_numpy(labels), 5).numpy()
    np.testing.assert_allclose(protos, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(wsum, np.full((2, 5), 2.0, np.float32))

    queries = rng.standard_normal((2, 3, 16)).astype(np.float32)
    dist = np.empty((2, 3, 5), np.float32)
    workspace = np.empty(2 * (3 + 5), np.float32)
    _C.distance_forward(
        dev=-1,
        stream=0,
        dt=FLOAT32,
        x=queries.ctypes.data,
        y=protos.ctypes.data,
        out=dist.ctypes.data,
        ws=workspace.ctypes.data,
        B=2,
        Q=3,
        N=5,
        D=16,
        metric=SQEUCLIDEAN,
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
        dev=-1, stream=0, dt=FLOAT32, emb=emb.ctypes.data, labels=labels.ctypes.data, w=0, out=protos.ctypes.data,
        wsum=wsum.ctypes.data, B=1, S=2, N=2, D=3,
    )  # fmt: skip
    np.testing.assert_array_equal(protos[0, 0], np.ones(3, np.float32))
    assert np.isnan(protos[0, 1]).all() and wsum[0, 1] == 0


def test_forward_bindings_check_labels_and_class_mass_on_cpu_when_asked():
    """With check=True the CPU forwards report the first bad label (computing nothing) and
    the first class without mass; with the default check=False they read no data."""
    emb = np.ones((2, 2, 3), np.float32)
    protos, wsum = np.full((2, 2, 3), 7.0, np.float32), np.empty((2, 2), np.float32)
    sizes = dict(dev=-1, stream=0, dt=FLOAT32, emb=emb.ctypes.data, w=0, out=protos.ctypes.data,
                 wsum=wsum.ctypes.data, B=2, S=2, N=2, D=3)  # fmt: skip
    bad = np.array([[0, 1], [1, 2]], np.int64)
    assert _C.prototypes_forward(labels=bad.ctypes.data, check=True, **sizes) == (3, -1)
    assert (protos == 7.0).all()  # nothing computed
    empty = np.array([[0, 1], [1, 1]], np.int64)  # episode 1 has no class-0 example
    assert _C.prototypes_forward(labels=empty.ctypes.data, check=True, **sizes) == (-1, 2)
    assert _C.prototypes_forward(labels=empty.ctypes.data, **sizes) == (-1, -1)

    q = np.ones((1, 3, 3), np.float32)
    targets = np.array([[0, -1, 5]], np.int64)
    loss, acc = np.empty(1, np.float32), np.empty(1, np.float32)
    scratch = np.empty(3 * 5, np.float32)
    loss_args = dict(dev=-1, stream=0, dt=FLOAT32, q=q.ctypes.data, p=protos.ctypes.data,
                     t=targets.ctypes.data, loss=loss.ctypes.data, acc=acc.ctypes.data,
                     dist=scratch.ctypes.data, lse=scratch[6:].ctypes.data, ws=scratch[9:].ctypes.data,
                     B=1, Q=3, N=2, D=3, metric=SQEUCLIDEAN, inv_t=1.0)  # fmt: skip
    assert _C.protoloss_forward(check=True, **loss_args) == 1
    assert _C.protoloss_forward(**loss_args) == -1 and np.isnan(loss[0])

    feat, masks = np.ones((1, 1, 3, 2, 2), np.float32), np.zeros((1, 1, 2, 2, 2), np.float32)
    masks[0, 0, 0] = 1.0  # class 1 has no mass
    mass = np.empty(2, np.float32)
    masked = dict(dev=-1, stream=0, dt=FLOAT32, feat=feat.ctypes.data, masks=masks.ctypes.data,
                  out=protos.ctypes.data, mass=mass.ctypes.data, B=1, S=1, C=2, D=3, HW=4)  # fmt: skip
    assert _C.masked_prototypes_forward(check=True, **masked) == 1
    assert _C.masked_prototypes_forward(**masked) == -1


def _arg_names(binding: str) -> list[str]:
    """Parameter names in a pybind11 signature line ``name(a: int, b: int) -> None``."""
    signature = getattr(_C, binding).__doc__.split("->")[0]
    return re.findall(r"(\w+): ", signature.split("(", 1)[1])


def test_bindings_take_named_arguments_and_refuse_unknown_names():
    """Every kernel binding names its arguments (swapping B and Q needs a visible typo)."""
    for name in ("distance_forward", "distance_backward", "protoloss_forward",
                 "protoloss_backward", "prototypes_forward", "prototypes_backward",
                 "masked_prototypes_forward", "masked_prototypes_backward",
                 "inner_update_forward", "inner_update_backward"):  # fmt: skip
        assert _arg_names(name)[:3] == ["dev", "stream", "dt"], name
    assert _arg_names("distance_forward")[-5:] == ["B", "Q", "N", "D", "metric"]
    assert _arg_names("prototypes_forward")[-5:] == ["B", "S", "N", "D", "check"]
    out = np.empty((1, 1, 1), np.float32)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        _C.distance_forward(dev=-1, stream=0, dt=FLOAT32, x=0, y=0, out=out.ctypes.data, ws=0,
                            batch=1, Q=1, N=1, D=1, metric=0)  # fmt: skip
