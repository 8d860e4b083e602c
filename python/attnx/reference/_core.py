"""Shared pieces of the references: a masked softmax-attention block and query chunking.

The references never build an Lq x Lk (or L x cache) matrix for large sizes: queries are
processed in chunks whose temporary size is bounded by ``CHUNK_ELEMENTS``, and the backward
recomputes each chunk under autograd (the same recompute flash attention does), so memory
stays linear in the sequence length.
"""
from __future__ import annotations

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


def chunked_backward(chunk_bwd: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                     dlse: torch.Tensor | None, chunks: Iterable[slice], dim: int = 1):
    """Backward of a query-chunked attention.

    ``chunk_bwd(q_chunk, dout_chunk, dlse_chunk | None, chunk_slice, dk_acc, dv_acc) -> dq_chunk``
    recomputes the chunk's probabilities, returns its dq and adds its dk/dv contributions into
    the fp32 (fp64) accumulators. Returns (dq, dk, dv) in the inputs' dtypes.
    """
    dq = torch.zeros(q.shape, dtype=compute_dtype(q.dtype), device=q.device)
    dk = torch.zeros(k.shape, dtype=compute_dtype(k.dtype), device=k.device)
    dv = torch.zeros(v.shape, dtype=compute_dtype(v.dtype), device=v.device)
    for sl in chunks:
        idx = (slice(None),) * dim + (sl,)
        dq[idx] = chunk_bwd(q[idx], dout[idx], None if dlse is None else dlse[idx], sl, dk, dv)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def softmax_backward(p, dp, out_dot_dout, dlse):
    """dS of softmax attention: P * (dP - rowsum(dO * O) + dlse) (dlse: gradient of lse, may be None)."""
    g = dp - out_dot_dout.unsqueeze(-1)
    if dlse is not None:
        g = g + dlse.unsqueeze(-1)
    return p * g


def reduce_kv_heads(dx: torch.Tensor, num_kv_heads: int, heads_dim: int) -> torch.Tensor:
    """Sum the gradients of repeated KV heads back onto their group's KV head (GQA/MQA)."""
    hq = dx.shape[heads_dim]
    if hq == num_kv_heads:
        return dx
    shape = list(dx.shape)
    shape[heads_dim:heads_dim + 1] = [num_kv_heads, hq // num_kv_heads]
    return dx.reshape(shape).sum(dim=heads_dim + 1 if heads_dim >= 0 else heads_dim)


def expand_kv_heads(x: torch.Tensor, num_q_heads: int, heads_dim: int = -2) -> torch.Tensor:
    """Repeat KV heads for GQA/MQA: head h of q uses KV head h // (Hq // Hk)."""
    hk = x.shape[heads_dim]
    if hk == num_q_heads:
        return x
    return x.repeat_interleave(num_q_heads // hk, dim=heads_dim)


def default_scale(scale, head_dim: int) -> float:
    return float(head_dim) ** -0.5 if scale is None else float(scale)


def _gather(qc, k, v, idx):
    b, c, hq, _ = qc.shape
    cdt = compute_dtype(qc.dtype)
    kk = expand_kv_heads(k, hq).to(cdt).transpose(1, 2)  # [B, H, Lk, D]
    vv = expand_kv_heads(v, hq).to(cdt).transpose(1, 2)
    idx = idx.expand(b, c, hq, idx.shape[-1])
    valid = idx >= 0
    safe = idx.clamp(min=0).long()
    bi = torch.arange(b, device=qc.device).view(b, 1, 1, 1)
    hi = torch.arange(hq, device=qc.device).view(1, 1, hq, 1)
    return kk[bi, hi, safe], vv[bi, hi, safe], valid, (bi, hi, safe)  # [B, c, H, K, D]


def _gathered_probs(qc, kg, valid, scale):
    s = torch.einsum("bchd,bchkd->bchk", qc.to(kg.dtype), kg) * scale
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    base = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - base.unsqueeze(-1)), lse


def gathered_rows(qc, k, v, idx, scale: float):
    """Attention of the query rows qc [B, c, Hq, D] over the keys listed per query.

    idx [B|1, c, Hq|1, K] int64 positions into the key axis of k/v [B, Lk, Hk, D], -1 = empty
    slot. Returns (out [B, c, Hq, Dv], lse [B, c, Hq]).
    """
    kg, vg, valid, _ = _gather(qc, k, v, idx)
    p, lse = _gathered_probs(qc, kg, valid, scale)
    return torch.einsum("bchk,bchkd->bchd", p, vg), lse


def gathered_rows_backward(qc, k, v, idx, scale: float, dout, dlse, dk_acc, dv_acc):
    """Backward of :func:`gathered_rows`: returns dq of the rows, adds dk/dv into the accumulators."""
    kg, vg, valid, (bi, hi, safe) = _gather(qc, k, v, idx)
    p, _ = _gathered_probs(qc, kg, valid, scale)
    do = dout.to(p.dtype)
    out = torch.einsum("bchk,bchkd->bchd", p, vg)
    dp = torch.einsum("bchd,bchkd->bchk", do, vg)
    ds = softmax_backward(p, dp, (out * do).sum(-1), None if dlse is None else dlse.to(p.dtype)) * valid
    dq = torch.einsum("bchk,bchkd->bchd", ds, kg) * scale
    hq, hk = qc.shape[2], k.shape[2]
    dk_full = torch.zeros((k.shape[0], hq, k.shape[1], k.shape[3]), dtype=p.dtype, device=qc.device)
    dv_full = torch.zeros((v.shape[0], hq, v.shape[1], v.shape[3]), dtype=p.dtype, device=qc.device)
    dk_full.index_put_((bi, hi, safe), torch.einsum("bchk,bchd->bchkd", ds, qc.to(p.dtype)) * scale, accumulate=True)
    dv_full.index_put_((bi, hi, safe), torch.einsum("bchk,bchd->bchkd", p * valid, do), accumulate=True)
    dk_acc += reduce_kv_heads(dk_full, hk, 1).transpose(1, 2)
    dv_acc += reduce_kv_heads(dv_full, hk, 1).transpose(1, 2)
    return dq


def gathered_chunks(q, v, keys_per_query: int) -> list[slice]:
    per_row = q.shape[0] * q.shape[2] * max(1, keys_per_query) * (q.shape[-1] + v.shape[-1] + 2)
    return row_chunks(q.shape[1], per_row)


def gathered_attention(q, k, v, idx_of: Callable, num_keys: int, scale: float):
    """Attention of q [B, Lq, H, D] where ``idx_of(rows)`` lists the keys of the query rows.

    ``idx_of(slice) -> [B|1, c, H|1, num_keys]`` key positions (-1 = none). Returns (out, lse).
    """
    fn = lambda qc, sl: gathered_rows(qc, k, v, idx_of(sl), scale)  # noqa: E731
    return chunked_forward(fn, q, gathered_chunks(q, v, num_keys), (*q.shape[:-1], v.shape[-1]), q.shape[:-1],
                           q.dtype, lse_dtype(q.dtype))


def gathered_attention_backward(dout, dlse, q, k, v, idx_of: Callable, num_keys: int, scale: float):
    """(dq, dk, dv) of :func:`gathered_attention`."""
    fn = lambda qc, do, dl, sl, dk, dv: gathered_rows_backward(qc, k, v, idx_of(sl), scale, do, dl, dk, dv)  # noqa: E731
    return chunked_backward(fn, q, k, v, dout, dlse, gathered_chunks(q, v, num_keys))
