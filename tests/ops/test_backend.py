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
