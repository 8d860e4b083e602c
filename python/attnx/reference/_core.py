"""Shared pieces of the references: a masked softmax-attention block and query chunking.

The references never build an Lq x Lk (or L x cache) matrix for large sizes: queries are
processed in chunks whose temporary size is bounded by ``CHUNK_ELEMENTS``, and the backward
recomputes each chunk under autograd (the same recompute flash attention does), so memory
stays linear in the sequence length.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

# Temporary elements (scores or gathered keys) allowed per chunk: about 256 MB in fp32.
CHUNK_ELEMENTS = 1 << 26


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16/fp32 are computed in fp32, fp64 in fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """lse is float32 (float64 for float64 inputs, so gradcheck can see it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_softmax_attention(scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """softmax(scores) @ v over the last axis of ``scores`` with ``mask`` (True = keep).

    scores [..., Q, K] already scaled, v [..., K, Dv]. A row with no key gives out = 0 and
    lse = -inf (never NaN).
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf on empty rows
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(scores - safe.unsqueeze(-1))  # exp(-inf) = 0 on masked entries
    out = p @ v
    return out, lse


def row_chunks(n: int, per_row: int, *, budget: int | None = None) -> list[slice]:
    """Split n rows into slices such that rows * per_row <= budget (at least one row each)."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    step = max(1, budget // max(1, per_row))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)] or [slice(0, 0)]


def chunked_forward(chunk_fn: Callable, q: torch.Tensor, chunks: Sequence[slice], out_shape, lse_shape,
                    out_dtype, l_dtype, dim: int = 1):
    """Run ``chunk_fn(q_chunk, chunk_slice) -> (out_chunk, lse_chunk)`` over query chunks along ``dim``."""
    out = q.new_empty(out_shape, dtype=out_dtype)
    lse = q.new_empty(lse_shape, dtype=l_dtype)
    for sl in chunks:
        idx = (slice(None),) * dim + (sl,)
        o, l = chunk_fn(q[idx], sl)
        out[idx] = o.to(out_dtype)
        lse[idx] = l.to(l_dtype)
    return out, lse


def chunked_vjp(chunk_fn: Callable, q: torch.Tensor, others: Sequence[torch.Tensor], dout: torch.Tensor,
                dlse: torch.Tensor | None, chunks: Iterable[slice], dim: int = 1):
    """Backward of a query-chunked attention by recompute.

    ``chunk_fn(q_chunk, *others, chunk_slice) -> (out_chunk, lse_chunk)`` must be the forward
    for those queries. Returns (dq, *d_others); gradients are accumulated in fp32/fp64 and
    cast back to the inputs' dtypes.
    """
    cdt = compute_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=cdt, device=q.device)
    d_others = [torch.zeros(o.shape, dtype=compute_dtype(o.dtype), device=o.device) for o in others]
    for sl in chunks:
        idx = (slice(None),) * dim + (sl,)
        with torch.enable_grad():
            qs = q[idx].detach().to(cdt).requires_grad_(True)
            os_ = [o.detach().to(compute_dtype(o.dtype)).requires_grad_(True) for o in others]
            o, l = chunk_fn(qs, *os_, sl)
            outs, grads = [o], [dout[idx].to(o.dtype)]
            if dlse is not None:
                gl = dlse[idx].to(l.dtype)
                # d(lse) on an empty row (lse = -inf) has no effect.
                gl = torch.where(torch.isinf(l), torch.zeros_like(gl), gl)
                outs.append(l)
                grads.append(gl)
            gs = torch.autograd.grad(outs, [qs, *os_], grads, allow_unused=True)
        dq[idx] += gs[0] if gs[0] is not None else 0
        for acc, g in zip(d_others, gs[1:]):
            if g is not None:
                acc += g
    return (dq.to(q.dtype), *[g.to(o.dtype) for g, o in zip(d_others, others)])


def expand_kv_heads(x: torch.Tensor, num_q_heads: int, heads_dim: int = -2) -> torch.Tensor:
    """Repeat KV heads for GQA/MQA: head h of q uses KV head h // (Hq // Hk)."""
    hk = x.shape[heads_dim]
    if hk == num_q_heads:
        return x
    return x.repeat_interleave(num_q_heads // hk, dim=heads_dim)


def default_scale(scale, head_dim: int) -> float:
    return float(head_dim) ** -0.5 if scale is None else float(scale)


def empty_like_out(q: torch.Tensor, v: torch.Tensor):
    return math.prod(q.shape[:-1]) == 0 or v.shape[-1] == 0


def gathered_rows(qc, k, v, idx, scale: float):
    """Attention of the query rows qc [B, c, Hq, D] over the keys listed per query.

    idx [B|1, c, Hq|1, K] int64 positions into the key axis of k/v [B, Lk, Hk, D], -1 = empty
    slot. Returns (out [B, c, Hq, Dv], lse [B, c, Hq]).
    """
    b, c, hq, _ = qc.shape
    cdt = compute_dtype(qc.dtype)
    kk = expand_kv_heads(k, hq).to(cdt).transpose(1, 2)  # [B, H, Lk, D]
    vv = expand_kv_heads(v, hq).to(cdt).transpose(1, 2)
    idx = idx.expand(b, c, hq, idx.shape[-1])
    valid = idx >= 0
    safe = idx.clamp(min=0).long()
    bi = torch.arange(b, device=qc.device).view(b, 1, 1, 1)
    hi = torch.arange(hq, device=qc.device).view(1, 1, hq, 1)
    kg = kk[bi, hi, safe]  # [B, c, H, K, D]
    vg = vv[bi, hi, safe]
    s = torch.einsum("bchd,bchkd->bchk", qc.to(cdt), kg) * scale
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    base = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - base.unsqueeze(-1))
    out = torch.einsum("bchk,bchkd->bchd", p, vg)
    return out, lse


def gathered_chunks(q, v, keys_per_query: int) -> list[slice]:
    per_row = q.shape[0] * q.shape[2] * max(1, keys_per_query) * (q.shape[-1] + v.shape[-1] + 2)
    return row_chunks(q.shape[1], per_row)
