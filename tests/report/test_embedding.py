"""pca_map: agreement with an eigen-decomposition reference, determinism, prototypes in the
same map, the degenerate shapes (D = 1/2, n < 3) and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medmeta.eval import plots
from medmeta.report import pca_map


def _blobs(n_per: int = 20, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, d))
    y = np.repeat(np.arange(3), n_per)
    return centres[y] + rng.normal(size=(3 * n_per, d)), y


def test_matches_eigendecomposition_of_the_covariance():
    x, _ = _blobs()
    m = pca_map(x)
    evals, evecs = np.linalg.eigh(np.cov(x.T, bias=True))
    order = np.argsort(evals)[::-1]
    np.testing.assert_allclose(m.explained, evals[order[:2]] / evals.sum(), rtol=1e-10)
    # same axes up to sign, and orthonormal
    for i in range(2):
        assert abs(m.components[i] @ evecs[:, order[i]]) == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(m.components @ m.components.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(m.points, (x - x.mean(0)) @ m.components.T, atol=1e-12)
    # the map's variance along each axis is that eigenvalue
    np.testing.assert_allclose(m.points.var(0), evals[order[:2]], rtol=1e-10)


def test_deterministic_with_fixed_signs():
    x, y = _blobs()
    a, b = pca_map(x, y), pca_map(x.copy(), y)
    np.testing.assert_array_equal(a.points, b.points)
    for row in a.components:  # sign convention: largest-magnitude loading positive
        assert row[np.argmax(np.abs(row))] > 0
    # flipping the data flips nothing in the convention: the map is mirrored, axes identical
    c = pca_map(-x, y)
    np.testing.assert_allclose(np.abs(c.components), np.abs(a.components), atol=1e-12)
    np.testing.assert_allclose(np.abs(c.points), np.abs(a.points), atol=1e-10)


def test_subset_is_seeded_and_fit_uses_all_points():
    x, y = _blobs(n_per=50)
    full = pca_map(x, y)
    a = pca_map(x, y, max_points=40, seed=1)
    b = pca_map(x, y, max_points=40, seed=1)
    c = pca_map(x, y, max_points=40, seed=2)
    assert len(a.points) == 40 and len(np.unique(a.index)) == 40
    np.testing.assert_array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index)
    np.testing.assert_array_equal(a.labels, y[a.index])
    np.testing.assert_allclose(a.points, full.points[a.index], atol=1e-12)


def test_prototypes_that_are_class_means_land_on_the_class_mean_in_the_map():
    x, y = _blobs()
    protos = np.stack([x[y == c].mean(0) for c in range(3)])
    m = pca_map(x, y, protos)
    for c in range(3):
        np.testing.assert_allclose(m.prototypes[c], m.points[y == c].mean(0), atol=1e-10)
    np.testing.assert_allclose(m.transform(protos), m.prototypes, atol=1e-12)


def test_prototypes_of_a_real_adapted_task_are_nearest_their_own_class(run):
    m = pca_map(run["embeddings"], run["labels"], run["prototypes"])
    means = np.stack([m.points[m.labels == c].mean(0) for c in range(3)])
    dist = np.linalg.norm(m.prototypes[:, None] - means[None], axis=-1)  # [N, N]
    np.testing.assert_array_equal(dist.argmin(1), np.arange(3))
    assert m.explained.sum() > 0.3  # two axes of a 16-D embedding keep a fair share


def test_one_dimensional_embeddings():
    x = np.array([[1.0], [3.0], [2.0], [6.0]])
    m = pca_map(x, prototypes=np.array([[2.0]]))
    np.testing.assert_allclose(m.points[:, 0], x[:, 0] - 3.0)  # sign: loading +1
    np.testing.assert_array_equal(m.points[:, 1], 0.0)
    np.testing.assert_allclose(m.explained, [1.0, 0.0])
    np.testing.assert_allclose(m.prototypes, [[-1.0, 0.0]])
    assert m.axis_labels() == ("PC1 (100% of variance)", "PC2 (no variance)")


def test_two_dimensional_embeddings_are_rotated_not_distorted():
    x, _ = _blobs(d=2)
    m = pca_map(x)
    d_in = np.linalg.norm(x[:, None] - x[None], axis=-1)
    d_map = np.linalg.norm(m.points[:, None] - m.points[None], axis=-1)
    np.testing.assert_allclose(d_map, d_in, atol=1e-10)
    assert m.explained.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_points(n):
    x = np.arange(n * 5, dtype=np.float32).reshape(n, 5) ** 1.5
    m = pca_map(x, np.arange(n), prototypes=np.ones((2, 5)))
    assert m.points.shape == (n, 2) and np.isfinite(m.points).all()
    np.testing.assert_array_equal(m.points[:, 1], 0.0)  # no second direction
    assert m.explained[1] == 0.0
    if n == 1:
        np.testing.assert_array_equal(m.points, 0.0)
        assert m.explained[0] == 0.0
    else:  # the two points sit symmetrically on the first axis, at their true distance
        assert m.explained[0] == pytest.approx(1.0)
        gap = abs(m.points[1, 0] - m.points[0, 0])
        assert gap == pytest.approx(np.linalg.norm(x[1] - x[0]), rel=1e-6)
        assert m.points[0, 0] == pytest.approx(-m.points[1, 0])


def test_identical_points_give_a_map_without_variance():
    m = pca_map(np.ones((4, 3)))
    np.testing.assert_array_equal(m.points, 0.0)
    np.testing.assert_array_equal(m.explained, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embeddings": np.zeros(5)}, r"embeddings must be a 2-D array \[n, D\], got shape \(5,\)"),
        ({"embeddings": np.zeros((0, 4))}, "at least one row"),
        ({"embeddings": np.array([[1.0, np.nan], [0.0, 1.0]])}, "embeddings has 1 rows with NaN"),
        ({"embeddings": np.array([["a", "b"]])}, "embeddings must hold real numbers"),
        ({"embeddings": np.zeros((3, 4)), "prototypes": np.zeros((2, 5))},
         r"prototypes must have D = 4 columns, got shape \(2, 5\)"),
        ({"embeddings": np.zeros((3, 4)), "labels": np.zeros(2, dtype=int)},
         r"labels must have shape \[n\] = \[3\]"),
        ({"embeddings": np.zeros((3, 4)), "labels": np.zeros(3)}, "labels must be integers"),
        ({"embeddings": np.zeros((3, 4)), "max_points": 0}, "max_points must be an int >= 1"),
    ],
)  # fmt: skip
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pca_map(**kwargs)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_embedding_map_and_latency_handle_small_inputs(tmp_path):
    one = pca_map(np.ones((1, 1)))
    p = plots.plot_embedding_map(one.points, tmp_path / "one.png", axis_labels=one.axis_labels())
    assert _png_size(p)[0] > 300
    x, y = _blobs()
    m = pca_map(x, y, np.zeros((3, 8)))
    # two names for three classes: the third is labelled "class 2"
    p = plots.plot_embedding_map(
        m.points, tmp_path / "map.png", labels=m.labels, prototypes=m.prototypes,
        class_names=["a", "b"], misclassified=y == 0,
    )  # fmt: skip
    assert _png_size(p)[0] > 300
    rows = [{"runtime": "ORT float32", "batch": 1, "p50_ms": 0.2}]  # no p99
    assert _png_size(plots.plot_latency(rows, tmp_path / "lat.png"))[0] > 300
    with pytest.raises(ValueError, match=r"points must have shape \[m, 2\], got \(4, 3\)"):
        plots.plot_embedding_map(np.zeros((4, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"prototypes must have shape \[N, 2\]"):
        plots.plot_embedding_map(np.zeros((4, 2)), tmp_path / "bad.png", prototypes=np.zeros(2))
