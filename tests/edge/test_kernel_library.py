"""The edge kernel library (csrc/edge, loaded with ctypes): its C interface checks what the
Python side might not, reports errors as messages instead of crashing, and a missing or
mismatched library is a clear NativeCoreError, never a fallback."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from medmeta.edge import kernels


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch):
    """Forget the loaded library so the next call loads it again (restored afterwards)."""
    monkeypatch.setattr(kernels, "_lib", None)
    return monkeypatch


def _prototypes_raw(labels: np.ndarray, n_classes: int) -> None:
    emb = np.ones((len(labels), 4), np.float32)
    out = np.empty((n_classes, 4), np.float32)
    counts = np.empty(n_classes, np.float32)
    lab = np.ascontiguousarray(labels, np.int64)
    kernels._call(
        "medmeta_class_prototypes_f32", kernels._f32(emb),
        lab.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), len(lab), n_classes, 4,
        kernels._f32(out), kernels._f32(counts),
    )  # fmt: skip


def test_c_interface_rejects_labels_out_of_range_with_a_message():
    with pytest.raises(ValueError, match=r"label 7 at index 1 is outside \[0, 3\)"):
        _prototypes_raw(np.array([0, 7, 1]), 3)
    _prototypes_raw(np.array([0, 2, 1]), 3)  # and recovers: the error is per call
    assert kernels.native().medmeta_last_error() == b""


def test_c_interface_rejects_negative_sizes_and_bad_metrics():
    x = np.zeros((2, 3), np.float32)
    out = np.empty((1, 2, 2), np.float32)
    ws = np.empty(4, np.float32)
    with pytest.raises(ValueError, match=r"sizes must be >= 0"):
        kernels._call("medmeta_pairwise_distances_f32", kernels._f32(x), kernels._f32(x),
                      1, -2, 2, 3, 0, kernels._f32(out), kernels._f32(ws))  # fmt: skip
    with pytest.raises(ValueError, match=r"metric must be 0\.\.3, got 9"):
        kernels._call("medmeta_pairwise_distances_f32", kernels._f32(x), kernels._f32(x),
                      1, 2, 2, 3, 9, kernels._f32(out), kernels._f32(ws))  # fmt: skip


def test_library_reports_its_abi_and_sits_in_the_package():
    assert kernels.native().medmeta_kernels_abi_version() == kernels.ABI_VERSION
    assert kernels.library_path().parent.parts[-2:] == ("medmeta", "edge")


def test_missing_library_is_a_clear_error(fresh_library, tmp_path):
    fresh_library.setenv("MEDMETA_EDGE_KERNELS", str(tmp_path / "libnothing.so"))
    with pytest.raises(
        kernels.NativeCoreError, match=r"libnothing\.so could not be loaded.*medmeta-edge"
    ):
        kernels.class_prototypes(np.ones((2, 3), np.float32), np.array([0, 1]), 2)


def test_library_of_another_abi_is_refused(fresh_library, monkeypatch):
    monkeypatch.setattr(kernels, "ABI_VERSION", kernels.ABI_VERSION + 1)
    with pytest.raises(
        kernels.NativeCoreError, match=r"implements kernel ABI 1, this medmeta\.edge needs 2"
    ):
        kernels.native()
