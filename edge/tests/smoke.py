"""Smoke test of an installed medmeta-edge wheel (cibuildwheel's test-command): the kernel
library loads next to medmeta.edge, computes class means and distances like numpy, and torch
is not needed."""

import sys

import numpy as np

from medmeta.edge import kernels

rng = np.random.default_rng(0)
emb = rng.standard_normal((12, 5)).astype(np.float32)
labels = np.repeat(np.arange(3), 4)
protos = kernels.class_prototypes(emb, labels, 3)
np.testing.assert_allclose(protos, [emb[labels == c].mean(0) for c in range(3)], atol=1e-5)
d = kernels.pairwise_distances(emb, protos, "sqeuclidean")
np.testing.assert_allclose(d, ((emb[:, None] - protos[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-5)
assert "torch" not in sys.modules
print("medmeta-edge smoke test ok:", kernels.library_path())
