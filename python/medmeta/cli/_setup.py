"""What ``train`` and ``demo`` share: preprocessing inferred from the data, the backbone and
the learner built from flags, and devices."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmeta.cli._data import describe_source
from medmeta.data import ArrayDataset, DataError
from medmeta.edge.cli.errors import UsageError

BACKBONES = ("conv4", "resnet12", "mlp", "conv1d", "segencoder")
#: The dense encoder of the segmentation learners (``--task segmentation``).
SEGMENTATION_BACKBONES = ("segencoder",)
TASKS = ("classification", "segmentation", "regression")
#: The method ``--algorithm`` defaults to for each task.
DEFAULT_ALGORITHM = {"classification": "protonet", "segmentation": "alpnet", "regression": "maml"}
#: How a usage error points a user at the task of a method of another task.
_TASK_HINT = {
    "segmentation": " (leave --task out, or give --task segmentation)",
    "regression": " (give --task regression)",
}


def data_kind(x: Any, meta: Any = None) -> str:
    """``"series"`` for signals ``[N, C, L]`` (a data set whose ``meta["format"]`` is
    ``"timeseries"``: the embedded signal sets and signal files), ``"table"`` for text rows
    (:class:`~medmeta.edge.table.TableRows`), ``"image"`` for other
    ``[N, H, W]`` / ``[N, H, W, C]`` / ``[N, C, H, W]`` arrays, ``"vector"`` for ``[N, F]``."""
    from medmeta.edge.table import TableRows

    if isinstance(x, TableRows):
        return "table"
    ndim = np.ndim(x) if not hasattr(x, "dim") else x.dim()
    if ndim == 3 and (meta or {}).get("format") == "timeseries":
        return "series"
    if ndim in (3, 4):
        return "image"
    if ndim == 2:
        return "vector"
    raise DataError(
        f"expected images [N, H, W(, C)] or vectors [N, F], got shape {tuple(x.shape)}", "data"
    )


def image_geometry(x: Any) -> tuple[int, int, int]:
    """``(channels, height, width)`` of stored images (channels-last or channels-first)."""
    shape = tuple(int(s) for s in x.shape[1:])
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return min(shape[-1], 3), shape[0], shape[1]
    return min(shape[0], 3), shape[1], shape[2]


def make_preprocessing(
    ds: ArrayDataset,
    *,
    image_size: int | None,
    channels: int | None,
    backbone: str,
    window: str | tuple[float, float] | None = None,
    signal_length: int | None = None,
) -> Any:
    """The :class:`medmeta.edge.Preprocessing` for this data: images resized to
    ``image_size`` (default: their own size) with ``channels`` channels (default: their own)
    and, with ``window`` (a CT preset or ``(center, width)``), intensities windowed to
    ``[0, 1]``; signals ``[C, L]`` standardised per record (cut to their central
    ``signal_length`` samples when given); vectors as they are (``[1, F]`` series for the
    1-D CNN)."""
    from medmeta.edge.preprocess import Preprocessing

    kind = data_kind(ds.x, ds.meta)
    if signal_length is not None and kind != "series":
        raise UsageError(f"--signal-length applies to signals, not to {kind}s")
    if kind == "series":
        return _series_preprocessing(ds, signal_length, window)
    if kind == "table":
        return _table_preprocessing(ds, backbone, window)
    if kind == "image":
        c, h, w = image_geometry(ds.x)
        if image_size is None and h != w:
            raise UsageError(f"images are {h}x{w}; give --image-size to resize them to a square")
        size = image_size or h
        return Preprocessing.for_images((channels or c, size, size), window=window)
    if window is not None:
        raise UsageError("--window applies to images (DICOM, NIfTI, CT slices), not to vectors")
    features = int(ds.x.shape[1])
    if backbone == "conv1d":
        return Preprocessing.for_series((1, features))
    names = (ds.meta or {}).get("gene_names")  # .h5ad: inputs are matched to these by name
    names = None if names is None or len(names) != features else [str(n) for n in names]
    return Preprocessing.for_vectors(features, features=names)


def _series_preprocessing(ds: ArrayDataset, length: int | None, window: Any) -> Any:
    from medmeta.edge.preprocess import Preprocessing

    if window is not None:
        raise UsageError("--window applies to images (DICOM, NIfTI, CT slices), not to signals")
    channels, stored = (int(s) for s in np.shape(ds.x)[1:])
    if length is not None and length > stored:
        raise UsageError(f"--signal-length {length} is longer than the records ({stored} samples)")
    return Preprocessing.for_series(
        (channels, length or stored), per_record=True, crop="center" if length else "none"
    )


def _table_preprocessing(ds: Any, backbone: str, window: Any) -> Any:
    """The encoding of ``ds``'s rows (the training rows: nothing of the test classes)."""
    from medmeta.edge.preprocess import Preprocessing
    from medmeta.edge.table import TableSpec

    if window is not None:
        raise UsageError("--window applies to images (DICOM, NIfTI, CT slices), not to tables")
    if backbone != "mlp":
        raise UsageError(f"--backbone {backbone}: a table takes the mlp backbone")
    try:
        return Preprocessing.for_table(TableSpec.fit(ds.x))
    except ValueError as err:
        raise DataError(str(err), describe_source(ds, ds)) from None


def preprocess_dataset(ds: ArrayDataset, preprocessing: Any) -> ArrayDataset:
    """``ds`` with its inputs run through ``preprocessing`` (float32 ``[N, *input_shape]``)."""
    from medmeta.edge.table import TableRows

    try:
        x = preprocessing(ds.x if isinstance(ds.x, TableRows) else np.asarray(ds.x))
    except ValueError as err:  # a table column missing or with text in a numeric column
        raise DataError(str(err), describe_source(ds, ds)) from None
    return ArrayDataset(
        x,
        ds.labels,
        class_names=list(ds.class_names),
        groups=ds.groups,
        # the model's inputs are signals [N, C, L] for a series model (also vectors fed to
        # the 1-D CNN): the episode samplers keep them 3-D
        meta={**ds.meta, **({"format": "timeseries"} if preprocessing.kind == "series" else {})},
    )


def default_backbone(kind: str) -> str:
    """conv4 for images, the 1-D CNN for signals, the MLP for vectors."""
    return {"image": "conv4", "series": "conv1d"}.get(kind, "mlp")


def backbone_spec(name: str, input_shape: Sequence[int], width: str | None) -> dict[str, Any]:
    """``{"name", "input_shape", "kwargs"}`` for :func:`medmeta.nn.make_backbone` from the
    ``--width`` flag (conv4: one int; resnet12, mlp, conv1d: comma-separated widths)."""
    if name not in BACKBONES:
        raise UsageError(f"--backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    kwargs: dict[str, Any] = {}
    if width:
        try:
            widths = [int(w) for w in str(width).split(",") if w.strip()]
        except ValueError as err:
            raise UsageError(
                f"--width must be integers separated by commas, got {width!r}"
            ) from err
        if not widths or min(widths) < 1:
            raise UsageError(f"--width must be positive integers, got {width!r}")
        if name == "conv4":
            if len(widths) != 1:
                raise UsageError("--width for conv4 is one number of channels")
            kwargs["hidden"] = widths[0]
        elif name == "segencoder":
            kwargs.update(_segencoder_widths(widths))
        elif name == "mlp":
            kwargs["hidden"] = widths
        else:
            kwargs["channels"] = widths
    return {"name": name, "input_shape": [int(s) for s in input_shape], "kwargs": kwargs}


def _segencoder_widths(widths: list[int]) -> dict[str, Any]:
    """``--width W`` -> stage widths ``(W, 2W, 4W, 4W)`` and ``4W`` features (W = 32 is
    SegEncoder's default); ``--width A,B,...`` -> those stage widths (at least two), the last
    also the feature width."""
    if len(widths) == 1:
        w = widths[0]
        return {"channels": [w, 2 * w, 4 * w, 4 * w], "out_channels": 4 * w}
    return {"channels": widths, "out_channels": widths[-1]}


def resolve_task(task: str | None, algorithm: str | None) -> tuple[str, str]:
    """``(task, algorithm)`` from ``--task`` and ``--algorithm``: the task defaults to the
    algorithm's (segmentation for alpnet / panet, else classification; regression only
    when asked for), the algorithm to the task's default (maml for regression); a method
    the task lacks is a usage error naming the task's methods."""
    from medmeta import algorithms

    by_task = {t: algorithms.available(t) for t in TASKS}
    if task is None:
        task = "segmentation" if algorithm in by_task["segmentation"] else "classification"
    algorithm = algorithm or DEFAULT_ALGORITHM[task]
    if algorithm not in by_task[task]:
        other = next((t for t in TASKS if algorithm in by_task[t]), None)
        what = f"is a {other} method" if other else "is not a method"
        raise UsageError(
            f"--algorithm {algorithm} {what}; --task {task} takes {', '.join(by_task[task])}"
            + _TASK_HINT.get(other or "", "")
        )
    return task, algorithm


def parse_params(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["inner_steps=3", "metric=cosine"]`` -> ``{"inner_steps": 3, "metric": "cosine"}``."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param takes KEY=VALUE, got {pair!r}")
        try:
            value: Any = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        out[key.strip()] = value
    return out


def build_learner(
    algorithm: str,
    spec: dict[str, Any],
    ways: int,
    num_classes: int,
    params: dict[str, Any],
    seed: int,
) -> Any:
    """The learner with a backbone made from ``spec``, initialised from ``seed``."""
    import torch

    from medmeta import algorithms
    from medmeta.nn import make_backbone

    resolve_task("classification", algorithm)
    if spec["name"] in SEGMENTATION_BACKBONES:
        raise UsageError(f"--backbone {spec['name']} is the encoder of the segmentation "
                         "methods (--task segmentation); classifiers take conv4, resnet12, "
                         "mlp or conv1d")  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = make_backbone(spec["name"], spec["input_shape"], **spec["kwargs"])
        try:
            return algorithms.build(
                algorithm, backbone, ways, input_shape=spec["input_shape"],
                num_classes=num_classes, **params,
            )  # fmt: skip
        except TypeError as err:
            raise UsageError(f"--param: {err}") from err


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a usage error when CUDA is asked for but absent."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available (use --device cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return name


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def data_summary(name: str, ds: ArrayDataset, preprocessing: Any) -> str:
    """One line on the data a command is about to use: examples per class, the stored image
    size and channels, and what the preprocessing changes (resize, colour, window)."""
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    counts = counts[counts > 0]
    line = f"data: {name}: {len(ds)} examples in {len(counts)} classes ({counts.min()}-{counts.max()} per class)"
    kind = data_kind(ds.x, ds.meta)
    if kind == "series":
        channels, length = np.shape(ds.x)[1:]
        cut = preprocessing.input_shape[1]
        return line + (f", signals of {channels} channel(s) x {length} samples, standardised "
                       "per record" + (f", central {cut} samples" if cut != length else ""))  # fmt: skip
    if kind == "table":
        spec = preprocessing.table
        return line + (f", {len(ds.x.columns)} columns ({len(spec.numeric)} numeric, "
                       f"{len(spec.categorical)} categorical) encoded as "
                       f"{len(spec.feature_names)} features fitted on the training rows")  # fmt: skip
    if kind != "image":
        return line + f", {int(np.asarray(ds.x).shape[1])} features"
    c, h, w = image_geometry(ds.x)
    line += f", images {h}x{w} with {c} channel{'s' if c > 1 else ''}"
    mc, mh, mw = preprocessing.input_shape
    changes = []
    if (mh, mw) != (h, w):
        changes.append(f"resized to {mh}x{mw}")
    if mc != c:
        changes.append(f"{'gray to RGB' if mc == 3 else 'RGB to gray'}")
    if preprocessing.window is not None:
        center, width = preprocessing.window
        changes.append(f"windowed at center {center:g}, width {width:g}")
    elif np.asarray(ds.x).dtype.kind == "f":  # e.g. HU from DICOM: no [0, 1] scale implied
        lo, hi = float(np.min(ds.x)), float(np.max(ds.x))
        if lo < 0 or hi > 1:
            changes.append(f"values {lo:.4g}..{hi:.4g} used as they are (no --window)")
    return line + ("; " + ", ".join(changes) if changes else "")
