"""Intensity windowing (numpy): map a Hounsfield-unit range to ``[0, 1]``.

A window is ``(center, width)``: values below ``center - width / 2`` map to 0, values above
``center + width / 2`` map to 1, linearly in between. The presets are the usual CT display
windows (in HU).
"""

from __future__ import annotations

import numpy as np

from medmeta.edge.errors import DataError

__all__ = ["WINDOW_PRESETS", "apply_window", "resolve_window"]

#: CT display windows as ``(center, width)`` in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
}


def resolve_window(
    window: str | tuple[float, float] | None = None,
    center: float | None = None,
    width: float | None = None,
) -> tuple[float, float]:
    """Return ``(center, width)`` from a preset name, a pair, or explicit values."""
    if window is not None:
        if center is not None or width is not None:
            raise DataError("give a window preset/pair or center and width, not both", "window")
        if isinstance(window, str):
            key = window.lower().replace("-", "_").replace(" ", "_")
            if key not in WINDOW_PRESETS:
                raise DataError(
                    f"unknown window preset {window!r}; presets are {sorted(WINDOW_PRESETS)}",
                    "window",
                )
            return WINDOW_PRESETS[key]
        try:
            center, width = (float(v) for v in window)
        except (TypeError, ValueError) as err:
            raise DataError(
                f"window must be a preset name or (center, width), got {window!r}", "window"
            ) from err
    if center is None or width is None:
        raise DataError("a window needs both center and width", "window")
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise DataError(
            f"window width must be finite and > 0, got center={center}, width={width}", "window"
        )
    return float(center), float(width)


def apply_window(
    values: np.ndarray,
    window: str | tuple[float, float] | None = None,
    *,
    center: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Window ``values`` (any shape, e.g. HU) into float32 ``[0, 1]`` of the same shape.

    ``window`` is a preset name from :data:`WINDOW_PRESETS` or a ``(center, width)`` pair;
    alternatively pass ``center=`` and ``width=``.
    """
    c, w = resolve_window(window, center, width)
    lo = c - w / 2.0
    out = (np.asarray(values, dtype=np.float32) - np.float32(lo)) / np.float32(w)
    return np.clip(out, 0.0, 1.0, out=out)
