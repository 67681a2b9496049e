"""Our ops as ``torch.library`` custom ops, so ``torch.compile`` traces a model through them
without breaking the graph (on CPU, the chunk path; on CUDA, the Triton kernels).

Each op family registers two ops in the ``postformer`` namespace with :func:`register`:

- ``postformer::<op>``: the forward. Its implementation is the family's public function itself
  (validation and dispatch included, ``impl`` as given), so a compiled call computes exactly what
  an eager call computes; its fake (meta) function gives the outputs' shapes and dtypes.
- ``postformer::<op>_bwd``: the backward (``register_autograd``). It recomputes the forward with
  autograd on and returns the vector-Jacobian product of the existing implementation (the chunk
  path's PyTorch autograd, the Triton path's ``autograd.Function``): correct for every path and
  every optional input, at the cost of one more forward of the op in the backward pass (as
  activation checkpointing of the op alone would). The op's inputs are saved, not its internals.

The public functions route through the custom op only while Dynamo traces them
(``torch.compiler.is_compiling()``); eager calls run the family's code directly, as before.
Packed batches (``cu_seqlens``) are not routed: their offsets are read on the host, so Dynamo
runs that call eagerly (``torch.compiler.disable``, a graph break) and the result is the eager one.

Optional outputs that are None in the public API (``final_state`` without
``output_final_state``) travel through the op as empty tensors and come back as None.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

NAMESPACE = "postformer"
#: schema types a parameter may have
TYPES = ("Tensor", "Tensor?", "float", "float?", "bool", "int", "int?", "str", "str?")

#: every registered op by name (``gla``, ``delta_rule``, ...)
OPS: dict[str, CustomOp] = {}


def _is_tensor_type(t: str) -> bool:
    return t.startswith("Tensor")


def _own(out: torch.Tensor, seen: list[torch.Tensor]) -> torch.Tensor:
    """``out`` contiguous and sharing no storage with any tensor in ``seen`` (a custom op's
    outputs may not alias its inputs or each other); appended to ``seen``."""
    out = out.contiguous()
    ptr = out.untyped_storage().data_ptr()
    if out.numel() == 0 or any(s is not None and s.numel() > 0 and s.untyped_storage().data_ptr() == ptr
                               for s in seen):
        out = out.clone(memory_format=torch.contiguous_format)
    seen.append(out)
    return out


@contextlib.contextmanager
def _autograd_on() -> Iterator[None]:
    """Autograd recording on inside a custom op's implementation: the dispatcher runs it below
    the autograd keys (``_AutoDispatchBelowAutograd``), so ``enable_grad`` alone records nothing.
    Takes the autograd keys out of this thread's excluded dispatch keys for the block."""
    C = torch._C
    exclude = C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(C.DispatchKey, key))
    with C._ForceDispatchKeyGuard(C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _empty_like_dense(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@dataclass
class CustomOp:
    """One op family as a custom op (see the module docstring); call it with the public
    function's keyword arguments, get the public function's return."""

    name: str
    fn: Callable[..., Any]
    params: tuple[tuple[str, str], ...]
    fake: Callable[..., Any]
    pair: bool
    fwd: Any = field(default=None, repr=False)
    bwd: Any = field(default=None, repr=False)

    @functools.cached_property
    def eager(self) -> Callable[..., Any]:
        """``fn`` outside Dynamo (``torch.compiler.disable``), made on first use (a packed call
        under compile): made at registration it would import Dynamo, 0.7 s, into every command
        that never compiles (``postformer list``, ``report``)."""
        return torch.compiler.disable(self.fn)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]

    @property
    def tensor_names(self) -> list[str]:
        return [n for n, t in self.params if _is_tensor_type(t)]

    def __call__(self, **kwargs: Any) -> Any:
        """The public function's call under torch.compile: through the custom op, or, for a
        packed batch (``cu_seqlens``), the public function run eagerly."""
        cu_seqlens = kwargs.pop("cu_seqlens", None)
        if cu_seqlens is not None:
            return self.eager(cu_seqlens=cu_seqlens, **kwargs)
        out = self.fwd(*(kwargs[n] for n in self.names))
        if not self.pair:
            return out
        y, state = out
        return y, (state if kwargs.get("output_final_state", True) else None)

    # ---- implementations --------------------------------------------------------------

    def _run(self, args: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """The public function on ``args``: outputs as a tuple, None as an empty tensor."""
        out = self.fn(**dict(zip(self.names, args)))
        outs = tuple(out) if self.pair else (out,)
        first = outs[0]
        return tuple(first.new_empty(0) if o is None else o for o in outs)

    def _fwd_impl(self, *args: Any) -> Any:
        seen = [a for a in args if isinstance(a, torch.Tensor)]
        outs = tuple(_own(o, seen) for o in self._run(args))
        return outs if self.pair else outs[0]

    def _fwd_fake(self, *args: Any) -> Any:
        return self.fake(**dict(zip(self.names, args)))

    def _bwd_impl(self, grads: list[torch.Tensor], needs: list[bool], *args: Any) -> list[torch.Tensor]:
        kw = dict(zip(self.names, args))
        leaves: dict[str, torch.Tensor] = {}
        with _autograd_on():
            for n, need in zip(self.tensor_names, needs):
                if need and kw[n] is not None:
                    kw[n] = kw[n].detach().requires_grad_(True)
                    leaves[n] = kw[n]
            outs = self._run([kw[n] for n in self.names])
        pairs = [(o, g) for o, g in zip(outs, grads) if g.numel() > 0 and o.requires_grad]
        result: dict[str, torch.Tensor | None] = dict.fromkeys(leaves)
        if leaves and pairs:
            got = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()),
                                      [g for _, g in pairs], allow_unused=True)
            result = dict(zip(leaves, got))
        seen = list(grads) + [a for a in args if isinstance(a, torch.Tensor)]
        empty = grads[0].new_empty(0)
        return [
            (_own(torch.zeros_like(leaves[n]) if result[n] is None else result[n], seen)
             if n in leaves else empty.clone())
            for n in self.tensor_names
        ]

    def _bwd_fake(self, grads: list[torch.Tensor], needs: list[bool], *args: Any) -> list[torch.Tensor]:
        kw = dict(zip(self.names, args))
        return [_empty_like_dense(kw[n]) if need and kw[n] is not None else grads[0].new_empty(0)
                for n, need in zip(self.tensor_names, needs)]

    # ---- autograd ---------------------------------------------------------------------

    def _setup_context(self, ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.args = [None if isinstance(x, torch.Tensor) else x for x in inputs]
        ctx.tensor_idx = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_idx))

    def _backward(self, ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        args = list(ctx.args)
        for i, x in zip(ctx.tensor_idx, ctx.saved_tensors):
            args[i] = x
        pos = {n: i for i, n in enumerate(self.names)}
        needs = [bool(ctx.needs_input_grad[pos[n]]) and args[pos[n]] is not None
                 for n in self.tensor_names]
        out: list[torch.Tensor | None] = [None] * len(self.params)
        if not any(needs):
            return tuple(out)
        ref = next(g for g in grads if g is not None)
        got = self.bwd([ref.new_empty(0) if g is None else g for g in grads], needs, *args)
        for n, need, g in zip(self.tensor_names, needs, got):
            if need:
                out[pos[n]] = g
        return tuple(out)


def register(name: str, fn: Callable[..., Any], params: Sequence[tuple[str, str]],
             fake: Callable[..., Any], *, pair: bool = True) -> CustomOp:
    """Register ``postformer::<name>`` (forward) and ``postformer::<name>_bwd`` around the public
    function ``fn``; ``params`` are its arguments (all passed as keywords) as ``(name, schema
    type)``; ``fake(**kwargs)`` returns empty outputs of the right shapes and dtypes (the
    ``(y, state)`` pair when ``pair``, an empty state when the op returns None); returns the
    :class:`CustomOp`, also kept in :data:`OPS`."""
    for n, t in params:
        if t not in TYPES:
            raise ValueError(f"{name}: parameter {n} has type {t!r}, not one of {TYPES}")
    op = CustomOp(name, fn, tuple(params), fake, pair)
    sig = ", ".join(f"{t} {n}" for n, t in params)
    ret = "(Tensor, Tensor)" if pair else "Tensor"
    op.fwd = torch.library.custom_op(f"{NAMESPACE}::{name}", op._fwd_impl, mutates_args=(),
                                     schema=f"({sig}) -> {ret}")
    op.fwd.register_fake(op._fwd_fake)
    op.bwd = torch.library.custom_op(f"{NAMESPACE}::{name}_bwd", op._bwd_impl, mutates_args=(),
                                     schema=f"(Tensor[] grads, bool[] needs, {sig}) -> Tensor[]")
    op.bwd.register_fake(op._bwd_fake)

    op.fwd.register_autograd(op._backward, setup_context=op._setup_context)
    OPS[name] = op
    return op


def state_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype of a float32 state (float64 when any input is float64)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def fake_pair(y_like: torch.Tensor, y_shape: Sequence[int], state_shape: Sequence[int],
              state_dtype: torch.dtype, output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(y, state)`` for a fake function: y in ``y_like``'s dtype and device; the state
    empty (``[0]`` in y's dtype) unless ``output_final_state``."""
    y = y_like.new_empty(tuple(y_shape))
    if not output_final_state:
        return y, y_like.new_empty(0)
    return y, y_like.new_empty(tuple(state_shape), dtype=state_dtype)
