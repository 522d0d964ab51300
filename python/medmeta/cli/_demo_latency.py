"""The demo's latency measurement: p50/p99 of one forward pass of eager PyTorch and of the
exported ONNX files under onnxruntime, at batch 1 and 32, with the same thread count."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["measure_latency"]


def _percentiles(times_s: list[float]) -> tuple[float, float]:
    ordered = sorted(times_s)
    p99 = ordered[min(len(ordered) - 1, int(np.ceil(0.99 * len(ordered))) - 1)]
    return 1e3 * statistics.median(ordered), 1e3 * p99


def _time(fn: Callable[[], Any], runs: int, budget_s: float = 2.0) -> tuple[float, float]:
    """p50/p99 in ms of ``runs`` calls after a warm-up, stopping early (after at least 10)
    once ``budget_s`` seconds are spent, so a slow runtime cannot stall the demo."""
    for _ in range(max(3, runs // 10)):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def measure_latency(
    adapted: Callable[[torch.Tensor], Any], onnx_files: dict[str, Path], x: np.ndarray, runs: int
) -> list[dict[str, Any]]:
    """p50/p99 of one forward pass at batch 1 and 32: eager PyTorch (inference mode) and
    onnxruntime sessions with the same thread count.

    Args:
        adapted: the adapted model's eager forward pass on a CPU batch (a classifier in
            eval mode; a regressor's interval, the outputs its ONNX file computes).
        onnx_files: ``{runtime label: ONNX file}`` taking the same inputs.
        x: preprocessed inputs ``[n, *input_shape]``, repeated to fill a batch of 32.
        runs: timed calls per runtime and batch size.

    Returns:
        Rows ``{"runtime", "batch", "p50_ms", "p99_ms", "threads"}``.
    """
    from medmeta.edge.runtime import cpu_session

    threads = torch.get_num_threads()
    rows = []
    for batch in (1, 32):
        inputs = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=np.float32)
        tensor = torch.from_numpy(inputs)
        with torch.inference_mode():
            p50, p99 = _time(lambda t=tensor: adapted(t), runs)
        rows.append({"runtime": "eager PyTorch", "batch": batch, "p50_ms": p50, "p99_ms": p99,
                     "threads": threads})  # fmt: skip
        for label, path in onnx_files.items():
            session = cpu_session(path, str(path), threads)
            feed = {session.get_inputs()[0].name: inputs}
            p50, p99 = _time(lambda s=session, f=feed: s.run(None, f), runs)
            rows.append({"runtime": label, "batch": batch, "p50_ms": p50, "p99_ms": p99,
                         "threads": threads})  # fmt: skip
    return rows
