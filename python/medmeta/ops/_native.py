"""Loading of the native core ``medmeta._C`` and the per-call plumbing around it.

The extension is loaded once, on first use. If it cannot load, every native op raises
:class:`NativeLoadError` with the reason and the fix; nothing falls back silently. The
pure-torch references are used only when asked for with ``MEDMETA_BACKEND=reference``.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
METRIC_CODES = {"sqeuclidean": 0, "euclidean": 1, "cosine": 2, "dot": 3}
CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BACKENDS = ("native", "reference")

REBUILD_HINT = (
    "Rebuild it with `pip install --force-reinstall --no-deps .` from the medmeta source tree "
    "(a C++17 compiler is required; CUDA kernels are added when nvcc is found), or run with "
    "MEDMETA_BACKEND=reference to use the slower pure-torch reference ops explicitly."
)


class NativeLoadError(ImportError):
    """The native extension medmeta._C is missing or failed to load."""


_lib: ModuleType | None = None
_load_error: str | None = None
_threads = -1


def _load() -> ModuleType:
    global _lib, _load_error
    try:
        from medmeta import _C
    except ImportError as exc:  # missing file, wrong ABI, unresolved symbol, ...
        _load_error = f"{type(exc).__name__}: {exc}"
        raise NativeLoadError(
            f"medmeta's native core (medmeta._C) could not be loaded ({_load_error}). {REBUILD_HINT}"
        ) from exc
    _lib = _C
    return _C


def lib() -> ModuleType:
    """The loaded ``medmeta._C`` module; raises :class:`NativeLoadError` with the reason."""
    return _lib if _lib is not None else _load()


_backend_env: str | None = None
_backend_name = "native"


def backend() -> str:
    """The backend selected by ``MEDMETA_BACKEND`` (``native``, the default, or ``reference``)."""
    global _backend_env, _backend_name
    raw = os.environ.get("MEDMETA_BACKEND")
    if raw != _backend_env:  # parse only when the variable changes
        name = (raw or "native").strip().lower() or "native"
        if name not in BACKENDS:
            raise ValueError(f"MEDMETA_BACKEND must be one of {BACKENDS}, got {name!r}")
        _backend_env, _backend_name = raw, name
    return _backend_name


def use_reference() -> bool:
    return backend() == "reference"


def device_args(t: torch.Tensor) -> tuple[int, int]:
    """(device index, stream handle) for a kernel call on ``t``'s device; -1 means the CPU."""
    if t.device.type == "cpu":
        global _threads
        n = torch.get_num_threads()
        if n != _threads:  # keep the OpenMP kernels at torch's thread count
            lib().set_num_threads(n)
            _threads = n
        return -1, 0
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(t.device).cuda_stream


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def build_info() -> dict[str, Any]:
    """What the native build contains, or why it is not available."""
    try:
        info = dict(lib().build_info())
    except NativeLoadError:
        return {"loaded": False, "error": _load_error, "hint": REBUILD_HINT}
    info["loaded"] = True
    info["cuda_devices"] = int(lib().cuda_device_count()) if info["cuda"] else 0
    info["cpu_threads"] = int(lib().num_threads())
    return info
