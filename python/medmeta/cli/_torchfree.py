"""Run a ``medmeta`` command in a fresh Python process where importing torch fails, which
proves that the command (e.g. ``medmeta predict``, the edge path) needs no PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

#: Python source that makes every ``import torch`` (and submodule) raise ImportError, and
#: exits at once if the block does not hold.
BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: this process must run without PyTorch")
        return None
sys.meta_path.insert(0, _BlockTorch())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker does not work")
"""


def run_without_torch(
    argv: Sequence[str], *, timeout: float = 300.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``medmeta ARGV`` in a subprocess with torch blocked; stdout/stderr captured as text."""
    code = BLOCK_TORCH + "from medmeta.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
