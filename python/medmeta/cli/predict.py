"""``medmeta predict``: classify inputs with a medmeta ONNX file through the torch-free edge
runtime (numpy + onnxruntime only; this command never imports torch)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.cli import _data
from medmeta.cli._config import make_parser, parse_args
from medmeta.cli._errors import ModelError, UsageError
from medmeta.data import ArrayDataset, DataError

EPILOG = """examples:
  medmeta predict --model model.onnx --inputs scan1.png scan2.png
  medmeta predict --model model.onnx --inputs test.npz --json            # labelled: also accuracy
  medmeta predict --model model.embed.onnx --support new_classes/ --inputs queries/ --out preds.csv

--inputs takes image files, a folder of images (with one sub-folder per class: labelled),
an .npz (MedMNIST or flat layout) or an embedded dataset name. With the enrolment form
(model.embed.onnx) --support enrols the classes on the device first; with a classifier it
is not needed. Inputs far from every class prototype are flagged out-of-distribution
instead of being forced into a class. --out writes .csv, .json or .npz (probabilities).
"""


def build_parser(prog: str) -> object:
    p = make_parser(prog, "Classify inputs with an exported model, without PyTorch.", EPILOG)
    p.add_argument("--model", required=True, help="a medmeta .onnx file (classifier or embedder)")
    p.add_argument(
        "--inputs",
        required=True,
        nargs="+",
        help="image files, a folder, an .npz or a dataset name",
    )
    p.add_argument(
        "--support", help="labelled examples to enrol (embedder form): " + _data.DATA_HELP
    )
    p.add_argument("--classes", help="classes of --support to enrol; " + _data.CLASSES_HELP)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument(
        "--out", metavar="FILE", help="write per-input results to FILE (.csv, .json or .npz)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _read_inputs(
    items: Sequence[str],
) -> tuple[list[np.ndarray] | np.ndarray, list[str], np.ndarray | None, list[str] | None]:
    """(raw inputs, their ids, labels or None, class names or None)."""
    from medmeta.data.formats.image_folder import IMAGE_EXTENSIONS, read_image

    files = [Path(i) for i in items]
    if len(files) == 1 and files[0].suffix.lower() not in IMAGE_EXTENSIONS:
        source = files[0]
        if source.is_dir() and not any(p.is_dir() for p in source.iterdir()):
            files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError("no image files in the folder", source)
        else:
            ds = _data.load_dataset(str(source))
            ids = (
                [str(f) for f in ds.extra["file"]]
                if "file" in ds.extra
                else [str(i) for i in range(len(ds))]
            )
            return np.asarray(ds.x), ids, ds.labels, list(ds.class_names)
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})", f)
    return [read_image(f) for f in files], [str(f) for f in files], None, None


def _predict(model: Any, raw: list[np.ndarray] | np.ndarray) -> Any:
    """One call when the inputs share a shape, else one per input (merged)."""
    if isinstance(raw, np.ndarray) or len({r.shape for r in raw}) == 1:
        return model.predict(np.stack(raw) if isinstance(raw, list) else raw)
    from medmeta.edge import Prediction

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


def _write(path: Path, rows: list[dict[str, Any]], pred: Any, model: Any) -> None:
    from medmeta._files import atomic_write_bytes

    suffix = path.suffix.lower()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["input"])
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode()
    elif suffix == ".json":
        data = (json.dumps(rows, indent=2) + "\n").encode()
    elif suffix == ".npz":
        arrays: dict[str, Any] = {"probabilities": pred.probabilities, "labels": pred.labels,
                                  "classes": np.asarray(pred.classes)}  # fmt: skip
        if pred.ood is not None:
            arrays.update(ood=pred.ood, distance=pred.distance)
        protos = getattr(model, "prototypes", None)
        if protos is not None:
            arrays["prototypes"] = np.asarray(protos)
        buffer_b = io.BytesIO()
        np.savez(buffer_b, **arrays)
        data = buffer_b.getvalue()
    else:
        raise UsageError(f"--out must end in .csv, .json or .npz, got {path.name}")
    atomic_write_bytes(path, data)


def main(argv: Sequence[str], prog: str = "medmeta predict") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    from medmeta.edge import EdgeModel

    if not Path(args.model).is_file():
        raise ModelError(f"{args.model}: no such model file (an .onnx written by `medmeta export`)")
    model = EdgeModel(args.model, threads=args.threads)
    if args.support:
        support = _data.select_classes(_data.load_dataset(args.support), args.classes, "--classes")
        if not isinstance(support, ArrayDataset):  # pragma: no cover - load_dataset guarantees it
            raise DataError("labelled support examples are needed", args.support)
        classes = _data.present_classes(support)
        labels = _data.relabel(support.labels, classes)
        model.enrol(np.asarray(support.x), labels, class_names=[support.class_names[c] for c in classes],
                    replace=True)  # fmt: skip
    raw, ids, labels, names = _read_inputs(args.inputs)
    try:
        pred = _predict(model, raw)
    except (ValueError, TypeError) as err:  # inputs the model cannot take (shape, dtype, NaN)
        raise DataError(str(err), "--inputs") from err
    truth = None if labels is None or names is None else [names[i] for i in labels]
    rows = _rows(pred, ids, truth)
    summary: dict[str, Any] = {
        "model": args.model,
        "role": model.metadata.get("role"),
        "classes": list(pred.classes),
        "inputs": len(rows),
        "ood": None if pred.ood is None else int(np.sum(pred.ood)),
        "ood_threshold": pred.ood_threshold,
    }
    if truth is not None:
        # top-1 over every input (an OOD flag does not count as an error here)
        top1 = [pred.classes[k] for k in pred.labels]
        summary["accuracy"] = float(np.mean([a == b for a, b in zip(top1, truth, strict=True)]))
    if args.out:
        _write(Path(args.out), rows, pred, model)
        summary["out"] = args.out
    if args.json:
        print(json.dumps({**summary, "predictions": rows}, indent=2))
    else:
        for r in rows:
            label = r["prediction"] if r["prediction"] is not None else "out-of-distribution"
            print(
                f"{r['input']}\t{label}\t{r['probability']:.3f}" + ("\t(OOD)" if r["ood"] else "")
            )
        tail = f"{len(rows)} inputs"
        if "accuracy" in summary:
            tail += f", accuracy {100 * summary['accuracy']:.1f}%"
        if summary["ood"]:
            tail += f", {summary['ood']} flagged out-of-distribution"
        print(tail)
    return 0
