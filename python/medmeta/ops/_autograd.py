"""Autograd plumbing shared by the ops.

Each op has two entry points over the same native kernels: an eager
``torch.autograd.Function`` (lowest per-call overhead) and a ``torch.library`` custom
op (traceable by ``torch.compile``, checkable by ``opcheck``). Both share the
``setup_context`` and backward logic. First-order backward runs the native kernels;
when the backward itself must be differentiable (``create_graph=True``, e.g.
``gradgradcheck``), gradients come from the differentiable pure-torch reference instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def native_function(
    name: str, forward: Callable, setup_context: Callable, backward: Callable
) -> Any:
    """An autograd.Function class running ``forward`` then ``setup_context`` on its inputs.

    Built in the classic ``forward(ctx, *args)`` style: the newer style with a separate
    ``setup_context`` staticmethod costs ~15 us more per call, which matters for episodes.
    """

    def classic_forward(ctx: Any, *args: Any) -> Any:
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    return type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(classic_forward), "backward": staticmethod(backward)},
    )


def higher_order() -> bool:
    """True inside a backward pass that must itself be differentiable (create_graph=True)."""
    return torch.is_grad_enabled()


def reference_vjp(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[Any],
    needs_grad: Sequence[bool],
    grad_outputs: Sequence[torch.Tensor | None],
) -> list[torch.Tensor | None]:
    """Vector-Jacobian product of ``fn(*inputs)`` through the reference, keeping the graph.

    Returns one entry per input: the gradient for inputs in ``needs_grad``, else None.
    """
    wanted = [i for i, need in enumerate(needs_grad) if need]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        outputs = fn(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [
            (o, g)
            for o, g in zip(outputs, grad_outputs, strict=False)
            if g is not None and o.requires_grad
        ]
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            [inputs[i] for i in wanted],
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
    for i, g in zip(wanted, grads, strict=True):
        result[i] = g
    return result
