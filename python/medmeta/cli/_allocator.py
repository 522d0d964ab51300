"""Keep glibc from returning freed activation buffers to the OS between batches.

glibc's malloc serves large blocks with ``mmap`` and unmaps them on free, and trims the heap
eagerly, so every forward pass page-faults its activations afresh (measured here: episode
evaluation 27% faster without it, sampling and ``torch.cat`` most of all; see also
``shared/peers/README.md``). The environment variables ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` fix this but must be set before the process starts; ``mallopt``
does the same from inside. Only the command line calls this (it owns the process); library
code never changes the allocator. ``MEDMETA_MALLOPT=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # bytes; glibc caps the mmap threshold itself where it must


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied (Linux with glibc only)."""
    if not sys.platform.startswith("linux") or os.environ.get("MEDMETA_MALLOPT", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False  # the user chose
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    logger.debug("mallopt thresholds raised: %s", ok)
    return ok
