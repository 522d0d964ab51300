"""The one registration path of every native op.

An op file gives :class:`NativeOp` only what is its own: the argument checks, the native
forward and backward, the shapes of the outputs (its fake implementation), the pure-torch
reference and what the public function returns. From them this module builds the rest:

- ``torch.ops.medmeta.<name>`` and ``torch.ops.medmeta.<name>_backward``: ``torch.library``
  custom ops with fake implementations, so ``torch.compile`` traces them and ``opcheck`` checks
  them; the backward op's schema is the forward's arguments between the incoming gradients,
  the saved outputs and the flags of the inputs that need a gradient;
- autograd for both entry points: the custom op's ``register_autograd`` (under
  ``torch.compile``), and for eager calls a classic ``torch.autograd.Function``, which costs
  about 15 us less per call than the custom op's dispatcher;
- the double-backward rule: when the backward must itself be differentiable
  (``create_graph=True``), the gradients are those of the reference, re-run under autograd;
- the dispatch of one call: ``MEDMETA_BACKEND=reference``, a compiled graph, a direct native
  call when nothing needs a gradient, or eager autograd.

Native backward contract: ``backward(upstream, args, outputs, needs)`` gets the gradients of
the forward's outputs (one per output, in order; None for an output that got no gradient:
it is not called when no differentiable output got one), the forward's arguments, its outputs (None where not in ``saved_outputs``) and one flag per differentiable argument; it returns one
gradient per differentiable argument (a tensor, a list of tensors for a list argument, or
None where its flag is False).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from operator import attrgetter
from typing import Any

import torch

from medmeta.ops import _native

TENSOR, OPTIONAL, LIST, VALUE = "Tensor", "Tensor?", "Tensor[]", "value"
Gradient = torch.Tensor | list[torch.Tensor] | None


def argument_kinds(schema: str) -> tuple[str, ...]:
    """The kind of each argument of a schema ``(Tensor x, Tensor? w, SymInt n) -> ...``."""
    arguments = schema[schema.index("(") + 1 : schema.index(") ->")]
    kinds = [a.strip().rsplit(" ", 1)[0] for a in arguments.split(",") if a.strip()]
    return tuple(k if k in (TENSOR, OPTIONAL, LIST) else VALUE for k in kinds)


def _tuple(names: Sequence[str]) -> str:
    """Python source of a tuple of ``names`` (``()``, ``(a,)``, ``(a, b)``)."""
    return f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"


def _contiguous(args: Sequence[Any]) -> list[Any]:
    return [
        [t.contiguous() for t in a]
        if isinstance(a, list)
        else a.contiguous()
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    ]


class NativeOp:
    """An op of ``medmeta._C``: call it with the public arguments (see the module docstring).

    Args:
        name: the op's name; registers ``torch.ops.medmeta.<name>`` and ``<name>_backward``.
        checks: ``checks(*public_arguments) -> arguments`` of ``forward`` (validated,
            contiguous); raises with the argument's name, what was expected and what came.
        forward: the native forward, annotated (its annotations are the custom op's schema).
        inference: the forward of calls that need no gradient, if cheaper: it may skip the
            outputs only the backward reads (default: ``forward``).
        fake: the outputs' shapes and dtypes for the same arguments (no data read).
        backward: the native backward (see the module docstring).
        reference: the pure-torch formula for the same arguments, returning at least the
            outputs ``result`` and the double backward read, at the same positions.
        result: ``result(outputs) -> what the public function returns``.
        differentiable: positions of the arguments that may need a gradient.
        differentiable_outputs: positions of the outputs with a gradient (all of a list).
        saved_outputs: positions of the outputs the native backward reads.
    """

    def __init__(
        self,
        name: str,
        *,
        checks: Callable[..., tuple],
        forward: Callable,
        fake: Callable,
        backward: Callable[..., tuple[Gradient, ...]],
        reference: Callable,
        result: Callable[[Any], Any],
        differentiable: Sequence[int],
        differentiable_outputs: Sequence[int] = (0,),
        saved_outputs: Sequence[int] = (),
        inference: Callable | None = None,
    ) -> None:
        self.name = name
        self._checks, self._forward, self._backward = checks, forward, backward
        self._inference = inference or forward
        self._reference, self._result = reference, result
        self._differentiable = tuple(differentiable)
        self._differentiable_outputs = tuple(differentiable_outputs)
        self._saved_outputs = tuple(saved_outputs)
        schema = torch.library.infer_schema(forward, mutates_args=())
        self._kinds = argument_kinds(schema)
        self._returns_list = schema.endswith("Tensor[]")
        returns = schema.split(") -> ", 1)[1].strip()
        self._n_outputs = (
            returns.count(",") + 1 if returns.startswith("(") else 1
        )  # plain path only
        self._has_lists = LIST in self._kinds
        self._tensor_arguments = tuple(
            i for i, kind in enumerate(self._kinds) if kind in (TENSOR, OPTIONAL)
        )
        self._value_arguments = tuple(i for i, kind in enumerate(self._kinds) if kind == VALUE)
        self.op = torch.library.custom_op(
            f"medmeta::{name}", self._dense_forward, mutates_args=(), schema=schema
        )
        self.op.register_fake(fake)
        self.backward_op = self._register_backward(schema)
        self.op.register_autograd(self._compiled_backward, setup_context=self._setup_context)
        self._function = self._eager_function()
        self._requires_grad = self._requires_grad_test()
        self.call = self._dispatcher()

    def _dense_forward(self, *args: Any) -> Any:
        """The custom op's forward: a compiled graph may pass other strides than the checks
        made (the eager paths call ``forward`` with the checked, contiguous arguments)."""
        return self._forward(*_contiguous(args))

    # ------------------------------------------------------------------------ a call

    def __call__(self, *arguments: Any) -> Any:
        return self.call(*arguments)

    def _dispatcher(self) -> Callable[..., Any]:
        """``call(*public_arguments)``: one call of the op. A closure over what it uses, so
        that a call reads no attribute of ``self`` (~0.5 us of a ~10 us budget)."""
        checks, result, reference, inference = (
            self._checks,
            self._result,
            self._reference,
            self._inference,
        )
        requires_grad, apply, op = self._requires_grad, self._apply, self.op
        use_reference, compiling = _native.use_reference, torch.compiler.is_compiling
        grad_enabled = torch.is_grad_enabled

        def call(*arguments: Any) -> Any:
            args = checks(*arguments)
            if use_reference():
                return result(reference(*args))
            if compiling():
                return result(op(*args))
            if grad_enabled() and requires_grad(args):
                return result(apply(args))
            return result(inference(*args))  # nothing to differentiate: no autograd

        return call

    def _requires_grad_test(self) -> Callable[[tuple], bool]:
        """``test(args)``: whether a differentiable argument requires a gradient, written out
        for this op's arguments (a loop over them costs ~0.3 us a call)."""
        terms, lists = [], []
        for i in self._differentiable:
            kind = self._kinds[i]
            if kind == TENSOR:
                terms.append(f"args[{i}].requires_grad")
            elif kind == OPTIONAL:
                terms.append(f"(args[{i}] is not None and args[{i}].requires_grad)")
            else:
                lists.append(f"args[{i}]")
        if lists:  # every tensor of every list in one pass
            terms.append(f"any(map(requires_grad, chain({', '.join(lists)})))")
        source = f"def test(args):\n    return {' or '.join(terms) or 'False'}\n"
        namespace: dict[str, Any] = {"requires_grad": attrgetter("requires_grad"), "chain": chain}
        exec(compile(source, f"<medmeta.ops.{self.name}.requires_grad>", "exec"), namespace)
        return namespace["test"]

    # ------------------------------------------------------------------------ autograd

    def _setup_context(self, ctx: Any, inputs: Sequence[Any], output: Any) -> None:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        if not self._returns_list and len(outputs) > len(self._differentiable_outputs):
            ctx.mark_non_differentiable(
                *(o for k, o in enumerate(outputs) if k not in self._differentiable_outputs)
            )
        saved_outputs = [outputs[k] for k in self._saved_outputs]
        if not self._has_lists:  # the common case, without a loop over the arguments
            ctx.save_for_backward(*[inputs[i] for i in self._tensor_arguments], *saved_outputs)
            ctx.values, ctx.lengths = [inputs[i] for i in self._value_arguments], ()
            ctx.n_outputs = len(outputs)
            return
        tensors, values, lengths = [], [], []
        for kind, a in zip(self._kinds, inputs, strict=True):
            if kind == LIST:
                tensors.extend(a)
                lengths.append(len(a))
            elif kind == VALUE:
                values.append(a)
            else:
                tensors.append(a)
        ctx.save_for_backward(*tensors, *saved_outputs)
        ctx.values, ctx.lengths, ctx.n_outputs = values, lengths, len(outputs)

    def _saved(self, ctx: Any) -> tuple[tuple, tuple]:
        """The forward's (arguments, outputs) back from ``ctx``."""
        if not self._has_lists:
            saved = ctx.saved_tensors
            n = len(self._tensor_arguments)
            args = [None] * len(self._kinds)
            for i, t in zip(self._tensor_arguments, saved[:n], strict=True):
                args[i] = t
            for i, v in zip(self._value_arguments, ctx.values, strict=True):
                args[i] = v
            outputs: list[torch.Tensor | None] = [None] * ctx.n_outputs
            for k, t in zip(self._saved_outputs, saved[n:], strict=True):
                outputs[k] = t
            return tuple(args), tuple(outputs)
        saved = iter(ctx.saved_tensors)
        values, lengths = iter(ctx.values), iter(ctx.lengths)
        args: list[Any] = []
        for kind in self._kinds:
            if kind == LIST:
                args.append([next(saved) for _ in range(next(lengths))])
            elif kind == VALUE:
                args.append(next(values))
            else:
                args.append(next(saved))
        outputs = [None] * ctx.n_outputs
        for k in self._saved_outputs:
            outputs[k] = next(saved)
        return tuple(args), tuple(outputs)

    def _gradients(
        self, ctx: Any, upstream: Sequence[torch.Tensor | None], needs: tuple[bool, ...], native
    ) -> tuple[Gradient, ...]:
        args, outputs = self._saved(ctx)
        chosen = (
            upstream if self._returns_list else (upstream[k] for k in self._differentiable_outputs)
        )
        if not any(needs) or all(u is None for u in chosen):  # no gradient flows in: none out
            return (None,) * len(needs)
        if torch.is_grad_enabled():  # the backward must be differentiable: use the reference
            return self._reference_gradients(args, upstream, needs)
        return native(tuple(upstream), args, outputs, needs)

    def _reference_gradients(
        self, args: tuple, upstream: Sequence[torch.Tensor | None], needs: tuple[bool, ...]
    ) -> tuple[Gradient, ...]:
        """Gradients of the reference through autograd, keeping the graph (create_graph)."""
        wanted = [i for i, need in zip(self._differentiable, needs, strict=True) if need]
        leaves = [t for i in wanted for t in (args[i] if self._kinds[i] == LIST else [args[i]])]
        with torch.enable_grad():
            outputs = self._reference(*args)
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            chosen = range(len(outputs)) if self._returns_list else self._differentiable_outputs
            pairs = [
                (outputs[k], upstream[k])
                for k in chosen
                if upstream[k] is not None and outputs[k].requires_grad
            ]
            grads = iter(
                torch.autograd.grad(
                    [o for o, _ in pairs],
                    leaves,
                    [g for _, g in pairs],
                    create_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
            )
        return self._unpack(grads, args, needs)

    def _compiled_backward(self, ctx: Any, *upstream: Any) -> tuple:
        """The custom op's backward: per argument, list arguments get lists back."""
        if self._returns_list:
            (upstream,) = upstream
        flags = [any(f) if isinstance(f, (list, tuple)) else bool(f) for f in ctx.needs_input_grad]
        needs = tuple(flags[i] for i in self._differentiable)
        grads = self._gradients(ctx, upstream, needs, self._backward_through_op)
        out: list[Any] = [None] * len(self._kinds)
        for i, g in zip(self._differentiable, grads, strict=True):
            if self._kinds[i] == LIST and g is None:
                g = [None] * ctx.lengths[self._list_index(i)]
            out[i] = g
        return tuple(out)

    def _list_index(self, i: int) -> int:
        return sum(1 for kind in self._kinds[:i] if kind == LIST)

    def _eager_function(self) -> type:
        """A classic-style autograd.Function over the arguments (lists flattened)."""
        if not self._has_lists and not self._returns_list:
            return self._plain_eager_function()
        op = self

        def forward(ctx: Any, *flat: Any) -> Any:
            args = op._unflatten(flat[0], flat[1:]) if op._has_lists else flat
            output = op._forward(*args)
            op._setup_context(ctx, args, output)
            ctx.set_materialize_grads(False)  # no zeros for outputs without a gradient
            return tuple(output) if op._returns_list else output

        def backward(ctx: Any, *upstream: Any) -> tuple:
            flags = ctx.needs_input_grad[1:] if op._has_lists else ctx.needs_input_grad
            per_argument = op._flag_per_argument(flags, ctx.lengths)
            needs = tuple(per_argument[i] for i in op._differentiable)
            grads = op._gradients(ctx, upstream, needs, op._backward)
            return op._flat_gradients(grads, needs, ctx.lengths, flags)

        return type(
            f"_{self.name}_function",
            (torch.autograd.Function,),
            {"forward": staticmethod(forward), "backward": staticmethod(backward)},
        )

    def _plain_eager_function(self) -> type:
        """The eager autograd.Function of an op without list arguments or results, written
        out for this op's arguments and outputs (no per-call loop over them, no helper call:
        ~20 us less per forward+backward than the general path, a sixth of a small
        segmentation op). Same semantics as the general one (see ``_gradients``)."""
        n_out = self._n_outputs
        args = [f"a{i}" for i in range(len(self._kinds))]
        outs = [f"o{k}" for k in range(n_out)]
        ups = [f"u{k}" for k in range(n_out)]
        needs = [f"n{j}" for j in range(len(self._differentiable))]
        hidden = [outs[k] for k in range(n_out) if k not in self._differentiable_outputs]
        tensors = [args[i] for i in self._tensor_arguments]
        values = [args[i] for i in self._value_arguments]
        saved = [*tensors, *(outs[k] for k in self._saved_outputs)]
        given = [outs[k] if k in self._saved_outputs else "None" for k in range(n_out)]
        grads = ["None"] * len(args)
        for j, i in enumerate(self._differentiable):
            grads[i] = f"g[{j}] if {needs[j]} else None"
        lines = [
            f"def forward(ctx, {', '.join(args)}):",
            f"    output = forward_fn({', '.join(args)})",
            f"    {_tuple(outs)} = {'output' if n_out > 1 else '(output,)'}",
            f"    ctx.mark_non_differentiable({', '.join(hidden)})" if hidden else "",
            f"    ctx.save_for_backward({', '.join(saved)})",
            f"    ctx.values = {_tuple(values)}",
            "    ctx.set_materialize_grads(False)  # no zeros for outputs without a gradient",
            "    return output",
            f"def backward(ctx, {', '.join(ups)}):",
            "    flags = ctx.needs_input_grad",
            *(f"    {n} = flags[{i}]" for n, i in zip(needs, self._differentiable, strict=True)),
            f"    if not ({' or '.join(needs)}) or "
            f"({' and '.join(f'{ups[k]} is None' for k in self._differentiable_outputs)}):",
            f"        return {_tuple(['None'] * len(args))}",
            f"    {_tuple(saved)} = ctx.saved_tensors",
            f"    {_tuple(values)} = ctx.values" if values else "",
            f"    needs = {_tuple(needs)}",
            "    if grad_enabled():  # the backward must be differentiable: use the reference",
            f"        g = reference_gradients({_tuple(args)}, {_tuple(ups)}, needs)",
            "    else:",
            f"        g = native({_tuple(ups)}, {_tuple(args)}, {_tuple(given)}, needs)",
            f"    return {_tuple([f'({x})' if x != 'None' else x for x in grads])}",
        ]
        namespace: dict[str, Any] = {
            "forward_fn": self._forward,
            "native": self._backward,
            "reference_gradients": self._reference_gradients,
            "grad_enabled": torch.is_grad_enabled,
        }
        source = "\n".join(line for line in lines if line) + "\n"
        exec(compile(source, f"<medmeta.ops.{self.name}.autograd>", "exec"), namespace)
        return type(
            f"_{self.name}_function",
            (torch.autograd.Function,),
            {
                "forward": staticmethod(namespace["forward"]),
                "backward": staticmethod(namespace["backward"]),
            },
        )

    def _apply(self, args: tuple) -> Any:
        if not self._has_lists:
            return self._function.apply(*args)
        lengths = tuple(len(a) for kind, a in zip(self._kinds, args, strict=True) if kind == LIST)
        flat = [
            t
            for kind, a in zip(self._kinds, args, strict=True)
            for t in (a if kind == LIST else (a,))
        ]
        output = self._function.apply(lengths, *flat)
        return list(output) if self._returns_list else output

    def _unflatten(self, lengths: tuple[int, ...], flat: Sequence[Any]) -> tuple:
        args, at, lists = [], 0, iter(lengths)
        for kind in self._kinds:
            if kind == LIST:
                n = next(lists)
                args.append(list(flat[at : at + n]))
                at += n
            else:
                args.append(flat[at])
                at += 1
        return tuple(args)

    def _flag_per_argument(self, flags: Sequence[bool], lengths: Sequence[int]) -> list[bool]:
        if not self._has_lists:
            return list(flags)
        out, at, lists = [], 0, iter(lengths)
        for kind in self._kinds:
            n = next(lists) if kind == LIST else 1
            out.append(any(flags[at : at + n]))
            at += n
        return out

    def _flat_gradients(
        self,
        grads: tuple[Gradient, ...],
        needs: tuple[bool, ...],
        lengths: Sequence[int],
        flags: Sequence[bool],
    ) -> tuple:
        """Gradients in the eager Function's argument order (lists flattened)."""
        if not self._has_lists:
            out: list[Any] = [None] * len(self._kinds)
            for i, g in zip(self._differentiable, grads, strict=True):
                if flags[i]:
                    out[i] = g
            return tuple(out)
        by_argument = dict(zip(self._differentiable, grads, strict=True))
        out = [None]
        lists = iter(lengths)
        for i, kind in enumerate(self._kinds):
            g = by_argument.get(i)
            if kind == LIST:
                n = next(lists)
                out.extend(g if g is not None else [None] * n)
            else:
                out.append(g)
        return tuple(g if f else None for g, f in zip(out, [False, *flags], strict=True))

    # ------------------------------------------------------------------------ backward op

    def _register_backward(self, schema: str) -> Any:
        arguments = schema[schema.index("(") + 1 : schema.index(") ->")]
        backward_schema = (
            f"(Tensor?[] upstream, {arguments}, Tensor?[] results, bool[] needs) -> Tensor[]"
        )

        def run(upstream: list, *rest: Any) -> list[torch.Tensor]:
            *args, results, needs = rest
            args, results = _contiguous(args), _contiguous(results)
            grads = self._backward(tuple(upstream), tuple(args), tuple(results), tuple(needs))
            flat = self._pack(grads, needs)
            aliases = {id(t) for t in upstream if t is not None} | {
                id(t) for a in args for t in (a if isinstance(a, list) else [a])
            }
            return [t.clone() if id(t) in aliases else t for t in flat]  # outputs may not alias

        def fake(upstream: list, *rest: Any) -> list[torch.Tensor]:
            *args, _results, needs = rest
            like = [
                None
                if not need
                else [torch.empty_like(t) for t in args[i]]
                if self._kinds[i] == LIST
                else torch.empty_like(args[i])
                for i, need in zip(self._differentiable, needs, strict=True)
            ]
            return self._pack(like, needs)

        op = torch.library.custom_op(
            f"medmeta::{self.name}_backward", run, mutates_args=(), schema=backward_schema
        )
        op.register_fake(fake)
        return op

    def _pack(self, grads: Sequence[Gradient], needs: Sequence[bool]) -> list[torch.Tensor]:
        flat: list[torch.Tensor] = []
        for g, need in zip(grads, needs, strict=True):
            if need:
                flat.extend(g if isinstance(g, list) else [g])
        return flat

    def _backward_through_op(
        self, upstream: tuple, args: tuple, outputs: tuple, needs: tuple[bool, ...]
    ) -> tuple[Gradient, ...]:
        flat = self.backward_op(list(upstream), *args, list(outputs), list(needs))
        return self._unpack(iter(flat), args, needs)

    def _unpack(
        self, flat: Iterator[torch.Tensor], args: Sequence[Any], needs: Sequence[bool]
    ) -> tuple[Gradient, ...]:
        """One gradient per differentiable argument from the flat ones of those that need one
        (the inverse of :meth:`_pack`)."""
        grads: list[Gradient] = []
        for i, need in zip(self._differentiable, needs, strict=True):
            if not need:
                grads.append(None)
            elif self._kinds[i] == LIST:
                grads.append([next(flat) for _ in args[i]])
            else:
                grads.append(next(flat))
        return tuple(grads)
