"""``backend_info``: what was built, and which kernels a given tensor would use."""

from __future__ import annotations

from typing import Any

import torch

from medmeta.ops import _native


def backend_info(tensor: torch.Tensor | None = None) -> dict[str, Any]:
    """Describe the native build and the kernels an op on ``tensor`` would run.

    Returns a dict with ``backend`` (``native`` or ``reference``, from ``MEDMETA_BACKEND``),
    ``build`` (CUDA compiled and its architectures, OpenMP, CPU ISA, visible CUDA devices,
    CPU threads; or the load error and how to fix it) and, when ``tensor`` is given,
    ``kernel``: ``"cpu"``, ``"cuda"``, ``"reference"`` or ``"unsupported: <why>"``.

    CUDA versions in ``build`` (``1000 * major + 10 * minor``; 0 for none): ``cuda_runtime``,
    the runtime the extension was built with and links statically; ``cuda_driver``, what the
    installed driver supports; ``torch_cuda``, ``torch.version.cuda``; ``cuda_error``, why the
    CUDA kernels cannot run under this driver and how to fix it (None when they can);
    ``cuda_torch_mismatch``, whether torch's CUDA major differs from the build's.
    """
    info: dict[str, Any] = {"backend": _native.backend(), "build": _native.build_info()}
    if tensor is None:
        return info
    build = info["build"]
    if info["backend"] == "reference":
        kernel = "reference"
    elif not build["loaded"]:
        kernel = f"unsupported: {build['error']}"
    elif tensor.device.type == "cpu":
        ok = tensor.dtype in _native.CPU_DTYPES
        kernel = (
            "cpu" if ok else f"unsupported: CPU kernels take float32/float64, not {tensor.dtype}"
        )
    elif tensor.device.type == "cuda":
        if not build["cuda"]:
            kernel = (
                "unsupported: this build has no CUDA kernels (nvcc was not found at build time)"
            )
        elif build["cuda_error"] is not None:
            kernel = f"unsupported: {build['cuda_error']}"
        elif tensor.dtype not in _native.CUDA_DTYPES:
            kernel = f"unsupported: CUDA kernels do not take {tensor.dtype}"
        else:
            kernel = "cuda"
    else:
        kernel = f"unsupported: no kernels for device type {tensor.device.type}"
    info["kernel"] = kernel
    return info
