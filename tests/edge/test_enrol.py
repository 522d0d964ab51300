"""Native kernels on numpy buffers and the OOD threshold rule (numpy references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmeta import ops
from medmeta.edge import kernels
from medmeta.edge.enrol import build_enrolment, ood_threshold
from medmeta.edge.schema import EdgeModelError, decode_array, encode_array


def _data(seed: int = 0, n: int = 12, d: int = 16, ways: int = 3):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    y = np.arange(n) % ways
    return z, y


def test_class_prototypes_equal_ops_prototypes():
    z, y = _data()
    got = kernels.class_prototypes(z, y, 3)
    want = ops.prototypes(torch.from_numpy(z)[None], torch.from_numpy(y)[None], 3)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine", "dot"])
def test_distances_equal_ops_pairwise_distance(metric):
    x, _ = _data(1, 5, 16)
    y, _ = _data(2, 4, 16)
    want = ops.pairwise_distance(torch.from_numpy(x)[None], torch.from_numpy(y)[None], metric)[0]
    np.testing.assert_allclose(
        kernels.pairwise_distances(x, y, metric), want.numpy(), atol=1e-4, rtol=1e-4
    )
    rows = kernels.row_distances(x[:4], y, metric)
    np.testing.assert_allclose(rows, np.diag(want.numpy()[:4, :4]), atol=1e-4, rtol=1e-4)


def test_kernel_inputs_are_checked_before_the_native_call():
    z, y = _data()
    with pytest.raises(ValueError, match=r"labels: must be in \[0, 3\), found 5"):
        kernels.class_prototypes(z, np.where(y == 0, 5, y), 3)
    with pytest.raises(ValueError, match="class 2 has no support example"):
        kernels.class_prototypes(z, y % 2, 3)
    with pytest.raises(ValueError, match=r"labels: expected shape \[12\]"):
        kernels.class_prototypes(z, y[:5], 3)
    with pytest.raises(ValueError, match=r"y: expected a float32 matrix \[n, 16\]"):
        kernels.pairwise_distances(z, z[:, :8], "euclidean")
    with pytest.raises(ValueError, match="metric must be one of"):
        kernels.pairwise_distances(z, z, "manhattan")


def test_leave_one_out_threshold_by_hand():
    z, y = _data(3, 15, 8)
    protos = np.stack([z[y == c].mean(0) for c in range(3)])
    threshold, rule = ood_threshold(z, y, protos, "sqeuclidean", 0.9)
    scores = []
    for i in range(15):
        others = [j for j in range(15) if y[j] == y[i] and j != i]
        scores.append(((z[i] - z[others].mean(0)) ** 2).sum())
    assert rule == "leave-one-out"
    assert threshold == pytest.approx(np.quantile(scores, 0.9), rel=1e-4)


def test_one_shot_and_single_class_fallbacks():
    z, y = _data(4, 3, 8)  # one example per class
    threshold, rule = ood_threshold(z, y, z, "euclidean")
    gaps = np.linalg.norm(z[:, None] - z[None], axis=-1) + np.diag([np.inf] * 3)
    assert rule == "prototype-gap" and threshold == pytest.approx(np.median(gaps.min(1)), rel=1e-4)
    assert ood_threshold(z[:1], y[:1] * 0, z[:1], "euclidean") == (None, "none")
    with pytest.raises(ValueError, match="quantile"):
        ood_threshold(z, y, z, "euclidean", 0.0)


def test_build_enrolment_keeps_fixed_prototypes_and_freezes_arrays():
    z, y = _data(5, 6, 4, 2)  # classes 0, 1 with examples
    fixed = np.full((3, 4), 7.0, np.float32)
    state = build_enrolment(["a", "b", "c"], z, y, "sqeuclidean", fixed_prototypes=fixed)
    np.testing.assert_array_equal(state.prototypes[2], fixed[2])  # no examples: exported prototype
    np.testing.assert_allclose(state.prototypes[0], z[y == 0].mean(0), atol=1e-6)
    assert list(state.counts) == [3, 3, 0]
    with pytest.raises(ValueError, match="read-only"):
        state.prototypes[0, 0] = 1.0
    with pytest.raises(ValueError, match="class 'c' has no enrolment example"):
        build_enrolment(["a", "b", "c"], z, y, "sqeuclidean")


def test_array_encoding_is_exact_and_checked():
    a = np.random.default_rng(6).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(decode_array(encode_array(a)), a)
    bad = encode_array(a)
    bad["shape"] = [6, 3]
    with pytest.raises(EdgeModelError, match="do not hold shape"):
        decode_array(bad, "prototypes")
    with pytest.raises(EdgeModelError, match="not an encoded array"):
        decode_array({"dtype": "float32"}, "prototypes")
    with pytest.raises(TypeError, match="dtype must be one of"):
        encode_array(a.astype(np.float16))
