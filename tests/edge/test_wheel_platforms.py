"""The edge wheels for both Linux platforms: edge/build_wheels.sh builds the x86-64 wheel
natively and the aarch64 wheel with a cross compiler, and checks each wheel's kernel library
from C (edge/tests/kernels_check.c), the aarch64 one under QEMU. CI installs the cross
compiler and QEMU (.ci/run) and requires this test; elsewhere it skips without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,  # two wheel builds
    pytest.mark.skipif(
        os.environ.get("CI") != "true"
        and not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
        reason="needs g++-aarch64-linux-gnu and qemu-user (apt-get install)",
    ),
]

EDGE = Path(__file__).resolve().parents[2] / "edge"


def test_wheels_for_x86_64_and_aarch64_pass_the_kernel_check(tmp_path: Path):
    proc = subprocess.run(
        [str(EDGE / "build_wheels.sh")],
        env={**os.environ, "DIST": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = sorted(p.name for p in tmp_path.glob("*.whl"))
    assert wheels == [
        "medmeta_edge-0.1.0-py3-none-linux_aarch64.whl",
        "medmeta_edge-0.1.0-py3-none-linux_x86_64.whl",
    ]
    checks = [line for line in proc.stdout.splitlines() if line.startswith("ok: ")]
    assert len(checks) == 2 and all("outside [0, 2)" in line for line in checks)
