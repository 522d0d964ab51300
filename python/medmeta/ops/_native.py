"""Loading of the native core ``medmeta._C`` and the per-call plumbing around it.

The extension is loaded once, on first use. If it cannot load, every native op raises
:class:`NativeLoadError` with the reason and the fix; nothing falls back silently. The
pure-torch references are used only when asked for with ``MEDMETA_BACKEND=reference``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

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


class CudaVersionError(RuntimeError):
    """medmeta._C's CUDA kernels cannot run under this machine's CUDA driver."""


class CudaVersions(NamedTuple):
    """What :func:`check_cuda_versions` decided."""

    error: str | None  # why the CUDA kernels cannot run here, and the fix; None: they can
    torch_mismatch: bool  # torch's CUDA major version differs from the build's


def _version_text(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def check_cuda_versions(built_runtime: int, driver: int, torch_cuda: str | None) -> CudaVersions:
    """Whether the CUDA kernels of a build can run under this driver (a pure function).

    Args:
        built_runtime: the CUDA runtime version the extension was built (and statically
            linked) with, ``1000 * major + 10 * minor`` (``13000`` is 13.0); 0: no CUDA kernels.
        driver: the CUDA version the installed driver supports (``cudaDriverGetVersion``,
            same encoding); 0: no driver.
        torch_cuda: ``torch.version.cuda`` (``"12.8"``), or None for a torch without CUDA.

    The driver must support the runtime's major version: CUDA's minor-version compatibility
    covers an older driver of the same major (13.0 kernels on a 13.0+ driver, 12.8 kernels on
    a 12.x driver), a major the driver predates does not run at all. A torch CUDA major other
    than the build's works while the driver supports both, but is the usual cause of a too-new
    build, so it is reported too.
    """
    torch_major = None
    if torch_cuda:
        try:
            torch_major = int(str(torch_cuda).split(".")[0])
        except ValueError:
            torch_major = None
    mismatch = (
        built_runtime > 0 and torch_major is not None and torch_major != built_runtime // 1000
    )
    if built_runtime <= 0 or (driver > 0 and driver // 1000 >= built_runtime // 1000):
        return CudaVersions(None, mismatch)
    built = _version_text(built_runtime)
    if driver <= 0:
        error = f"medmeta._C has CUDA {built} kernels, but no NVIDIA driver was found to run them"
        return CudaVersions(error, mismatch)
    found = f"the NVIDIA driver supports CUDA up to {_version_text(driver)}"
    fits = torch_major is not None and torch_major <= driver // 1000
    toolkit = f"/usr/local/cuda-{torch_cuda if fits else f'{driver // 1000}.x'}"
    torch_note = f" (torch uses CUDA {torch_cuda})" if torch_cuda else ""
    error = (
        f"medmeta._C was built with the CUDA {built} runtime (linked statically), but {found}"
        f"{torch_note}, so medmeta's CUDA kernels cannot run here. Rebuild medmeta with the CUDA "
        f"toolkit that matches torch and the driver: `CUDACXX={toolkit}/bin/nvcc pip install "
        f"--no-build-isolation .` in the medmeta source tree; or install an NVIDIA driver for "
        f"CUDA {built_runtime // 1000}.x; or rebuild with `MEDMETA_CUDA=OFF` (CPU kernels only)."
    )
    return CudaVersions(error, mismatch)


_lib: ModuleType | None = None
_load_error: str | None = None
_threads = [-1]  # the CPU kernels' thread count, as last set (a list: read by generated code)
_cuda_ok = False  # the driver can run the CUDA kernels (checked once, at the first CUDA op)


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


# os.environ's own mapping, read directly: os.environ.get costs ~0.5 us per call, and every
# op asks once per call. Assignments through os.environ (and monkeypatch) update it.
_environ: dict = getattr(os.environ, "_data", {})
_backend_key = os.environ.encodekey("MEDMETA_BACKEND") if _environ else None
_backend_raw: object = object()  # the variable's raw value when last parsed
_backend_name = "native"


def _backend_variable() -> object:
    return (
        _environ.get(_backend_key)
        if _backend_key is not None
        else os.environ.get("MEDMETA_BACKEND")
    )


def backend() -> str:
    """The backend selected by ``MEDMETA_BACKEND`` (``native``, the default, or ``reference``)."""
    global _backend_raw, _backend_name
    raw = _backend_variable()
    if raw is not _backend_raw:
        if raw != _backend_raw:  # parse only when the value changes
            text = os.environ.decodevalue(raw) if isinstance(raw, bytes) else raw
            name = (text or "native").strip().lower() or "native"
            if name not in BACKENDS:
                raise ValueError(f"MEDMETA_BACKEND must be one of {BACKENDS}, got {name!r}")
            _backend_name = name
        _backend_raw = raw
    return _backend_name


def use_reference() -> bool:
    """Whether ``MEDMETA_BACKEND=reference`` selects the pure-torch references."""
    if _backend_key is not None and _environ.get(_backend_key) is _backend_raw:  # unchanged
        return _backend_name == "reference"
    return backend() == "reference"


def cuda_versions() -> CudaVersions:
    """:func:`check_cuda_versions` for this build, this driver and this torch."""
    built = int(lib().build_info()["cuda_runtime"])
    return check_cuda_versions(built, int(lib().cuda_driver_version()), torch.version.cuda)


def check_cuda() -> None:
    """Raise :class:`CudaVersionError` (both versions, and the fix) when the driver cannot
    run this build's CUDA kernels, instead of an obscure device error from the first kernel."""
    global _cuda_ok
    if _cuda_ok:
        return
    error = cuda_versions().error
    if error is not None:
        raise CudaVersionError(error)
    _cuda_ok = True


_kernels: dict[str, Callable[..., Any]] = {}
_DEVICE_PREFIX = ("dev", "stream", "dt")


def kernel(name: str) -> Callable[..., Any]:
    """``medmeta._C.<name>`` as a Python function taking its arguments by name.

    A kernel binding (its first arguments ``dev, stream, dt``) becomes
    ``f(like, *, <the others>)``: the device, stream and dtype code come from the tensor
    ``like``. Any other binding (the CPU check of the prototypes' weights) becomes ``f(*, <its arguments>)``. The
    functions are generated once from the signature pybind11 writes at the top of the
    binding's docstring, so a misspelt, missing or extra name is a TypeError at the call, and
    the binding itself is called positionally: pybind11 matches keywords at ~0.2 us each.
    """
    fn = _kernels.get(name)
    if fn is None:
        fn = _kernels[name] = _named_call(name)
    return fn


def argument_names(name: str) -> list[str]:
    """The argument names of ``medmeta._C.<name>`` in order, from the signature pybind11
    writes at the top of the binding's docstring."""
    header = (getattr(lib(), name).__doc__ or "").split(" -> ", 1)[0]
    names = re.findall(r"[(,]\s*(\w+):", header)
    if not names or not header.startswith(f"{name}("):
        raise RuntimeError(f"medmeta._C.{name}: unexpected signature {header!r}")
    return names


def _named_call(name: str) -> Callable[..., Any]:
    binding, names = getattr(lib(), name), argument_names(name)
    if tuple(names[:3]) == _DEVICE_PREFIX:
        rest = ", ".join(names[3:])
        source = (  # the CPU case written out: a call of device_args costs ~0.3 us
            f"def {name}(like, *, {rest}):\n"
            f"    if like.is_cpu and get_num_threads() == _threads[0]:\n"
            f"        return binding(-1, 0, codes[like.dtype], {rest})\n"
            f"    dev, stream = device_args(like)\n"
            f"    return binding(dev, stream, codes[like.dtype], {rest})\n"
        )
    else:
        rest = ", ".join(names)
        source = f"def {name}(*, {rest}):\n    return binding({rest})\n"
    namespace = {
        "binding": binding,
        "device_args": device_args,
        "codes": DTYPE_CODES,
        "get_num_threads": torch.get_num_threads,
        "_threads": _threads,
    }
    exec(compile(source, f"<medmeta._C.{name}>", "exec"), namespace)
    return namespace[name]


def device_args(t: torch.Tensor) -> tuple[int, int]:
    """(device index, stream handle) for a kernel call on ``t``'s device; -1 means the CPU."""
    if t.is_cpu:
        n = torch.get_num_threads()
        if n != _threads[0]:  # keep the OpenMP kernels at torch's thread count
            lib().set_num_threads(n)
            _threads[0] = n
        return -1, 0
    if not _cuda_ok:
        check_cuda()
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(t.device).cuda_stream


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def workspace(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` in ``like``'s accumulation dtype, on its device."""
    return like.new_empty(shape, dtype=acc_dtype(like.dtype))


SCRATCH_CACHE_ELEMENTS = 1 << 20  # per thread and dtype: 4 MiB of float32, 8 of float64
_scratch_local = threading.local()


def scratch(like: torch.Tensor, n: int) -> torch.Tensor:
    """At least ``n`` elements of accumulation-dtype scratch on ``like``'s device, for values
    that no caller sees (not outputs, not saved for the backward).

    On the CPU, up to :data:`SCRATCH_CACHE_ELEMENTS`, it is one buffer per thread and dtype,
    reused by every call (an allocation costs ~1 us, a fifth of a small op's budget): the
    CPU kernels finish before they return and no op runs another while its kernel runs, so
    a buffer is never in use twice. Anywhere else it is a fresh tensor, which the caller
    keeps until the kernel is launched (CUDA's caching allocator orders its reuse after the
    kernels of the stream).
    """
    if like.is_cpu and n <= SCRATCH_CACHE_ELEMENTS:
        dtype = torch.float64 if like.dtype is torch.float64 else torch.float32
        buffers = _scratch_local.__dict__
        buffer = buffers.get(dtype)
        if buffer is None or buffer.numel() < n:
            buffer = buffers[dtype] = torch.empty(max(n, 256), dtype=dtype)
        return buffer
    return workspace(like, n)


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
    info["cuda_driver"] = int(lib().cuda_driver_version())
    info["torch_cuda"] = torch.version.cuda
    versions = check_cuda_versions(info["cuda_runtime"], info["cuda_driver"], torch.version.cuda)
    info["cuda_error"] = versions.error
    info["cuda_torch_mismatch"] = versions.torch_mismatch
    info["cpu_threads"] = int(lib().num_threads())
    return info
