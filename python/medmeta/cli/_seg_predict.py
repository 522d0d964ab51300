"""``medmeta predict`` with a segmentation model: label maps of query images, written as one
PNG per image and one NIfTI label map per NIfTI volume, at the inputs' own size.

The model is a folder from ``medmeta adapt`` (or from ``medmeta train`` with ``--support``;
PyTorch) or an exported ``<stem>.encoder.onnx`` (``medmeta export``; numpy and onnxruntime
only, torch is never imported, and ``--support`` enrols classes on the device). Logits are
computed at the model's input size and resized to each input's size before the argmax.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmeta._files import atomic_write_bytes
from medmeta.cli import _segdata as sd
from medmeta.cli import _segio
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import ModelError, UsageError

__all__ = ["folder_task", "is_segmentation_model", "main"]

EPILOG = """examples:
  medmeta predict --model runs/cells --inputs new_images/ --out masks/
  medmeta predict --model runs/organs --inputs case7.nii.gz --out masks/   # -> masks/case7.nii.gz
  medmeta predict --model runs/nuclei --support labelled/ --inputs queries/ --out masks/
  medmeta predict --model nuclei.encoder.onnx --inputs queries/ --out masks/   # no PyTorch

--inputs: image files, folders of images (with masks beside them, the Dice is printed), NIfTI
volumes, an .npz or an embedded segmentation set. --out gets <name>.png per image (class ids
0..N; --visible spreads them over 0..255) or <name>.nii.gz per volume (on the volume's own
grid and affine), classes.json and predictions.json.
"""


def _model_arg(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def _encoder_file(spec: str) -> Path | None:
    """``x.encoder.onnx`` itself, or beside a ``x.onnx`` that does not exist."""
    path = Path(spec)
    if path.name.endswith(".encoder.onnx"):
        return path
    sibling = path.with_name(path.name[: -len(".onnx")] + ".encoder.onnx")
    return sibling if path.suffix == ".onnx" and not path.exists() and sibling.is_file() else None


def folder_task(folder: str) -> str | None:
    """The task of a model folder from its card (``"segmentation"`` or
    ``"classification"``), or None when there is no readable card (torch-free)."""
    card = Path(folder) / "model.json"
    try:
        return json.loads(card.read_text("utf-8")).get("task_type", "classification")
    except (OSError, ValueError, AttributeError):
        return None


def is_segmentation_model(argv: Sequence[str]) -> bool:
    """Whether ``--model`` names a segmentation model folder (card ``task_type``) or an
    exported segmentation encoder (torch-free check)."""
    spec = _model_arg(argv)
    if spec is None:
        return False
    if (Path(spec) / "model.json").is_file():
        return folder_task(spec) == "segmentation"
    return _encoder_file(spec) is not None


def build_parser(prog: str) -> Any:
    p = make_parser(prog, "Segment images with a few-shot segmentation model.", EPILOG)
    p.add_argument("--model", required=True, help="an adapted model folder, a trained one "
                   "with --support, or an exported <stem>.encoder.onnx")  # fmt: skip
    p.add_argument("--inputs", required=True, nargs="+", help="query images: " + sd.SEG_DATA_HELP)
    p.add_argument("--out", required=True, help="folder for the masks")
    p.add_argument(
        "--support", help="images with masks to adapt / enrol first: " + sd.SEG_DATA_HELP
    )
    p.add_argument("--classes", help="classes of --support (ids or names; default: all)")
    p.add_argument("--class-names", help="names of --support's mask labels 1..N")
    p.add_argument("--shots", type=int_at_least(1), help="support images per class (default all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of support images")
    p.add_argument("--visible", action="store_true", help="PNG values spread over 0..255")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (model folders)")
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


@dataclass
class Backend:
    """A segmenter: ``logits(x [n, C, H, W] model inputs) -> [n, K, H, W]``, its class names
    (background first) and preprocessing, and what it is."""

    logits: Callable[[np.ndarray], np.ndarray]
    names: list[str]
    preprocessing: Any
    what: str


def _torch_backend(args: Any) -> Backend:
    import torch

    from medmeta.cli import _setup
    from medmeta.cli._model import load_model
    from medmeta.cli._seg_adapt import adapt_segmenter, load_support, readapt_segmenter

    _setup.set_threads(args.threads)
    device = _setup.resolve_device(args.device)
    model = load_model(args.model, device)
    if args.support:
        data = load_support(args.support, args.classes, args.class_names)
        outcome = adapt_segmenter(model, data, shots=args.shots, seed=args.seed, out=None,
                                  device=device)  # fmt: skip
        adapted, names = outcome.adapted, outcome.class_names
    else:
        adapted, names = readapt_segmenter(model, device)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return adapted(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return Backend(logits, ["background", *names], model.preprocessing,
                   f"{model.card['algorithm']} model folder {args.model}")  # fmt: skip


def _onnx_backend(args: Any, path: Path) -> Backend:
    from medmeta.cli._segsupport import choose_support, load_support
    from medmeta.edge.segmenter import EdgeSegmenter

    if args.device != "cpu":
        raise UsageError("--device: the ONNX edge runtime runs on the CPU")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    seg = EdgeSegmenter(path, threads=args.threads)
    if args.support:
        data = load_support(args.support, args.classes, args.class_names)
        rows, _ = choose_support(data, args.shots, args.seed)
        data = data.subset(rows)
        # masks resized to the model's input as `medmeta adapt` does, so both runtimes agree
        x, masks = sd.model_inputs(data, seg.preprocessing)
        seg.enrol(x, masks, data.class_names, replace=True, preprocessed=True)
    return Backend(lambda x: seg.logits(x, preprocessed=True), list(seg.class_names),
                   seg.preprocessing, f"ONNX segmenter {path} (edge runtime)")  # fmt: skip


def _dice(pred: np.ndarray, truth: np.ndarray, classes: int) -> float | None:
    """Mean foreground Dice of one label map over the classes in either map."""
    scores = []
    for k in range(1, classes):
        p, t = pred == k, truth == k
        if p.any() or t.any():
            scores.append(2 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores)) if scores else None


def _truth(data: sd.SegData, names: list[str]) -> list[np.ndarray] | None:
    """The data's masks relabelled to the model's classes (by name), or None."""
    if data.masks is None:
        return None
    if not set(data.class_names[1:]) & set(names[1:]):
        if data.class_names[1:] != [f"class_{k}" for k in range(1, len(data.class_names))]:
            return None  # named classes the model does not know
        lut = np.array([k if k < len(names) else 0 for k in range(len(data.class_names))])
        return [lut[np.asarray(m)] for m in data.masks]  # unnamed labels: by id
    lut = np.array([names.index(n) if n in names else 0 for n in data.class_names])
    lut[0] = 0
    return [lut[np.asarray(m)] for m in data.masks]


def _segment(backend: Backend, data: sd.SegData) -> list[np.ndarray]:
    """A label map per image at the image's own size."""
    images = list(data.images)
    out = []
    for start in range(0, len(images), 32):
        part = images[start : start + 32]
        x = np.concatenate([backend.preprocessing(im, batched=False) for im in part])
        for im, logit in zip(part, backend.logits(x), strict=True):
            out.append(_segio.upsample_labels(logit, tuple(np.shape(im)[:2])))
    return out


def _write(backend: Backend, data: sd.SegData, labels: list[np.ndarray], out: Path,
           visible: bool, taken: set[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Write the masks of one input; a row per image (per volume for NIfTI)."""
    K, names = len(backend.names), backend.names
    truth = _truth(data, names)
    fractions = lambda a: {n: float((a == k).mean()) for k, n in enumerate(names) if k}  # noqa: E731
    rows = []
    for v in data.volumes:
        stack = np.stack(labels[v.start : v.start + v.count])
        path = out / f"{_segio.output_name(str(v.path), taken)}.nii.gz"
        _segio.write_nifti_labels(v.path, stack, path)
        rows.append({"input": str(v.path), "mask": str(path), "slices": v.count,
                     "fraction": fractions(stack)})  # fmt: skip
    if data.volumes:
        return rows
    for i, (name, lab) in enumerate(zip(data.ids, labels, strict=True)):
        path = out / f"{_segio.output_name(name, taken)}.png"
        atomic_write_bytes(path, _segio.mask_png_bytes(lab, K, visible))
        rows.append({"input": name, "mask": str(path), "size": list(lab.shape),
                     "fraction": fractions(lab),
                     "dice": None if truth is None else _dice(lab, truth[i], K)})  # fmt: skip
    return rows


def main(argv: Sequence[str], prog: str = "medmeta predict") -> int:
    args = parse_args(build_parser(prog), argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder for the masks, got the file {args.out}")
    encoder = _encoder_file(args.model)
    backend = _onnx_backend(args, encoder) if encoder is not None else _torch_backend(args)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    for item in args.inputs:
        data = sd.load_segdata(item)
        rows += _write(backend, data, _segment(backend, data), out, args.visible, taken)
    classes = {str(k): n for k, n in enumerate(backend.names)}
    atomic_write_bytes(out / "classes.json", (json.dumps(classes, indent=2) + "\n").encode())
    dice = [r["dice"] for r in rows if r.get("dice") is not None]
    summary = {"model": args.model, "runtime": backend.what, "classes": backend.names,
               "inputs": len(rows), "out": str(out),
               "mean_dice": float(np.mean(dice)) if dice else None}  # fmt: skip
    text = json.dumps({**summary, "predictions": rows}, indent=2)
    atomic_write_bytes(out / "predictions.json", (text + "\n").encode())
    if args.json:
        print(text)
        return 0
    for r in rows:
        share = ", ".join(f"{n} {100 * f:.1f}%" for n, f in r["fraction"].items())
        extra = f"  Dice {100 * r['dice']:.1f}%" if r.get("dice") is not None else ""
        print(f"{r['input']}\t-> {r['mask']}\t({share}){extra}")
    tail = f"{len(rows)} masks in {out}"
    if dice:
        tail += f"; mean Dice against the inputs' masks {100 * np.mean(dice):.1f}%"
    print(tail)
    print(f"model: {backend.what}", file=sys.stderr)
    return 0
