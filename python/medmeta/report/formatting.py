"""Number and value formatting shared by the HTML and Markdown reports, so both show the
same strings (accuracy as in :meth:`~medmeta.eval.EvalResult.summary`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MISSING",
    "capitalize",
    "field_label",
    "field_value",
    "fmt_ci",
    "fmt_float",
    "fmt_ms",
    "fmt_pct",
    "is_missing",
]

#: Shown where a value is undefined (NaN, ``None``).
MISSING = "n/a"


def is_missing(v: Any) -> bool:
    """``None`` or a non-finite number."""
    if v is None:
        return True
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_pct(v: Any, digits: int = 2) -> str:
    """A fraction as a percentage: ``0.8234 -> "82.34%"``."""
    return MISSING if is_missing(v) else f"{100 * float(v):.{digits}f}%"


def fmt_ci(acc: Any, ci: Any) -> str:
    """Accuracy and its 95% CI half-width as in ``EvalResult.summary``: ``"82.00 ± 3.70%"``."""
    if is_missing(acc):
        return MISSING
    if is_missing(ci):
        return fmt_pct(acc)
    return f"{100 * float(acc):.2f} ± {100 * float(ci):.2f}%"


def fmt_float_ci(v: Any, ci: Any, digits: int = 3) -> str:
    """A number and its 95% CI half-width: ``"0.951 ± 0.006"`` (the number alone without)."""
    if is_missing(v) or is_missing(ci):
        return fmt_float(v, digits)
    return f"{float(v):.{digits}f} ± {float(ci):.{digits}f}"


def fmt_pct_interval(v: Any, bounds: Any) -> str:
    """A fraction as a percentage with its 95% interval: ``"92.1% (89.0-94.8)"``."""
    if is_missing(v):
        return MISSING
    if bounds is None or any(is_missing(b) for b in bounds):
        return fmt_pct(v, 1)
    return f"{100 * float(v):.1f}% ({100 * float(bounds[0]):.1f}-{100 * float(bounds[1]):.1f})"


def fmt_float(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (``n/a`` when undefined)."""
    return MISSING if is_missing(v) else f"{float(v):.{digits}f}"


def fmt_ms(v: Any) -> str:
    """Milliseconds with three significant digits, trailing zeros kept so a column lines up:
    ``"0.410 ms"``, ``"12.3 ms"``, ``"1250 ms"``."""
    if is_missing(v):
        return MISSING
    x = float(v)
    if 0 < x < 0.01:
        return f"{x:.2g} ms"
    decimals = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 1 else 3
    return f"{x:.{decimals}f} ms"


# Labels and formats of the known fields of ReportData.adaptation / .export.
_LABELS = {
    "classes": "Classes",
    "shots": "Examples per class (shots)",
    "accuracy": "Accuracy on the task's queries",
    "queries": "Query images",
    "path": "File",
    "size_mb": "Size",
    "opset": "ONNX opset",
    "parity_max_abs_diff": "Largest probability difference from PyTorch",
    "edge_agreement": "Edge runtime agrees with PyTorch",
    "quantized": "Quantised",
    "seed": "Seed",
    "exporter": "Exporter",
    "files": "Files",
    "edge_accuracy": "Edge runtime accuracy",
    "int8_path": "Int8 model file",
    "int8_size_mb": "Int8 model size",
    "enrolment_max_abs_diff": "Enrolment on the device: largest probability difference",
    "enrolment_prototype_max_abs_diff": "Enrolment on the device: largest prototype difference",
    "int8_max_abs_prob_diff": "Int8: largest probability difference from float",
    "int8_top1_agreement": "Int8: top-1 agreement with float",
    "int8_float_accuracy": "Float32 accuracy (task queries)",
    "int8_int8_accuracy": "Int8 accuracy (task queries)",
    "int8_accuracy_change": "Int8 accuracy change (points)",
    # regression
    "mse": "MSE on the task's other rows",
    "r2": "R² on the task's other rows",
    "coverage": "Coverage of the interval on the task's other rows",
    "interval_width": "Mean interval width",
    "support_mean_mse": "MSE of the support mean (baseline)",
    "noise_std": "Noise standard deviation (out-of-bag)",
    "support_rows": "Support rows (shots)",
    "export_check_max_abs_diff": "Export check: largest difference from PyTorch",
    "edge_rows": "Edge runtime: rows checked (raw CSV)",
    "edge_max_abs_diff": "Edge runtime: largest difference from PyTorch",
    "edge_relative_diff": "Edge runtime: largest difference relative to the values",
    "edge_mse": "Edge runtime: MSE",
    "edge_coverage": "Edge runtime: coverage of the interval",
    "torch_free": "Edge check ran where torch cannot load",
}

_PERCENT_HINTS = ("accuracy", "agreement", "sensitivity", "specificity", "rate", "coverage")


def field_label(key: str) -> str:
    """Human label of a field: known keys get a fixed label, others ``a_b -> "A b"``."""
    if key in _LABELS:
        return _LABELS[key]
    text = str(key).replace("_", " ").strip()
    if text.endswith(" mb"):
        text = text[:-3] + " (MB)"
    elif text.endswith(" ms"):
        text = text[:-3] + " (ms)"
    return capitalize(text)


def capitalize(text: str) -> str:
    """First letter upper-cased, the rest kept (``"ONNX opset"`` stays as it is)."""
    return text[:1].upper() + text[1:]


def field_value(key: str, v: Any) -> str:
    """Format a field value: fractions named like accuracies as percentages, ``size_mb``
    in MB, differences in scientific notation, lists joined by commas."""
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if is_missing(v):
            return MISSING
        k = key.lower()
        if k.endswith("size_mb"):
            return f"{float(v):.3g} MB"
        if k.endswith("_ms"):
            return fmt_ms(v)
        if "diff" in k or "error" in k or "tol" in k:
            return f"{float(v):.1e}"
        if any(h in k for h in _PERCENT_HINTS) and 0.0 <= float(v) <= 1.0:
            return fmt_pct(v)
        return f"{float(v):.4g}"
    if isinstance(v, Mapping):
        return "; ".join(f"{field_label(str(k))}: {field_value(str(k), x)}" for k, x in v.items())
    if isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, str):
        items: Sequence[Any] = v.tolist() if isinstance(v, np.ndarray) else v
        return ", ".join(field_value(key, x) for x in items)
    return str(v)
