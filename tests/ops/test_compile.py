"""Custom-op registration: torch.library.opcheck on every op and a torch.compile smoke test."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from medmeta import ops


def _cases(device):
    g = torch.Generator().manual_seed(0)

    def r(*s, grad=True):
        return torch.randn(s, generator=g).to(device).requires_grad_(grad)

    q, p = r(3, 7, 9), r(3, 4, 9)
    t = torch.randint(0, 4, (3, 7), generator=g).to(device)
    labels = (torch.arange(10) % 3).repeat(2, 1).to(device)
    ps, gs = [r(4, 3, 5), r(4, 7)], [r(4, 3, 5), r(4, 7)]
    m = torch.ops.medmeta
    return [
        (m.pairwise_distance.default, (q, p, 0)),
        (m.pairwise_distance.default, (q, p, 2)),
        (m.prototypical_loss.default, (q, p, t, 0, 0.5)),
        (m.prototypical_loss.default, (q, p, t, 2, 1.0)),
        (m.prototypes.default, (r(2, 10, 6), labels, 3, None)),
        (m.prototypes.default, (r(2, 10, 6), labels, 3, r(2, 10).abs().detach().requires_grad_())),
        (
            m.masked_prototypes.default,
            (r(2, 3, 5, 4, 6), r(2, 3, 2, 4, 6).abs().detach().requires_grad_()),
        ),
        (m.inner_update.default, (ps, gs, [], 0.1)),
        (m.inner_update.default, (ps, gs, [r(1), r(7)], 0.0)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(device, case):
    op, args = _cases(device)[case]
    opcheck(op, args)


def test_torch_compile_matches_eager(gen):
    q = torch.randn(4, 15, 16, generator=gen, requires_grad=True)
    t = torch.randint(0, 5, (4, 15), generator=gen)
    support = torch.randn(4, 10, 16, generator=gen)
    labels = (torch.arange(10) % 5).repeat(4, 1)
    w = [torch.randn(4, 16, 5, generator=gen, requires_grad=True)]

    def step(q, support, w):
        protos = ops.prototypes(support, labels, 5)
        loss, acc = ops.prototypical_loss(q, protos, t)
        (new,) = ops.inner_update(w, [torch.ones_like(w[0])], 0.1)
        return loss.mean() + new.square().mean(), acc

    compiled = torch.compile(step, fullgraph=True)
    got_loss, got_acc = compiled(q, support, w)
    got_grads = torch.autograd.grad(got_loss, [q, *w])
    want_loss, want_acc = step(q, support, w)
    want_grads = torch.autograd.grad(want_loss, [q, *w])
    torch.testing.assert_close(got_loss, want_loss)
    torch.testing.assert_close(got_acc, want_acc)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)
