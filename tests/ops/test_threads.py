"""The native ops from several Python threads at once (issue 16).

The bindings release the GIL around every kernel and keep no state between calls, and the
Python layer's scratch buffers are per thread: concurrent calls, forward and backward, give
bitwise the results of the same calls made one after another, and other Python threads run
while a long kernel does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from helpers import torch_threads
from medmeta import ops

THREADS = 4
ROUNDS = 3


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    """One set of op inputs per thread (distinct data, the same shapes)."""
    g = torch.Generator().manual_seed(seed)
    B, Q, N, S, D = 2, 128, 12, 256, 160  # N >= 8: the matrix-product distance kernels
    return {
        "x": torch.randn(B, Q, D, generator=g, dtype=torch.float64),
        "y": torch.randn(B, N, D, generator=g, dtype=torch.float64),
        "targets": torch.randint(0, N, (B, Q), generator=g),
        "emb": torch.randn(B, S, D, generator=g),
        "labels": torch.arange(S).remainder(N).expand(B, S).contiguous(),
        "weights": torch.rand(B, S, generator=g) + 0.5,
        "feat": torch.randn(2, 4, 32, 24, 24, generator=g),
        "masks": torch.rand(2, 4, 5, 24, 24, generator=g),
        "params": torch.randn(4, 128, 257, generator=g),  # several work items per tensor
        "grads": torch.randn(4, 128, 257, generator=g),
        "rate": torch.rand(128, 257, generator=g),
    }


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return list(torch.autograd.grad(out, inputs, upstream))


def _all_ops(data: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Forward and backward of every native op on ``data``: the outputs and input gradients."""
    t = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in data.items()}
    results: list[torch.Tensor] = []
    for metric in ("sqeuclidean", "euclidean", "cosine", "dot"):
        d = ops.pairwise_distance(t["x"], t["y"], metric)
        results += [d, *_grads(d, [t["x"], t["y"]])]
    loss, acc = ops.prototypical_loss(t["x"], t["y"], t["targets"], "cosine", 0.5)
    results += [loss, acc, *_grads(loss, [t["x"], t["y"]])]
    p = ops.prototypes(t["emb"], t["labels"], t["y"].shape[1], t["weights"])
    results += [p, *_grads(p, [t["emb"], t["weights"]])]
    m = ops.masked_prototypes(t["feat"], t["masks"])
    results += [m, *_grads(m, [t["feat"], t["masks"]])]
    (u,) = ops.inner_update([t["params"]], [t["grads"]], [t["rate"]])
    results += [u, *_grads(u, [t["params"], t["grads"], t["rate"]])]
    return [r.detach() for r in results]


def _run_threads(n: int, work: Callable[[int], None]) -> None:
    """``work(i)`` in ``n`` threads started together; re-raises the first error."""
    barrier, errors = threading.Barrier(n), []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread did not finish"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_concurrent_calls_equal_serial_calls_bitwise(kernel_threads):
    data = [_inputs(seed) for seed in range(THREADS)]
    with torch_threads(kernel_threads):
        serial = [_all_ops(d) for d in data]
        concurrent: list[list[list[torch.Tensor]]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            for _ in range(ROUNDS):
                concurrent[i].append(_all_ops(data[i]))

        _run_threads(THREADS, work)
    for i in range(THREADS):
        for got in concurrent[i]:
            assert len(got) == len(serial[i])
            for k, (a, b) in enumerate(zip(got, serial[i], strict=True)):
                assert torch.equal(a, b), f"thread {i}, result {k} differs from the serial call"


def test_same_inputs_from_every_thread_give_one_result():
    """Threads sharing the same input tensors (read concurrently) all get the serial result."""
    data = _inputs(7)
    with torch_threads(1):
        want = _all_ops(data)
        got: list[list[torch.Tensor]] = [[] for _ in range(THREADS)]
        _run_threads(THREADS, lambda i: got[i].extend(_all_ops(data)))
    for results in got:
        assert all(torch.equal(a, b) for a, b in zip(results, want, strict=True))


def _long_distance_call() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for which one pairwise_distance kernel runs at least 0.25 s (here, now)."""
    g = torch.Generator().manual_seed(0)
    rows = 512
    while True:
        x = torch.randn(1, rows, 256, generator=g)
        y = torch.randn(1, rows, 256, generator=g)
        start = time.perf_counter()
        ops.pairwise_distance(x, y)
        if time.perf_counter() - start >= 0.25 or rows >= 16384:
            return x, y
        rows *= 2


def _ticks_during(call: Callable[[], object]) -> tuple[int, float]:
    """Runs ``call`` in a thread while this one ticks (1 ms sleeps): the ticks in the middle
    half of the call, and the call's duration."""
    ticks: list[float] = []
    span: list[float] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        span.append(time.perf_counter())
        call()
        span.append(time.perf_counter())

    th = threading.Thread(target=run)
    th.start()
    started.wait()
    while th.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    th.join()
    start, end = span
    quarter = (end - start) / 4
    return sum(start + quarter < t < end - quarter for t in ticks), end - start


def test_a_long_kernel_lets_other_python_threads_run():
    """While one thread is inside a long native kernel, another thread runs Python code: with
    the GIL held it could not run at all between the kernel's start and end."""
    with torch_threads(1), torch.no_grad():
        x, y = _long_distance_call()
        for _ in range(3):  # a loaded machine may run the kernel faster than calibrated: retry
            inside, took = _ticks_during(lambda: ops.pairwise_distance(x, y))
            if took >= 0.1:
                break
    assert took >= 0.1, f"the kernel took only {took:.3f} s"
    assert inside >= 5, (
        f"only {inside} ticks of the other thread in the middle of a {took:.3f} s kernel"
    )
