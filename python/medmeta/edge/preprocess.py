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
channel; they are never resized. A series longer than ``L`` is refused unless
``crop="center"`` (its central ``L`` samples are kept, the same in training and on the
device); one shorter than ``L`` is always refused, naming both lengths. With
``per_record=True`` each record is standardised per channel over time (its own mean and
standard deviation; a flat channel becomes 0) before ``mean``/``std``: the amplitude and
offset of a sensor or an animal do not decide the class. Every result is checked to be
finite.

``kind="table"`` (``input_shape = (F,)``) takes :class:`~medmeta.edge.table.TableRows`
(rows of text, e.g. from :func:`~medmeta.edge.table.read_csv_rows`) and encodes them with
``table``, the :class:`~medmeta.edge.table.TableSpec` fitted on the training rows
(categories, scaling, missing-value indicators), into ``[n, F]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from medmeta.edge.resize import resize_images
from medmeta.edge.table import TableRows, TableSpec

__all__ = ["Preprocessing"]

Kind = Literal["image", "vector", "series", "table"]
Channels = Literal["auto", "first", "last"]
Crop = Literal["none", "center"]
_CROPS = ("none", "center")
_KINDS = ("image", "vector", "series", "table")
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


def model_inputs(
    raw: Any, input_shape: tuple[int, ...], *, name: str = "raw", single: bool = True
) -> np.ndarray:
    """``raw`` checked as model inputs (``preprocessed=True`` in the edge runtimes):
    float32 ``[n, *input_shape]`` with ``n >= 1`` and finite values, contiguous; with
    ``single`` one example ``input_shape`` is taken as ``[1, *input_shape]``.

    Raises:
        TypeError: another dtype than float32.
        ValueError: another shape, an empty batch, NaN or infinite values (``name`` names
            the argument in the messages).
    """
    x = np.asarray(raw)
    if x.dtype != np.float32:
        raise TypeError(
            f"{name}: preprocessed=True needs float32 model inputs, got dtype {x.dtype}; pass "
            "raw data with preprocessed=False to apply the model's preprocessing"
        )
    if single and tuple(x.shape) == tuple(input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        shape = ", ".join(map(str, input_shape))
        raise ValueError(f"{name}: preprocessed=True needs shape [n, {shape}] with n >= 1, "
                         f"got {list(np.shape(raw))}")  # fmt: skip
    try:
        return np.ascontiguousarray(check_finite(x))
    except ValueError as err:
        raise ValueError(str(err).replace("raw: ", f"{name}: ", 1)) from None


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become model inputs (see the module docstring for each step).

    Attributes:
        kind: ``"image"``, ``"vector"``, ``"series"`` or ``"table"``.
        input_shape: the model input without the batch axis, e.g. ``(3, 28, 28)``.
        mean, std: per-channel (per-feature for vectors) normalisation, length 1 or C.
        scale: explicit intensity factor replacing the by-dtype scaling.
        window: CT window ``(center, width)`` applied before anything else (a preset name
            is resolved to its pair on construction).
        channels: layout of raw image batches: ``"auto"``, ``"first"`` or ``"last"``.
        per_record: series only: standardise each record per channel over time.
        crop: series only: ``"none"`` (records must be ``L`` long) or ``"center"`` (longer
            records are cut to their central ``L`` samples).
        table: tables only: the fitted :class:`~medmeta.edge.table.TableSpec`.
        features: vectors only: the name of each of the F features (e.g. the genes of an
            expression model), so inputs that carry names are put in the model's order
            (:meth:`feature_order`).
    """

    kind: Kind
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    window: tuple[float, float] | None = None
    channels: Channels = "auto"
    per_record: bool = False
    crop: Crop = "none"
    table: TableSpec | None = None
    features: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Preprocessing: 'kind' must be one of {_KINDS}, got {self.kind!r}")
        try:
            shape = tuple(int(s) for s in self.input_shape)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Preprocessing: 'input_shape' must be a sequence of ints, got {self.input_shape!r}"
            ) from err
        layout = {"image": "(C, H, W)", "vector": "(F,)", "series": "(C, L)", "table": "(F,)"}[
            self.kind
        ]
        rank = {"image": 3, "vector": 1, "series": 2, "table": 1}[self.kind]
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
        self._check_series_options()
        self._check_table()
        self._check_features()

    def _check_features(self) -> None:
        if self.features is None:
            return
        if self.kind != "vector":
            raise ValueError(f"Preprocessing: 'features' apply to vectors, not {self.kind!r}")
        names = tuple(self.features) if not isinstance(self.features, str) else None
        if names is None or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"Preprocessing: 'features' must be a sequence of names, got {self.features!r}"
            )
        if len(names) != self.input_shape[0]:
            raise ValueError(
                f"Preprocessing: 'features' names {len(names)} features, 'input_shape' says "
                f"{self.input_shape}"
            )
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Preprocessing: 'features' repeats {twice[:5]}")
        object.__setattr__(self, "features", names)

    def feature_order(self, names: Sequence[str]) -> np.ndarray:
        """Column ``index`` such that ``x[:, index]`` has the model's features in the model's
        order, for inputs whose columns are named ``names``.

        Raises:
            ValueError: the model has no feature names, or the inputs lack some of them
                (the message counts them and names the first few).
        """
        if self.features is None:
            raise ValueError("this model stores no feature names; give inputs in its order")
        position = {str(n): i for i, n in enumerate(names)}
        missing = [f for f in self.features if f not in position]
        if missing:
            raise ValueError(
                f"the inputs lack {len(missing)} of the model's {len(self.features)} features "
                f"(e.g. {', '.join(missing[:5])})"
            )
        return np.array([position[f] for f in self.features], dtype=np.int64)

    def _check_table(self) -> None:
        if isinstance(self.table, Mapping):
            object.__setattr__(self, "table", TableSpec.from_dict(self.table))
        if (self.kind == "table") != (self.table is not None):
            raise ValueError("Preprocessing: kind 'table' needs 'table' (a TableSpec), and only it")
        if self.table is not None:
            width = len(self.table.feature_names)
            if self.input_shape != (width,):
                raise ValueError(
                    f"Preprocessing: the table encodes {width} features, 'input_shape' says "
                    f"{self.input_shape}"
                )
            if self.mean is not None or self.std is not None or self.scale is not None:
                raise ValueError("Preprocessing: a table is scaled by its 'table' spec only")

    def _check_series_options(self) -> None:
        if not isinstance(self.per_record, bool):
            raise ValueError(f"Preprocessing: 'per_record' must be a bool, got {self.per_record!r}")
        if self.crop not in _CROPS:
            raise ValueError(f"Preprocessing: 'crop' must be one of {_CROPS}, got {self.crop!r}")
        if self.kind != "series" and (self.per_record or self.crop != "none"):
            raise ValueError(
                f"Preprocessing: 'per_record' and 'crop' apply to series, not {self.kind!r}"
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
        features: Sequence[str] | None = None,
    ) -> Preprocessing:
        """Feature vectors ``[n, F]`` (tables, expression profiles); ``features`` names them."""
        shape = (n_features,) if isinstance(n_features, int) else tuple(n_features)
        names = None if features is None else tuple(str(f) for f in features)
        return cls("vector", shape, mean, std, scale, features=names)

    @classmethod
    def for_series(
        cls,
        input_shape: Sequence[int],
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        scale: float | None = None,
        per_record: bool = False,
        crop: Crop = "none",
    ) -> Preprocessing:
        """Time series ``[n, C, L]`` (ECG beats, pressure windows)."""
        return cls("series", tuple(input_shape), mean, std, scale, per_record=per_record, crop=crop)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists for tuples); :meth:`from_dict` inverts it."""
        out = asdict(self)
        # the options added after the first format appear only when used, so that a runtime
        # of that format still reads every model that does not need them
        for key, default in (("per_record", False), ("crop", "none"), ("table", None),
                             ("features", None)):  # fmt: skip
            if out[key] == default:
                del out[key]
        if self.table is not None:
            out["table"] = self.table.to_dict()
        for key in ("input_shape", "mean", "std", "window", "features"):
            if out.get(key) is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a newer format)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"Preprocessing.from_dict: expected a dict, got {type(data).__name__}")
        known = {"kind", "input_shape", "mean", "std", "scale", "window", "channels",
                 "per_record", "crop", "table", "features"}  # fmt: skip
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
        if self.kind == "table":
            return self._table(raw)
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

    @classmethod
    def for_table(cls, spec: TableSpec) -> Preprocessing:
        """Table rows encoded by ``spec`` (fitted on the training rows)."""
        return cls("table", (len(spec.feature_names),), table=spec)

    def _table(self, raw: Any) -> np.ndarray:
        if not isinstance(raw, TableRows):
            raise TypeError(
                f"raw: a table model takes TableRows (rows of a CSV file), got {type(raw).__name__}"
            )
        if len(raw) == 0:
            raise ValueError("raw: got no table rows")
        assert self.table is not None
        return check_finite(self.table.encode(raw))

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
        if batched is None:  # a one-channel series: [n, L'] is a batch, [L'] one record
            batched = x.ndim == len(shape) + 1 or (
                self.kind == "series" and shape[0] == 1 and x.ndim == 2
            )
        if batched and self.kind == "series" and x.ndim == 2 and shape[0] == 1:
            x = x[:, None]  # [n, L] -> [n, 1, L]
        if not batched:
            x = x[None]
        if self.kind == "series" and shape[0] == 1 and x.ndim == 2:
            x = x[:, None]  # one record [1, L'] -> [1, 1, L']
        if self.kind == "series":
            x = self._fit_length(x, batched)
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
        if self.per_record:
            x = standardize_records(x)
        return x

    def _fit_length(self, x: np.ndarray, batched: bool) -> np.ndarray:
        """Series ``[n, C, L']`` cut to the model's ``L`` (``crop="center"``), or refused
        when shorter (always) or longer (``crop="none"``)."""
        length = self.input_shape[1]
        if x.ndim != 3 or x.shape[2] == length:
            return x
        got = x.shape[2]
        if got < length:
            raise ValueError(
                f"raw: the signal has {got} samples, shorter than the model's window of "
                f"{length} samples; record at least {length} samples"
            )
        if self.crop != "center":
            raise ValueError(
                f"raw: the signal has {got} samples, the model takes {length}; cut it to "
                f"{length} samples (or export the model with crop='center')"
            )
        start = (got - length) // 2
        return x[:, :, start : start + length]


def standardize_records(x: np.ndarray) -> np.ndarray:
    """Each record's channels standardised over time: float32 ``[n, C, L]`` with mean 0 and
    standard deviation 1 per ``(record, channel)``; a flat channel becomes all zeros."""
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=-1, keepdims=True)
    std = np.sqrt((centred**2).mean(axis=-1, keepdims=True))
    scaled = np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)
    return scaled.astype(np.float32)
