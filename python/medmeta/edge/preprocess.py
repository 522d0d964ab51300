"""The preprocessing spec: raw arrays -> model input, the same in training and on a device.

A :class:`Preprocessing` is a frozen, JSON-able description stored in every exported model's
metadata. Calling it turns raw inputs into float32 ``[n, *input_shape]``; training code
calls the very same object, so what a device feeds the network equals what it was
trained on by construction (numpy only, no torch twin to drift).

Steps, in order, for ``kind="image"`` (``input_shape = (C, H, W)``):

1. **batch axis** -- a 4-D array is a batch; a 2-D array is one gray image; a 3-D array is
   one image when its last axis has 3 or 4 channels (decoded RGB/RGBA) or when it equals
   ``input_shape``, and a batch of gray images ``[n, H, W]`` otherwise
   (``batched=True/False`` overrides the rule).
2. **intensity** -- with ``window`` (a CT preset name or ``(center, width)`` in the raw
   unit, e.g. Hounsfield) values are windowed to ``[0, 1]``
   (:func:`medmeta.data.apply_window`); else with ``scale`` they are multiplied by it; else
   uint8 is divided by 255, uint16 by 65535 and floats pass unchanged (other integer types
   need ``window`` or ``scale``: their range is not implied by the dtype).
3. **layout** -- channels-last ``[n, H, W, c]`` becomes channels-first (``channels="auto"``
   keeps ``[n, *input_shape]`` as it is, else decides by which end has 1/3/4 channels and
   refuses ambiguous shapes such as ``[n, 4, 4, 3]``; ``"first"`` / ``"last"`` say it
   explicitly). Gray (1 channel) is replicated to 3 when
   ``input_shape[0] == 3``; RGBA drops alpha when the model takes 3 channels.
4. **resize** -- to ``input_shape[1:]`` with :func:`medmeta.edge.resize.resize_images`
   (area when shrinking, bilinear when enlarging; exact and documented there).
5. **normalise** -- ``(x - mean) / std`` per channel (``mean``/``std`` of length 1 or C).

``kind="vector"`` (``input_shape = (F,)``) and ``kind="series"`` (``(C, L)``) take
``[n, F]`` / ``[n, C, L]`` (or one example without the batch axis; a series with ``C == 1``
also as ``[n, L]``), cast to float32, apply ``scale`` if given and normalise per feature /
channel; they are never resized. Every result is checked to be finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from medmeta.edge.resize import resize_images

__all__ = ["Preprocessing"]

Kind = Literal["image", "vector", "series"]
Channels = Literal["auto", "first", "last"]
_KINDS = ("image", "vector", "series")
_CHANNELS = ("auto", "first", "last")
_CHANNEL_SIZES = (1, 3, 4)


def _floats(name: str, values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"Preprocessing: '{name}' must be finite numbers, got {values!r}")
    return tuple(float(v) for v in arr)


def _window(window: Any) -> tuple[float, float] | None:
    if window is None:
        return None
    from medmeta.edge.windowing import resolve_window

    return resolve_window(window if isinstance(window, str) else tuple(window))


def check_finite(x: np.ndarray) -> np.ndarray:
    """``x`` (``[n, ...]`` model inputs), or an error naming the first example with a NaN
    or an infinity."""
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0])
        raise ValueError(f"raw: example {bad} contains NaN or infinite values")
    return x


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become model inputs (see the module docstring for each step).

    Attributes:
        kind: ``"image"``, ``"vector"`` or ``"series"``.
        input_shape: the model input without the batch axis, e.g. ``(3, 28, 28)``.
        mean, std: per-channel (per-feature for vectors) normalisation, length 1 or C.
        scale: explicit intensity factor replacing the by-dtype scaling.
        window: CT window ``(center, width)`` applied before anything else (a preset name
            is resolved to its pair on construction).
        channels: layout of raw image batches: ``"auto"``, ``"first"`` or ``"last"``.
    """

    kind: Kind
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    window: tuple[float, float] | None = None
    channels: Channels = "auto"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Preprocessing: 'kind' must be one of {_KINDS}, got {self.kind!r}")
        try:
            shape = tuple(int(s) for s in self.input_shape)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Preprocessing: 'input_shape' must be a sequence of ints, got {self.input_shape!r}"
            ) from err
        layout = {"image": "(C, H, W)", "vector": "(F,)", "series": "(C, L)"}[self.kind]
        rank = {"image": 3, "vector": 1, "series": 2}[self.kind]
        if len(shape) != rank or min(shape) < 1:
            raise ValueError(
                f"Preprocessing: 'input_shape' of kind {self.kind!r} must be positive sizes "
                f"{layout}, got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)
        mean, std = _floats("mean", self.mean), _floats("std", self.std)
        width = shape[0]
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, width):
                raise ValueError(
                    f"Preprocessing: '{name}' must have 1 or {width} values (one per "
                    f"{'feature' if self.kind == 'vector' else 'channel'}), got {len(values)}"
                )
        if std is not None and min(std) <= 0:
            raise ValueError(f"Preprocessing: 'std' must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.scale is not None:
            scale = float(self.scale)
            if not math.isfinite(scale) or scale <= 0:
                raise ValueError(f"Preprocessing: 'scale' must be positive, got {self.scale!r}")
            object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "window", _window(self.window))
        if self.window is not None and self.kind != "image":
            raise ValueError(f"Preprocessing: 'window' applies to images, not {self.kind!r}")
        if self.window is not None and self.scale is not None:
            raise ValueError("Preprocessing: give 'window' or 'scale', not both")
        if self.channels not in _CHANNELS:
            raise ValueError(
                f"Preprocessing: 'channels' must be one of {_CHANNELS}, got {self.channels!r}"
            )

    # -- construction ----------------------------------------------------------------
    @classmethod
    def for_images(
        cls,
        input_shape: Sequence[int],
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        window: str | tuple[float, float] | None = None,
        *,
        scale: float | None = None,
        channels: Channels = "auto",
    ) -> Preprocessing:
        """Images to ``(C, H, W)``; ``window`` is a CT preset name or ``(center, width)``."""
        return cls("image", tuple(input_shape), mean, std, scale, window, channels)

    @classmethod
    def for_vectors(
        cls,
        n_features: int | Sequence[int],
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        scale: float | None = None,
    ) -> Preprocessing:
        """Feature vectors ``[n, F]`` (tables, expression profiles)."""
        shape = (n_features,) if isinstance(n_features, int) else tuple(n_features)
        return cls("vector", shape, mean, std, scale)

    @classmethod
    def for_series(
        cls,
        input_shape: Sequence[int],
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        scale: float | None = None,
    ) -> Preprocessing:
        """Time series ``[n, C, L]`` (ECG beats, pressure windows)."""
        return cls("series", tuple(input_shape), mean, std, scale)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists for tuples); :meth:`from_dict` inverts it."""
        out = asdict(self)
        for key in ("input_shape", "mean", "std", "window"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a newer format)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"Preprocessing.from_dict: expected a dict, got {type(data).__name__}")
        known = {"kind", "input_shape", "mean", "std", "scale", "window", "channels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Preprocessing.from_dict: unknown keys {unknown}; known: {sorted(known)}"
            )
        missing = sorted({"kind", "input_shape"} - set(data))
        if missing:
            raise ValueError(f"Preprocessing.from_dict: missing keys {missing}")
        return cls(**dict(data))

    # -- application -----------------------------------------------------------------
    def __call__(self, raw: Any, *, batched: bool | None = None) -> np.ndarray:
        """Raw inputs -> float32 ``[n, *input_shape]`` (C-contiguous).

        Args:
            raw: a batch or one example (see the module docstring for the accepted layouts).
            batched: whether ``raw`` has a batch axis; ``None`` applies the documented rule.

        Raises:
            TypeError: a dtype that is not numeric (bool, complex, object, strings) or an
                integer dtype whose range is unknown without ``window``/``scale``.
            ValueError: a shape that does not fit ``input_shape``, or NaN/inf values.
        """
        x = self._array(raw)
        if self.kind == "image":
            out = self._image(x, batched)
        else:
            out = self._sequence(x, batched)
        if self.mean is not None or self.std is not None:
            shape = (1, -1) + (1,) * (out.ndim - 2)
            if self.mean is not None:
                out = out - np.asarray(self.mean, np.float32).reshape(shape)
            if self.std is not None:
                out = out / np.asarray(self.std, np.float32).reshape(shape)
        return check_finite(np.ascontiguousarray(out, dtype=np.float32))

    def _array(self, raw: Any) -> np.ndarray:
        if hasattr(raw, "detach") and hasattr(raw, "numpy"):  # a torch tensor, without torch
            raw = raw.detach().cpu().numpy()
        x = np.asarray(raw)
        if x.dtype == bool or x.dtype.kind not in "uif":
            raise TypeError(
                f"raw: expected a numeric array (uint8, uint16, float, ...), got dtype {x.dtype}"
            )
        return x

    def _intensity(self, x: np.ndarray) -> np.ndarray:
        if self.window is not None:
            from medmeta.edge.windowing import apply_window

            return apply_window(x, self.window)
        if self.scale is not None:
            return x.astype(np.float32) * np.float32(self.scale)
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(255.0)
        if x.dtype == np.uint16:
            return x.astype(np.float32) / np.float32(65535.0)
        if x.dtype.kind == "f":
            return x.astype(np.float32)
        raise TypeError(
            f"raw: dtype {x.dtype} has no implied intensity range; images must be uint8, "
            "uint16 or float, or the Preprocessing needs 'window' (e.g. CT in HU) or 'scale'"
        )

    def _image(self, x: np.ndarray, batched: bool | None) -> np.ndarray:
        C, H, W = self.input_shape
        if batched is None:
            if x.ndim == 3:
                batched = not (x.shape[-1] in (3, 4) or tuple(x.shape) == self.input_shape)
            else:
                batched = x.ndim == 4
        if x.ndim not in ((3, 4) if batched else (2, 3)):
            raise ValueError(
                f"raw: expected images [n, C, H, W], [n, H, W, C] or [n, H, W] (or one image "
                f"without n) for input shape {list(self.input_shape)}, got shape {list(x.shape)}"
            )
        if not batched:
            x = x[None]
        if len(x) == 0:
            raise ValueError(f"raw: got an empty batch of shape {list(x.shape)}")
        x = self._intensity(x)
        if x.ndim == 3:  # gray batch [n, H, W]
            x = x[:, None]
        else:
            x = self._channels_first(x)
        c = x.shape[1]
        if c == 1 and C == 3:
            x = np.repeat(x, 3, axis=1)
        elif c == 4 and C == 3:
            x = x[:, :3]
        elif c != C:
            raise ValueError(
                f"raw: images have {c} channels, the model takes {C} (input shape "
                f"{list(self.input_shape)}); got shape {list(x.shape)} after layout"
            )
        return resize_images(x, (H, W))

    def _channels_first(self, x: np.ndarray) -> np.ndarray:
        if self.channels == "first":
            return x
        if self.channels == "last":
            return x.transpose(0, 3, 1, 2)
        if tuple(x.shape[1:]) == self.input_shape:  # already the model's layout
            return x
        C = self.input_shape[0]
        first = x.shape[1] in (*_CHANNEL_SIZES, C)
        last = x.shape[3] in (*_CHANNEL_SIZES, C)
        if first and not last:
            return x
        if last and not first:
            return x.transpose(0, 3, 1, 2)
        raise ValueError(
            f"raw: cannot tell the channel axis of image batch shape {list(x.shape)} "
            f"({'both ends' if first else 'neither end'} could be channels); set "
            "Preprocessing(channels='first' or 'last')"
        )

    def _sequence(self, x: np.ndarray, batched: bool | None) -> np.ndarray:
        shape = self.input_shape
        if batched is None:
            batched = x.ndim == len(shape) + 1 or (
                self.kind == "series" and shape[0] == 1 and x.ndim == 2 and x.shape[1] == shape[1]
            )
        if batched and self.kind == "series" and x.ndim == 2 and shape[0] == 1:
            x = x[:, None]  # [n, L] -> [n, 1, L]
        if not batched:
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"raw: expected {self.kind}s of shape [n, {', '.join(map(str, shape))}] (or one "
                f"without n), got shape {list(np.shape(x if batched else x[0]))}"
            )
        if len(x) == 0:
            raise ValueError(f"raw: got an empty batch of shape {list(x.shape)}")
        x = x.astype(np.float32)
        if self.scale is not None:
            x = x * np.float32(self.scale)
        return x
