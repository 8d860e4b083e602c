"""The `attnx` op namespace: schemas, reference implementations, fake kernels and autograd.

Schemas live here, in Python, so the package works without its native library. The reference
is registered at CompositeExplicitAutograd: it serves CPU tensors and CUDA tensors alike until
the native library (loaded afterwards, see attnx._native) registers a CUDA kernel for the same
schema, which then takes precedence for CUDA tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch._library.utils import fill_defaults

from ..reference._core import lse_dtype

lib = torch.library.Library("attnx", "DEF")
OPS: dict[str, str] = {}  # op name -> family
_SAVED = object()  # stands for a tensor argument kept in ctx.saved_tensors


def _with_defaults(op, fn: Callable) -> Callable:
    """The dispatcher drops trailing arguments equal to their defaults: put them back."""
    def call(*args, **kwargs):
        args, kwargs = fill_defaults(op._schema, args, kwargs)
        return fn(*args, **kwargs)
    call.__name__ = getattr(fn, "__name__", "impl")
    return call


def define(name: str, schema: str, impl: Callable, *, fake: Callable | None = None, family: str,
           key: str = "CompositeExplicitAutograd"):
    lib.define(f"{name}{schema}")
    op = getattr(torch.ops.attnx, name).default
    lib.impl(name, _with_defaults(op, impl), key)
    if fake is not None:
        torch.library.register_fake(f"attnx::{name}", _with_defaults(op, fake), lib=lib)
    OPS[name] = family
    return op


def attention_out_fake(q, k, v, *_):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return out, q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype))


def define_attention_like(name: str, extra_schema: str, fwd: Callable, bwd: Callable, *, family: str,
                          fake: Callable = attention_out_fake):
    """An attention op `name(q, k, v, *extra) -> (out, lse)` and `name_backward`, with autograd.

    ``fwd(q, k, v, *extra) -> (out, lse)``; ``bwd(dout, dlse|None, q, k, v, out, lse, *extra) ->
    (dq, dk, dv)``. Only q, k and v are differentiable; the extras (flags, index tensors) are not.
    """
    extra = f", {extra_schema}" if extra_schema else ""
    op = define(name, f"(Tensor q, Tensor k, Tensor v{extra}) -> (Tensor out, Tensor lse)", fwd,
                fake=fake, family=family)
    bwd_op = define(f"{name}_backward",
                    f"(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse{extra})"
                    " -> (Tensor dq, Tensor dk, Tensor dv)",
                    bwd, fake=lambda dout, dlse, q, k, v, *_: (torch.empty_like(q), torch.empty_like(k),
                                                              torch.empty_like(v)),
                    family=family)
    n_extra = len(op._schema.arguments) - 3

    def setup_context(ctx, inputs, output):
        q, k, v, *rest = inputs
        ctx.save_for_backward(q, k, v, *output, *[x for x in rest if isinstance(x, torch.Tensor)])
        ctx.rest = [_SAVED if isinstance(x, torch.Tensor) else x for x in rest]

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        it = iter(tensors)
        rest = [next(it) if x is _SAVED else x for x in ctx.rest]
        dq, dk, dv = bwd_op(dout, dlse, q, k, v, out, lse, *rest)
        return (dq, dk, dv, *([None] * n_extra))

    torch.library.register_autograd(f"attnx::{name}", backward, setup_context=setup_context, lib=lib)
    return op, bwd_op
