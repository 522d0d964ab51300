"""Errors raised by the data layer, and the bookkeeping for ``on_error="skip"``.

Every loader in :mod:`medmeta.data` turns a bad input (a corrupt or truncated file, a header
that claims an absurd size, a label out of range, a NaN where none is allowed, a class too
small for the episode asked for) into a :class:`DataError` whose message names the file or
argument, what was expected and what was found. Loaders never crash with a bare library
exception, never skip silently and never hang.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medmeta.edge.errors import DataError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DataError",
    "OnError",
    "SkippedFile",
    "check_count",
    "check_on_error",
    "check_size",
    "missing_extra",
    "report_skipped",
]

OnError = Literal["raise", "skip"]

#: Default cap on the decoded size of one array/volume/image (2 GiB). A header that claims
#: more is refused before anything is allocated; pass ``max_bytes=`` to a loader to change it.
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class SkippedFile:
    """One input skipped under ``on_error="skip"``: where it was and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def check_count(name: str, value: Any, low: int, source: str | None = None) -> int:
    """``value`` as an ``int`` when it is an integer (Python or numpy, not a bool) ``>= low``;
    else a :class:`DataError` naming ``name`` (and ``source``, default ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be an int >= {low}, got {value!r}", source or name)
    return int(value)


def check_on_error(on_error: str) -> None:
    """Validate an ``on_error`` argument (``"raise"`` or ``"skip"``)."""
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", "on_error")


def check_size(nbytes: int, max_bytes: int | None, source: object, what: str) -> None:
    """Refuse a claimed size above ``max_bytes`` before anything of that size is allocated."""
    if max_bytes is not None and nbytes > max_bytes:
        raise DataError(
            f"{what} would need {nbytes:,} bytes, above the limit of {max_bytes:,} bytes "
            "(max_bytes=); the header may be corrupt or hostile",
            str(source),
        )


def report_skipped(logger: logging.Logger, skipped: Sequence[SkippedFile], total: int) -> None:
    """Log how many inputs were skipped and which (paths and reasons only, never contents)."""
    if skipped:
        listing = "; ".join(str(s) for s in skipped[:20])
        more = f"; ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        logger.warning("skipped %d of %d files: %s%s", len(skipped), total, listing, more)


def missing_extra(package: str, error: ImportError, extra: str = "data") -> ImportError:
    """An ImportError telling the user which extra (default ``data``) provides ``package``."""
    err = ImportError(
        f"{package} is needed for this loader but is not installed; "
        f"install the {extra} extra: pip install medmeta[{extra}]"
    )
    err.__cause__ = error
    return err
