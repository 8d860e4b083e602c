"""Argument checks shared by the public API, the op registry and the references.

Every check raises ValueError naming the argument, what was given and what is allowed
(DESIGN.md, "Bad input"). Checks look only at metadata (shape, dtype, device), never at
values, unless the docstring says otherwise, so they are free under torch.compile.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16)
REFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def debug_checks() -> bool:
    """ATTNX_DEBUG=1 turns on the value checks that cost a sort or a full scan per call."""
    return os.environ.get("ATTNX_DEBUG", "") not in ("", "0")


def fail(arg: str, given, allowed: str):
    raise ValueError(f"attnx: argument '{arg}': got {given}; allowed: {allowed}")


def tensor(arg: str, x, *, ndim=None, dtypes=None, min_ndim=None, max_ndim=None):
    if not isinstance(x, torch.Tensor):
        fail(arg, type(x).__name__, "a torch.Tensor")
    if ndim is not None and x.dim() != ndim:
        fail(arg, f"a tensor of rank {x.dim()} (shape {tuple(x.shape)})", f"rank {ndim}")
    if min_ndim is not None and x.dim() < min_ndim:
        fail(arg, f"a tensor of rank {x.dim()} (shape {tuple(x.shape)})", f"rank >= {min_ndim}")
    if max_ndim is not None and x.dim() > max_ndim:
        fail(arg, f"a tensor of rank {x.dim()} (shape {tuple(x.shape)})", f"rank <= {max_ndim}")
    if dtypes is not None and x.dtype not in dtypes:
        fail(arg, f"dtype {x.dtype}", ", ".join(str(d) for d in dtypes))
    return x


def same_device(**named):
    items = list(named.items())
    d0 = items[0][1].device
    for name, t in items[1:]:
        if t.device != d0:
            fail(name, f"device {t.device}", f"the device of '{items[0][0]}' ({d0})")


def same_dtype(**named):
    items = list(named.items())
    d0 = items[0][1].dtype
    for name, t in items[1:]:
        if t.dtype != d0:
            fail(name, f"dtype {t.dtype}", f"the dtype of '{items[0][0]}' ({d0})")


def last_dim_contiguous(arg: str, x: torch.Tensor):
    if x.numel() > 0 and x.stride(-1) != 1:
        fail(arg, f"stride {x.stride(-1)} in the last dimension", "a contiguous last dimension (stride 1)")


def qkv(q, k, v, *, q_ndim: int | None = None, heads_dim: int = -2, names=("q", "k", "v")):
    """Common q/k/v checks: same rank, dtype, device; GQA head ratio; D_q == D_k."""
    nq, nk, nv = names
    tensor(nq, q, ndim=q_ndim, dtypes=REFERENCE_DTYPES)
    tensor(nk, k, ndim=q.dim(), dtypes=REFERENCE_DTYPES)
    tensor(nv, v, ndim=q.dim(), dtypes=REFERENCE_DTYPES)
    same_dtype(**{nq: q, nk: k, nv: v})
    same_device(**{nq: q, nk: k, nv: v})
    if k.shape[-1] != q.shape[-1]:
        fail(nk, f"head dim {k.shape[-1]}", f"the head dim of '{nq}' ({q.shape[-1]})")
    if k.shape[:-1] != v.shape[:-1]:
        fail(nv, f"shape {tuple(v.shape)}", f"the shape of '{nk}' {tuple(k.shape)} except the last dim")
    hq, hk = q.shape[heads_dim], k.shape[heads_dim]
    if hk == 0 or hq % hk != 0:
        fail(nk, f"{hk} heads", f"a divisor of the {hq} heads of '{nq}' (GQA/MQA)")
    for name, t in ((nq, q), (nk, k), (nv, v)):
        last_dim_contiguous(name, t)


def per_axis(arg: str, value, rank: int, *, kind=int) -> tuple:
    """An int (or bool) or a tuple with one entry per spatial axis -> a tuple of length rank."""
    if isinstance(value, (list, tuple)):
        if len(value) != rank:
            fail(arg, f"{tuple(value)} ({len(value)} entries)", f"an {kind.__name__} or {rank} entries, one per spatial axis")
        vals = tuple(value)
    else:
        vals = (value,) * rank
    for x in vals:
        if kind is bool:
            if not isinstance(x, (bool, int)) or isinstance(x, int) and x not in (0, 1):
                fail(arg, repr(value), "bool or a tuple of bools")
        elif isinstance(x, bool) or not isinstance(x, int):
            fail(arg, repr(value), f"an int or a tuple of {rank} ints")
    return tuple(kind(x) for x in vals)


def scale_arg(scale, head_dim: int) -> float:
    if scale is None:
        return float(head_dim) ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        fail("scale", repr(scale), "a float or None")
    return float(scale)


def int_arg(arg: str, value, *, min_value=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.SymInt):
            return value
        fail(arg, repr(value), "an int")
    if min_value is not None and value < min_value:
        fail(arg, value, f"an int >= {min_value}")
    return value


def seq_of_ints(arg: str, value: Sequence[int]):
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        fail(arg, repr(value), "a tuple of ints")
    return tuple(value)
