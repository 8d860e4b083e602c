"""Helpers the case modules share: the attnx impl, head checks, the backward FLOP convention."""
from __future__ import annotations

import torch

import attnx

from ..common import Ctx, Impl



def _attnx_impl(ctx: Ctx, run, kernel, *, ref_seconds: float = 0.0, output=None, note: str = "",
                prepare=None) -> Impl:
    """attnx's own entry point. On the CPU it runs the reference (by design), so it is named so."""
    return Impl(name="attnx" if ctx.cuda else "reference", kind="attnx", run=run,
                kernel=kernel if ctx.cuda else "reference", ref_seconds=ref_seconds, output=output, note=note,
                prepare=prepare)


def _check_heads(ctx: Ctx, heads: int, cheap: bool) -> int:
    """Heads kept in the check subset: all when the reference is cheap, else the last two."""
    return heads if (cheap or not ctx.cuda) else min(heads, 2)


def _na_host_per_chunk(spatial, kernel) -> float:
    """Host time per query chunk of attnx.reference.neighborhood_attention (builds per-axis tables in Python)."""
    return sum(n * (35e-6 + 0.2e-6 * k) for n, k in zip(spatial, kernel))


def _fmt_axes(x) -> str:
    return "x".join(str(v) for v in x)


def _tup(x, rank):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank


# The usual convention: the forward does 2 matmuls (QK^T, PV), the backward 5 (QK^T recomputed,
# dO V^T, P^T dO, dS K, dS^T Q), so backward FLOPs = 2.5x the forward's.
BWD_FLOP_FACTOR = 2.5


def _bwd_native(ctx: Ctx, op: str, q, k, v, **kw) -> bool:
    """True if ``op`` and its backward run attnx's native kernels for these inputs: as the API
    decides for the forward (``kw``: covers' extras), with the backward instance built too
    (the set's tensors do not require grad, so covers alone would not ask for it)."""
    if not ctx.cuda:
        return False
    with torch.enable_grad():
        covered = attnx._native.covers(op, q.detach().requires_grad_(), k, v, **kw)
    return covered and attnx._native.has_cuda_kernel(f"{op}_backward")


def _ref_bwd_seconds(score_elems: float, d: int, blocks: int, cuda: bool) -> float:
    """Rough cost of attnx.reference's attention backward: 6 fp32 matmuls over all score elements
    (causal masks, not skips) plus per-block (sequence, chunk) host overhead."""
    rate = 2e13 if cuda else 2e10
    return 12.0 * score_elems * d / rate + blocks * (1e-3 if cuda else 2e-4)
