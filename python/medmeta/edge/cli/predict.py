"""``predict``: classify inputs with a medmeta ONNX file through the torch-free edge runtime
(numpy + onnxruntime; this command never imports torch). The same command is
``medmeta-edge predict`` on a device (image files and folders) and ``medmeta predict`` with the
full package, which also reads ``.npz`` files and embedded datasets (it passes its own
:class:`Readers`). A regressor (metadata role ``"regressor"``) is run by
:mod:`medmeta.edge.cli.predict_regression` instead: a prediction and its interval per input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.edge.cli.classes import CLASSES_HELP, parse_classes
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import ModelError, UsageError
from medmeta.edge.errors import DataError
from medmeta.edge.images import IMAGE_EXTENSIONS, read_image
from medmeta.edge.table import TableRows, read_csv_rows, split_target

logger = logging.getLogger(__name__)

EPILOG = """examples:
  %(prog)s --model model.onnx --inputs scan1.png scan2.png
  %(prog)s --model model.onnx --inputs labelled/ --json      # class sub-folders: also accuracy
  %(prog)s --model model.embed.onnx --support new_classes/ --inputs queries/ --out preds.csv
  %(prog)s --model regressor.onnx --inputs rows.csv --out preds.csv   # a number + interval

--inputs takes image files or a folder of images (with one sub-folder per class: labelled,
and the accuracy is printed){more}. With the enrolment form (model.embed.onnx) --support
enrols the classes on the device first (a folder with one sub-folder of images per
class{more_support}); with a classifier it is not needed. Inputs far from every class
prototype are flagged out-of-distribution instead of being forced into a class. --out
writes .csv, .json or .npz (probabilities).

A regressor (exported from a `--task regression` model) writes per input the prediction and
its interval (columns input, prediction, lower, upper); when the rows hold the target column
it is the truth (column `true`) and MSE, R² and the interval's coverage are printed.
"""


@dataclass(frozen=True)
class Inputs:
    """What ``--inputs`` or ``--support`` read: ``raw`` inputs (one array ``[n, ...]``, a
    list of arrays of any shape, or table rows), an id per input, and labels into
    ``class_names`` or None; vectors may name their columns (``feature_names``, e.g. the
    genes of an ``.h5ad``), which then are put in the model's order."""

    raw: list[np.ndarray] | np.ndarray | TableRows
    ids: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    note: str | None = None  # what was read and how, said in the output
    feature_names: list[str] | None = None


def in_model_order(model: Any, inputs: Inputs, flag: str) -> Inputs:
    """``inputs`` with named vector columns put in the order of the model's features
    (:meth:`~medmeta.edge.Preprocessing.feature_order`); unchanged when either side has no
    names. A feature the inputs lack is an error naming ``flag``."""
    wanted = getattr(model.preprocessing, "features", None)
    if inputs.feature_names is None or wanted is None:
        return inputs
    try:
        index = model.preprocessing.feature_order(inputs.feature_names)
    except ValueError as err:
        raise DataError(str(err), flag) from None
    raw = np.asarray(inputs.raw)[:, index]
    return dataclasses.replace(inputs, raw=raw, feature_names=list(wanted))


@dataclass(frozen=True)
class Readers:
    """How ``predict`` reads its data: ``inputs(items) -> Inputs`` for ``--inputs`` and
    ``support(spec, classes) -> Inputs`` (labelled) for ``--support`` with ``--classes``."""

    inputs: Callable[[Sequence[str]], Inputs]
    support: Callable[[str, str | None], Inputs]
    inputs_help: str = "image files or a folder of images"
    support_help: str = "a folder with one sub-folder of images per class"
    epilog_more: str = ""
    #: table files a regressor reads as plain rows (every column kept: its target column,
    #: when there, is the truth), by suffix; None reads ``.csv``/``.tsv`` with the csv module
    table_rows: Callable[[Path], TableRows] | None = None
    table_suffixes: tuple[str, ...] = (".csv", ".tsv")


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_labelled_folder(
    root: Path, classes: str | None = None, option: str = "--classes"
) -> Inputs:
    """The images of ``root/<class>/<image>`` (classes in sorted order; ``classes`` selects by
    id or name), as :class:`Inputs` with labels."""
    folders = _class_folders(root)
    if not folders:
        raise DataError("no class sub-folders found (expected root/<class>/<image>)", root)
    names = [f.name for f in folders]
    try:
        chosen = parse_classes(classes, names)
    except DataError as err:
        raise DataError(err.problem, option) from None
    raw: list[np.ndarray] = []
    ids: list[str] = []
    labels: list[int] = []
    for k, c in enumerate(range(len(names)) if chosen is None else chosen):
        files = _images_in(folders[c])
        if not files:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)})", folders[c])
        raw += [read_image(f) for f in files]
        ids += [str(f) for f in files]
        labels += [k] * len(files)
    kept = names if chosen is None else [names[c] for c in chosen]
    return Inputs(raw, ids, np.asarray(labels, dtype=np.int64), kept)


TABLE_SUFFIXES = (".csv", ".tsv")


def read_table_inputs(path: str | Path, *, labelled: bool = False) -> Inputs:
    """The rows of a ``.csv`` / ``.tsv`` table (a table model's inputs), labelled when it has
    a class column (see :data:`medmeta.edge.table.TARGET_NAMES`; required with
    ``labelled``); ids are the values of an ``id`` / ``record_id`` column or row numbers."""
    try:
        rows, labels, names = split_target(read_csv_rows(path), required=labelled)
    except ValueError as err:
        raise DataError(str(err), path) from None
    return Inputs(rows, table_ids(rows), labels, names, note=f"{path}: {len(rows)} table rows")


def table_ids(rows: TableRows) -> list[str]:
    """The ids of table rows: an ``id`` / ``record_id`` column's values, else row numbers."""
    key = next((c for c in ("id", "record_id") if c in rows.columns), None)
    return [str(v) for v in rows.column(key)] if key else [str(i) for i in range(len(rows))]


def read_image_inputs(items: Sequence[str]) -> Inputs:
    """``--inputs`` on a device: image files, a folder of images, a folder with one
    sub-folder of images per class (labelled), or one ``.csv``/``.tsv`` table of rows."""
    files = [Path(i) for i in items]
    if len(files) == 1 and files[0].suffix.lower() in TABLE_SUFFIXES:
        return read_table_inputs(files[0])
    if len(files) == 1 and files[0].is_dir():
        folder = files[0]
        if _class_folders(folder):
            return read_labelled_folder(folder)
        files = _images_in(folder)
        if not files:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder", folder)
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)} or a folder; the "
                "full medmeta package also reads .npz files and embedded datasets)",
                f,
            )
    return Inputs([read_image(f) for f in files], [str(f) for f in files])


def read_support_folder(spec: str, classes: str | None) -> Inputs:
    """``--support`` on a device: a folder with one sub-folder of images per class, or a
    ``.csv``/``.tsv`` table with a class column."""
    root = Path(spec)
    if root.suffix.lower() in TABLE_SUFFIXES:
        return _chosen(read_table_inputs(root, labelled=True), classes)
    if not root.is_dir():
        raise DataError(
            "expected a folder with one sub-folder of images per class (the full medmeta "
            "package also reads .npz files and embedded datasets)",
            spec,
        )
    return read_labelled_folder(root, classes)


def _chosen(support: Inputs, classes: str | None) -> Inputs:
    """``support`` restricted to ``classes`` (names or ids; all when None), relabelled."""
    assert support.labels is not None and support.class_names is not None
    chosen = parse_classes(classes, support.class_names)
    if chosen is None:
        return support
    keep = np.flatnonzero(np.isin(support.labels, chosen))
    relabel = {c: i for i, c in enumerate(chosen)}
    rows = support.raw.take(keep) if isinstance(support.raw, TableRows) else support.raw
    return Inputs(rows, [support.ids[i] for i in keep],
                  np.array([relabel[int(k)] for k in support.labels[keep]], dtype=np.int64),
                  [support.class_names[c] for c in chosen], support.note)  # fmt: skip


#: The readers of ``medmeta-edge predict``: images (numpy and Pillow) and tables (csv).
IMAGE_READERS = Readers(read_image_inputs, read_support_folder)


def build_parser(prog: str, readers: Readers = IMAGE_READERS) -> Any:
    epilog = EPILOG.format(more=readers.epilog_more, more_support=readers.epilog_more)
    p = make_parser(prog, "Classify inputs (or predict a number with its interval) with an "
                    "exported model, without PyTorch.", epilog)  # fmt: skip
    p.add_argument("--model", required=True,
                   help="a medmeta .onnx file (classifier, embedder or regressor)")  # fmt: skip
    p.add_argument("--inputs", required=True, nargs="+", help=readers.inputs_help)
    p.add_argument(
        "--support", help="labelled examples to enrol (embedder form): " + readers.support_help
    )
    p.add_argument("--classes", help="classes of --support to enrol; " + CLASSES_HELP)
    p.add_argument("--threads", type=int_at_least(1), help="onnxruntime intra-op threads")
    p.add_argument(
        "--out", metavar="FILE", help="write per-input results to FILE (.csv, .json or .npz)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _enrol(model: Any, support: Inputs) -> None:
    """Enrol ``support`` (labelled), one call per input shape (raw images may differ); each
    class replaces its exported examples once, on its first call, and adds after that."""
    if support.labels is None or support.class_names is None:
        raise DataError("labelled examples are needed (one sub-folder per class)", "--support")
    names = [str(support.class_names[k]) for k in support.labels]
    if isinstance(support.raw, TableRows):  # rows of a table: one call
        model.enrol(support.raw, names, replace=True)
        return
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(support.raw):
        groups.setdefault(tuple(np.shape(r)), []).append(i)
    seen: set[str] = set()
    for idx in groups.values():
        fresh = [i for i in idx if names[i] not in seen]
        again = [i for i in idx if names[i] in seen]
        for part, replace in ((fresh, True), (again, False)):
            if part:
                batch = np.stack([np.asarray(support.raw[i]) for i in part])
                model.enrol(batch, [names[i] for i in part], replace=replace)
        seen.update(names[i] for i in idx)


def _predict(model: Any, raw: list[np.ndarray] | np.ndarray | TableRows) -> Any:
    """One call when the inputs share a shape (or are table rows), else one per input."""
    if isinstance(raw, (np.ndarray, TableRows)) or len({r.shape for r in raw}) == 1:
        return model.predict(np.stack(raw) if isinstance(raw, list) else raw)
    from medmeta.edge.results import Prediction

    parts = [model.predict(r[None]) for r in raw]

    def cat(key: str) -> np.ndarray | None:
        if getattr(parts[0], key) is None:
            return None
        return np.concatenate([getattr(p, key) for p in parts])

    return Prediction(
        labels=cat("labels"), class_names=[n for p in parts for n in p.class_names],
        probabilities=cat("probabilities"), classes=parts[0].classes, ood=cat("ood"),
        distance=cat("distance"), ood_threshold=parts[0].ood_threshold,
    )  # fmt: skip


def _rows(pred: Any, ids: list[str], truth: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    for i, name in enumerate(ids):
        row: dict[str, Any] = {
            "input": name,
            "prediction": pred.class_names[i],
            "probability": float(pred.probabilities[i].max()),
            "ood": None if pred.ood is None else bool(pred.ood[i]),
        }
        if truth is not None:
            row["true"] = truth[i]
        row.update(
            {f"p[{c}]": float(p) for c, p in zip(pred.classes, pred.probabilities[i], strict=True)}
        )
        rows.append(row)
    return rows


def _unknown_categories(model: Any, raw: Any) -> list[list[str]] | None:
    """For table rows, each row's categories the model never saw (encoded as unknown)."""
    spec = getattr(model.preprocessing, "table", None)
    if spec is None or not isinstance(raw, TableRows):
        return None
    unknown = spec.unknown(raw)
    count = sum(bool(u) for u in unknown)
    if count:
        logger.warning(
            "%d of %d rows hold categories the model never saw in training (encoded as "
            "'unknown'; listed in the 'unknown' column): %s",
            count, len(unknown), ", ".join(sorted({c for u in unknown for c in u})[:10]),
        )  # fmt: skip
    return unknown


def write_rows(
    path: Path, rows: list[dict[str, Any]], empty_fields: list[str],
    npz_arrays: Callable[[], dict[str, Any]],
) -> None:  # fmt: skip
    """Write ``rows`` to ``path`` atomically by its suffix: ``.csv`` (one row per input,
    ``None`` as an empty cell; ``empty_fields`` as the header when there is no row),
    ``.json`` (the rows), or ``.npz`` (the arrays of ``npz_arrays()``)."""
    from medmeta._files import atomic_write_bytes

    suffix = path.suffix.lower()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else empty_fields,
                                lineterminator="\n")  # fmt: skip
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode()
    elif suffix == ".json":
        data = (json.dumps(rows, indent=2) + "\n").encode()
    elif suffix == ".npz":
        buffer_b = io.BytesIO()
        np.savez(buffer_b, **npz_arrays())
        data = buffer_b.getvalue()
    else:
        raise UsageError(f"--out must end in .csv, .json or .npz, got {path.name}")
    atomic_write_bytes(path, data)


def finish_output(
    args: Any, rows: list[dict[str, Any]], summary: dict[str, Any],
    unknown: list[list[str]] | None, write: Callable[[Path], None],
    print_text: Callable[[list[dict[str, Any]], dict[str, Any]], None],
) -> int:  # fmt: skip
    """The end of ``predict``: count the rows with unknown categories, ``write`` the rows to
    ``--out`` when given, and print them (``--json``: the summary and the rows as JSON;
    else ``print_text``); returns the exit status 0."""
    if unknown is not None:
        summary["rows_with_unknown_categories"] = sum(bool(u) for u in unknown)
    if args.out:
        write(Path(args.out))
        summary["out"] = args.out
    if args.json:
        print(json.dumps({**summary, "predictions": rows}, indent=2))
    else:
        print_text(rows, summary)
    return 0


def _write(path: Path, rows: list[dict[str, Any]], pred: Any, model: Any) -> None:
    def arrays() -> dict[str, Any]:
        out: dict[str, Any] = {"probabilities": pred.probabilities, "labels": pred.labels,
                               "classes": np.asarray(pred.classes)}  # fmt: skip
        if pred.ood is not None:
            out.update(ood=pred.ood, distance=pred.distance)
        protos = getattr(model, "prototypes", None)
        if protos is not None:
            out["prototypes"] = np.asarray(protos)
        return out

    write_rows(path, rows, ["input"], arrays)


def _read_note(note: str, model: Any) -> str:
    """What was read, and what the model's preprocessing did to it."""
    pre = model.metadata.get("preprocessing") or {}
    kind, shape = pre.get("kind", "image"), list(model.input_shape)  # without the batch axis
    if kind == "table":
        return f"{note}; encoded into {shape[0]} features by the model's table encoding"
    if kind == "series":
        return (f"{note}; the model's window: {shape[-1]} samples"
                + (", standardised per record" if pre.get("per_record") else ""))  # fmt: skip
    if kind == "vector":
        return f"{note}; {shape[0]} features"
    window = pre.get("window")
    return (
        f"{note}; the model's preprocessing: "
        + (f"window center {window[0]:g}, width {window[1]:g}" if window else "no intensity window")
        + f", resized to {'x'.join(map(str, shape[1:]))}"
    )


def _summary(path: str, model: Any, pred: Any, rows: list[dict[str, Any]], note: str | None,
             truth: list[str] | None) -> dict[str, Any]:  # fmt: skip
    """The run's totals: model, classes, inputs, OOD count, calibration, accuracy."""
    summary: dict[str, Any] = {
        "model": path,
        "role": model.metadata.get("role"),
        "classes": list(pred.classes),
        "inputs": len(rows),
        "ood": None if pred.ood is None else int(np.sum(pred.ood)),
        "ood_threshold": pred.ood_threshold,
        "calibration": model.metadata.get("calibration"),
    }
    if note:
        summary["read"] = _read_note(note, model)
    if truth is not None:
        # top-1 over every input (an OOD flag does not count as an error here)
        top1 = [pred.classes[k] for k in pred.labels]
        summary["accuracy"] = float(np.mean([a == b for a, b in zip(top1, truth, strict=True)]))
    return summary


def _print_text(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """One line per input (label, probability, OOD and unknown categories), then totals."""
    for r in rows:
        label = r["prediction"] if r["prediction"] is not None else "out-of-distribution"
        print(
            f"{r['input']}\t{label}\t{r['probability']:.3f}"
            + ("\t(OOD)" if r["ood"] else "")
            + (f"\t(unknown: {r['unknown']})" if r.get("unknown") else "")
        )
    if "read" in summary:
        print(f"read: {summary['read']}", file=sys.stderr)
    tail = f"{len(rows)} inputs"
    if "accuracy" in summary:
        tail += f", accuracy {100 * summary['accuracy']:.1f}%"
    if summary["ood"]:
        tail += f", {summary['ood']} flagged out-of-distribution"
    if summary.get("rows_with_unknown_categories"):
        tail += f", {summary['rows_with_unknown_categories']} with unknown categories"
    print(tail)


def _is_regressor(path: Path) -> bool:
    """Whether the file's metadata says role ``"regressor"`` (read without loading the model;
    False when it cannot be read: :class:`EdgeModel` then reports what is wrong)."""
    from medmeta.edge.schema import REGRESSION_ROLES, EdgeModelError, parse_metadata
    from medmeta.edge.weights import metadata_props

    try:
        meta = parse_metadata(metadata_props(path.read_bytes(), str(path)), str(path))
    except (EdgeModelError, OSError):
        return False
    return meta["role"] in REGRESSION_ROLES


def main(
    argv: Sequence[str], prog: str = "medmeta-edge predict", readers: Readers = IMAGE_READERS
) -> int:
    args = parse_args(build_parser(prog, readers), argv)
    from medmeta.edge.runtime import EdgeModel

    if not Path(args.model).is_file():
        raise ModelError(f"{args.model}: no such model file (an .onnx written by `medmeta export`)")
    if _is_regressor(Path(args.model)):
        from medmeta.edge.cli import predict_regression

        return predict_regression.run(args, readers)
    model = EdgeModel(args.model, threads=args.threads)
    if model.metadata.get("calibrated") is False:
        logger.warning(
            "%s: probabilities are UNCALIBRATED (temperature 1; the model was exported without a "
            "fitted temperature), so they overstate confidence; train with --val-classes or "
            "held-out examples to calibrate them",
            args.model,
        )
    if args.support:
        _enrol(
            model, in_model_order(model, readers.support(args.support, args.classes), "--support")
        )
    inputs = in_model_order(model, readers.inputs(args.inputs), "--inputs")
    raw, ids, labels, names = inputs.raw, inputs.ids, inputs.labels, inputs.class_names
    try:
        pred = _predict(model, raw)
    except (ValueError, TypeError) as err:  # inputs the model cannot take (shape, dtype, NaN)
        raise DataError(str(err), "--inputs") from err
    truth = None if labels is None or names is None else [names[i] for i in labels]
    rows = _rows(pred, ids, truth)
    unknown = _unknown_categories(model, raw)
    for row, seen in zip(rows, unknown or [], strict=False):
        row["unknown"] = ";".join(seen)
    summary = _summary(args.model, model, pred, rows, inputs.note, truth)
    return finish_output(args, rows, summary, unknown, lambda path: _write(path, rows, pred, model),
                  _print_text)  # fmt: skip
