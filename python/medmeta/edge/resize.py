"""Exact, separable image resizing in numpy (no torch, no imaging library).

Each spatial axis is resized on its own with a ``[out, in]`` weight matrix, so an image
``[..., H, W]`` becomes ``Ry @ image @ Rx.T``. The weights per axis:

* equal sizes: identity (the image passes unchanged);
* shrinking (``out < in``): **area** interpolation, the mean over the input bin
  ``[floor(i * in / out), ceil((i + 1) * in / out))`` -- torch's
  ``F.interpolate(mode="area")`` / ``adaptive_avg_pool2d``; for integer factors this is the
  block mean of ``in / out`` pixels;
* enlarging (``out > in``): **bilinear** with half-pixel centres (source coordinate
  ``(i + 0.5) * in / out - 0.5``, clamped at the borders) -- torch's
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``.

Both are linear and separable; tests check them against torch's definitions. Weights are
computed in float64 and applied in float32.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["axis_weights", "resize_images"]


@functools.lru_cache(maxsize=64)
def axis_weights(size_in: int, size_out: int) -> np.ndarray:
    """The ``[size_out, size_in]`` float64 weights resizing one axis (see module docstring)."""
    if size_in < 1 or size_out < 1:
        raise ValueError(f"resize: sizes must be positive, got {size_in} -> {size_out}")
    if size_in == size_out:
        return np.eye(size_in)
    weights = np.zeros((size_out, size_in))
    if size_out < size_in:  # area: mean over each output pixel's input bin
        for i in range(size_out):
            start = (i * size_in) // size_out
            end = -((-(i + 1) * size_in) // size_out)  # ceil
            weights[i, start:end] = 1.0 / (end - start)
    else:  # bilinear, half-pixel centres
        scale = size_in / size_out
        for i in range(size_out):
            src = max((i + 0.5) * scale - 0.5, 0.0)
            lo = min(int(np.floor(src)), size_in - 1)
            hi = min(lo + 1, size_in - 1)
            frac = src - lo
            weights[i, lo] += 1.0 - frac
            weights[i, hi] += frac
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=64)
def _float32_weights(size_in: int, size_out: int) -> np.ndarray:
    """:func:`axis_weights` as float32, converted once per size pair (a per-call hot path)."""
    weights = axis_weights(size_in, size_out).astype(np.float32)
    weights.setflags(write=False)
    return weights


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float images ``[..., H, W]`` to ``[..., size[0], size[1]]`` (float32).

    Returns the input itself when it already has that size.
    """
    h_in, w_in = images.shape[-2:]
    h_out, w_out = size
    if (h_in, w_in) == (h_out, w_out):
        return images
    ry, rx = _float32_weights(h_in, h_out), _float32_weights(w_in, w_out)
    out = np.matmul(np.matmul(ry, images), rx.T)  # [..., h_out, w_in] -> [..., h_out, w_out]
    return np.ascontiguousarray(out, dtype=np.float32)
