"""Backend selection, build information and the load-failure error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medmeta import ops
from medmeta.ops import _native


def test_backend_info_describes_the_build_and_the_kernel():
    info = ops.backend_info(torch.zeros(2, dtype=torch.float32))
    assert info["backend"] == "native"
    build = info["build"]
    assert build["loaded"] is True
    assert build["openmp"] is True
    assert build["cpu_isa"]
    assert isinstance(build["cuda"], bool)
    assert info["kernel"] == "cpu"
    assert ops.backend_info(torch.zeros(2, dtype=torch.float16))["kernel"].startswith(
        "unsupported: CPU kernels"
    )
    assert "kernel" not in ops.backend_info()


def test_reference_backend_is_selected_explicitly(monkeypatch):
    monkeypatch.setenv("MEDMETA_BACKEND", "reference")
    assert ops.backend_info(torch.zeros(1))["kernel"] == "reference"

    def broken():
        raise AssertionError("native kernels must not run under MEDMETA_BACKEND=reference")

    monkeypatch.setattr(_native, "lib", broken)
    x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    out = ops.pairwise_distance(x, y)
    torch.testing.assert_close(out, torch.cdist(x, y) ** 2, atol=1e-4, rtol=1e-4)
    loss, _ = ops.prototypical_loss(x, y, torch.zeros(2, 3, dtype=torch.int64))
    assert loss.shape == (2,)
    with pytest.raises(ValueError, match="episode 0, class 1"):
        ops.prototypes(x, torch.zeros(2, 3, dtype=torch.int64), 2)


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("MEDMETA_BACKEND", "fast")
    with pytest.raises(ValueError, match="MEDMETA_BACKEND must be one of"):
        ops.pairwise_distance(torch.randn(1, 2, 3), torch.randn(1, 2, 3))


def test_missing_extension_raises_with_reason_and_fix():
    # A fresh interpreter in which importing medmeta._C fails.
    code = (
        "import sys, torch\n"
        "sys.modules['medmeta._C'] = None\n"
        "from medmeta import ops\n"
        "try:\n"
        "    ops.pairwise_distance(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))\n"
        "except ops.NativeLoadError as e:\n"
        "    print('ERROR', e)\n"
        "print('INFO', ops.backend_info()['build'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "ERROR medmeta's native core (medmeta._C) could not be loaded" in out
    assert "pip install" in out and "MEDMETA_BACKEND=reference" in out
    assert "'loaded': False" in out


def test_cpu_kernels_follow_torch_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ops.pairwise_distance(torch.randn(1, 2, 3), torch.randn(1, 2, 3))
        assert _native.lib().num_threads() == 1
    finally:
        torch.set_num_threads(before)
        ops.pairwise_distance(torch.randn(1, 2, 3), torch.randn(1, 2, 3))
    assert _native.lib().num_threads() == before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_autocast_promotes_half_inputs_to_float32():
    q = torch.randn(2, 5, 8, device="cuda", dtype=torch.bfloat16)
    p = torch.randn(2, 3, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = ops.prototypical_loss(q, p, torch.zeros(2, 5, dtype=torch.int64, device="cuda"))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("built", "driver", "torch_cuda", "runs", "mismatch"),
    [
        (13000, 13000, "13.0", True, False),
        (13000, 13020, "12.8", True, True),  # a new driver runs both runtimes
        (13000, 12040, "12.4", False, True),  # the failure seen: 13.0 build, CUDA 12 driver
        (13000, 12080, None, False, False),
        (12080, 12040, "12.8", True, False),  # minor-version compatibility
        (12040, 13000, "12.4", True, False),  # a newer driver runs older runtimes
        (11080, 12000, "11.8", True, False),
        (13000, 0, "13.0", False, False),  # no driver
        (0, 12040, "12.4", True, False),  # no CUDA kernels in the build: nothing to check
    ],
)
def test_cuda_version_check(built, driver, torch_cuda, runs, mismatch):
    versions = _native.check_cuda_versions(built, driver, torch_cuda)
    assert (versions.error is None) == runs
    assert versions.torch_mismatch == mismatch
    if not runs and driver:
        error = versions.error
        assert f"CUDA {built // 1000}.{built % 1000 // 10} runtime" in error
        assert f"CUDA up to {driver // 1000}.{driver % 1000 // 10}" in error
        assert "--no-build-isolation" in error and "MEDMETA_CUDA=OFF" in error
        toolkit = torch_cuda if torch_cuda else f"{driver // 1000}.x"
        assert f"CUDACXX=/usr/local/cuda-{toolkit}/bin/nvcc" in error


def test_backend_info_reports_cuda_versions():
    build = ops.backend_info()["build"]
    for key in ("cuda_runtime", "cuda_driver", "torch_cuda", "cuda_error", "cuda_torch_mismatch"):
        assert key in build
    assert isinstance(build["cuda_runtime"], int) and isinstance(build["cuda_driver"], int)
    assert build["torch_cuda"] == torch.version.cuda
    assert build["cuda_runtime"] > 0 or build["cuda_error"] is None


def test_cuda_ops_raise_the_version_error_before_any_kernel(monkeypatch):
    problem = _native.check_cuda_versions(13000, 12040, "12.4")
    monkeypatch.setattr(_native, "_cuda_ok", False)
    monkeypatch.setattr(_native, "cuda_versions", lambda: problem)
    # device_args is where every op's CUDA call starts; the check comes before any device use
    with pytest.raises(ops.CudaVersionError, match=r"built with the CUDA 13.0 runtime"):
        _native.device_args(torch.empty(1, device="meta"))
    fine = _native.check_cuda_versions(13000, 13000, "13.0")
    monkeypatch.setattr(_native, "cuda_versions", lambda: fine)
    _native.check_cuda()
    assert _native._cuda_ok


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)
def test_an_op_on_cuda1_creates_no_context_on_cuda0():
    """DeviceGuard restores the previous device only when its primary context exists."""
    code = (
        "import ctypes, threading, torch\n"
        "from medmeta import ops\n"
        "cuda = ctypes.CDLL('libcuda.so.1')\n"
        "def active(i):\n"
        "    dev, flags, on = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()\n"
        "    assert cuda.cuDeviceGet(ctypes.byref(dev), i) == 0\n"
        "    assert cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(on)) == 0\n"
        "    return on.value\n"
        "x = torch.randn(2, 3, 4, device='cuda:1')\n"
        "before = active(0)\n"
        "t = threading.Thread(target=lambda: ops.pairwise_distance(x, x))\n"
        "t.start(); t.join()\n"
        "ops.pairwise_distance(x, x)\n"
        "torch.cuda.synchronize(1)\n"
        "print('CTX0', before, active(0))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "CTX0 0 0" in out
