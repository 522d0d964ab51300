"""Per-thread CPU scratch (medmeta.ops._native.scratch) and the ops that use it from
several threads at once."""

from __future__ import annotations

import threading

import torch

from medmeta import ops
from medmeta.ops import _native


def test_cpu_scratch_is_reused_per_thread_and_dtype_and_grows_on_demand():
    x32, x64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    a = _native.scratch(x32, 10)
    assert a.dtype == torch.float32 and a.numel() >= 10
    assert _native.scratch(x32, 5) is a  # reused, not reallocated
    assert _native.scratch(x64, 5).dtype == torch.float64
    big = _native.scratch(x32, a.numel() + 1)
    assert big is not a and big.numel() > a.numel()
    assert _native.scratch(x32, 3) is big
    other: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: other.append(_native.scratch(x32, 3)))
    thread.start()
    thread.join()
    assert other[0] is not big  # another thread has its own
    beyond = _native.SCRATCH_CACHE_ELEMENTS + 1
    huge = _native.scratch(x32, beyond)
    assert huge.numel() == beyond and _native.scratch(x32, beyond) is not huge  # not kept


def test_ops_using_scratch_give_serial_results_from_many_threads(gen):
    """No-grad calls of the loss, prototypes and masked_prototypes keep internal values in
    per-thread scratch: eight threads with different shapes at once equal serial calls."""
    cases = []
    for k in range(8):
        B, Q, N, D = 1 + k % 3, 3 + k, 2 + k % 4, 5 + 2 * k
        q = torch.randn(B, Q, D, generator=gen)
        p = torch.randn(B, N, D, generator=gen)
        t = torch.randint(0, N, (B, Q), generator=gen)
        labels = torch.arange(N + k).remainder(N).expand(B, -1).contiguous()
        e = torch.randn(B, N + k, D, generator=gen)
        f = torch.randn(B, 2, D, 3, 3, generator=gen)
        m = torch.rand(B, 2, N, 3, 3, generator=gen) + 0.1
        cases.append((q, p, t, e, labels, N, f, m))

    def run(case):
        q, p, t, e, labels, N, f, m = case
        out = []
        for _ in range(50):
            out = [*ops.prototypical_loss(q, p, t), ops.prototypes(e, labels, N)]
            out.append(ops.masked_prototypes(f, m))
        return out

    serial = [run(c) for c in cases]
    results: dict[int, list[torch.Tensor]] = {}
    threads = [
        threading.Thread(target=lambda k=k: results.__setitem__(k, run(cases[k])))
        for k in range(len(cases))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, want in enumerate(serial):
        for got, expected in zip(results[k], want, strict=True):
            assert torch.equal(got, expected)
