"""The CUDA kernels, run on the CPU under the project's emulation of the CUDA execution model
and compared with the CPU kernels (tests/cuda_emulation/README.md). Needs g++ and the CUDA
toolkit headers (no GPU, no nvcc); takes one to two and a half minutes on 2 cores."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MIN_COMPARISONS = 600  # the checks make about 660
MIN_KERNELS = 14  # every __global__ kernel of csrc/, each in the four dtypes


def _harness():
    name = "cuda_emulation_harness"
    spec = importlib.util.spec_from_file_location(name, HERE / "harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_MISSING = _harness().missing_tools()
# CI (.ci/run) runs this once, in its sanitizer step (.ci/sanitize), and skips it in the main run.
_LATER = os.environ.get("MEDMETA_CUDA_EMULATION") == "in-sanitizer-step"


@pytest.mark.skipif(_MISSING is not None, reason=f"CUDA emulation cannot run: {_MISSING}")
@pytest.mark.skipif(_LATER, reason="runs in CI's sanitizer step (.ci/sanitize), not twice")
def test_cuda_kernels_match_the_cpu_kernels_under_emulation() -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "harness.py")], capture_output=True, text=True, timeout=1200
    )
    output = done.stdout + done.stderr
    last = output.strip().splitlines()[-1] if output.strip() else ""
    assert done.returncode == 0, output[-6000:]
    match = re.search(r"cuda-emulation: (\d+) comparisons over (\d+) kernels .*: PASS$", last)
    assert match, output[-6000:]
    comparisons, kernels = int(match.group(1)), int(match.group(2))
    assert comparisons >= MIN_COMPARISONS, last
    assert kernels >= MIN_KERNELS, last
