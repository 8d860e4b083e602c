"""Reference dense and variable-length attention, and the unpad/pad helpers.

Definitions (DESIGN.md):
  out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h']) v[b, j, h'],  h' = h // (Hq // Hk)
  lse[b, i, h] = log sum_j exp(scale * q[b, i, h] . k[b, j, h'])   (natural log)
over the keys j visible to query i. With offset = Lk - Lq (bottom-right alignment, as in
flash-attn), a window (left, right) keeps i + offset - left <= j <= i + offset + right (-1 is
unbounded on that side) and causal is right = 0. A query with no visible key gets out = 0 and
lse = -inf.
"""
from __future__ import annotations

import torch

from .. import _validate as V
from ._core import (chunked_backward, chunked_forward, compute_dtype, default_scale, expand_kv_heads, lse_dtype,
                    reduce_kv_heads, row_chunks, softmax_backward)


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, offset: int, left: int, right: int):
    """[Q, K] bool: key k_pos visible to query q_pos under a (left, right) window (-1 = unbounded)."""
    d = k_pos[None, :] - (q_pos[:, None] + offset)  # key position relative to the aligned diagonal
    keep = torch.ones(d.shape, dtype=torch.bool, device=d.device)
    if right >= 0:
        keep &= d <= right
    if left >= 0:
        keep &= d >= -left
    return keep


def _dense_probs(qc, k, v, sl: slice, lq: int, left: int, right: int, scale: float):
    """Probabilities of the query rows ``sl`` (qc [B, c, Hq, D]) over all keys: p [B, H, c, Lk], lse."""
    hq = qc.shape[2]
    cdt = compute_dtype(qc.dtype)
    kk = expand_kv_heads(k, hq).to(cdt).transpose(1, 2)  # [B, H, Lk, D]
    vv = expand_kv_heads(v, hq).to(cdt).transpose(1, 2)
    s = torch.einsum("bqhd,bhkd->bhqk", qc.to(cdt), kk) * scale
    if left >= 0 or right >= 0:
        q_pos = torch.arange(sl.start, sl.start + qc.shape[1], device=qc.device)
        k_pos = torch.arange(k.shape[1], device=qc.device)
        s = s.masked_fill(~_window_mask(q_pos, k_pos, k.shape[1] - lq, left, right), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf on a row with no visible key
    base = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - base.unsqueeze(-1)), lse, kk, vv


def _dense_rows(qc, k, v, sl: slice, lq: int, left: int, right: int, scale: float):
    p, lse, _, vv = _dense_probs(qc, k, v, sl, lq, left, right, scale)
    return (p @ vv).transpose(1, 2), lse.transpose(1, 2)


def _dense_rows_backward(qc, k, v, sl, lq, left, right, scale, dout, dlse, dk_acc, dv_acc, stats=None):
    p, own_lse, kk, vv = _dense_probs(qc, k, v, sl, lq, left, right, scale)
    do = dout.to(p.dtype).transpose(1, 2)  # [B, H, c, Dv]
    if stats is None:
        delta = ((p @ vv) * do).sum(-1)
    else:  # gradients at the given row statistics (out, lse), as the kernels take them
        out, lse = (x[:, sl].to(p.dtype).transpose(1, 2) for x in stats)
        p = p * torch.where(torch.isinf(own_lse), torch.zeros_like(own_lse), torch.exp(own_lse - lse)).unsqueeze(-1)
        delta = (out * do).sum(-1)
    ds = softmax_backward(p, do @ vv.transpose(-1, -2), delta, None if dlse is None else dlse.to(p.dtype).transpose(1, 2))
    hk = k.shape[2]
    dk_acc += reduce_kv_heads(ds.transpose(-1, -2) @ qc.to(p.dtype).transpose(1, 2) * scale, hk, 1).transpose(1, 2)
    dv_acc += reduce_kv_heads(p.transpose(-1, -2) @ do, hk, 1).transpose(1, 2)
    return (ds @ kk * scale).transpose(1, 2)


def _dense_chunks(q, k):
    return row_chunks(q.shape[1], q.shape[0] * q.shape[2] * max(1, k.shape[1]))


def attention_fwd(q, k, v, causal: bool, scale, window=(-1, -1)):
    """(out, lse) of dense attention; out has q's dtype, lse is float32 [B, Lq, Hq]."""
    scale = default_scale(scale, q.shape[-1])
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    lq = q.shape[1]
    fn = lambda qc, sl: _dense_rows(qc, k, v, sl, lq, left, right, scale)  # noqa: E731
    return chunked_forward(fn, q, _dense_chunks(q, k), (*q.shape[:-1], v.shape[-1]), q.shape[:-1],
                           q.dtype, lse_dtype(q.dtype))


def attention_bwd(dout, dlse, q, k, v, causal: bool, scale, window=(-1, -1), out=None, lse=None):
    """(dq, dk, dv) of dense attention by chunked recompute.

    With ``out`` and ``lse`` given, the gradients are taken at those row statistics, as the
    kernels do: P = exp(S - lse) and rowsum(dO * out). For the (out, lse) of this very attention
    that is the same thing; for a block of keys inside a longer row (context parallelism: lse and
    out of the whole row) it gives the block's share of the row's gradients.
    """
    scale = default_scale(scale, q.shape[-1])
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    lq = q.shape[1]
    stats = None if out is None or lse is None else (out, lse)
    fn = lambda qc, do, dl, sl, dk, dv: _dense_rows_backward(qc, k, v, sl, lq, left, right, scale, do, dl, dk, dv,  # noqa: E731
                                                             stats)
    return chunked_backward(fn, q, k, v, dout, dlse, _dense_chunks(q, k))


def attention(q, k, v, *, causal=False, scale=None, return_lse=False):
    """Dense attention. q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv] -> out [B, Lq, Hq, Dv].

    ``causal`` is bottom-right aligned: query i sees keys j <= i + Lk - Lq. ``scale`` defaults to
    D ** -0.5. With ``return_lse`` also returns lse [B, Lq, Hq] (float32, natural log).
    Differentiable through autograd (the backward recomputes chunk by chunk).
    """
    check_attention(q, k, v)
    out, lse = _AttentionRef.apply(q, k, v, bool(causal), scale)
    return (out, lse) if return_lse else out


def check_attention(q, k, v):
    V.qkv(q, k, v, q_ndim=4)
    if q.shape[0] != k.shape[0]:
        V.fail("k", f"batch {k.shape[0]}", f"the batch of 'q' ({q.shape[0]})")


class _AttentionRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, lse = attention_fwd(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v)
        ctx.args = (causal, scale)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = attention_bwd(dout, dlse, q, k, v, *ctx.args)
        return dq, dk, dv, None, None


# ----------------------------------------------------------------------------- varlen


def check_cu_seqlens(name: str, cu, total: int, batch: int | None = None):
    """Checks of a cu_seqlens tensor, values included (a host sync)."""
    V.tensor(name, cu, ndim=1, dtypes=(torch.int32,))
    if cu.numel() < 1:
        V.fail(name, "an empty tensor", "int32 [B + 1] starting at 0")
    if batch is not None and cu.numel() != batch + 1:
        V.fail(name, f"{cu.numel()} entries", f"{batch + 1} entries (B + 1, as in the other cu_seqlens)")
    vals = cu.tolist()
    if vals[0] != 0:
        V.fail(name, f"first entry {vals[0]}", "0")
    if any(b < a for a, b in zip(vals, vals[1:])):
        V.fail(name, f"{vals[:16]}{'...' if len(vals) > 16 else ''}", "non-decreasing values")
    if vals[-1] != total:
        V.fail(name, f"last entry {vals[-1]}", f"the number of packed tokens ({total})")
    return vals


def check_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window):
    V.qkv(q, k, v, q_ndim=3)
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        V.tensor(name, cu, ndim=1, dtypes=(torch.int32,))
        if cu.device != q.device:
            V.fail(name, f"device {cu.device}", f"the device of 'q' ({q.device})")
    if cu_q.numel() != cu_k.numel():
        V.fail("cu_seqlens_k", f"{cu_k.numel()} entries", f"as many as cu_seqlens_q ({cu_q.numel()})")
    V.int_arg("max_seqlen_q", max_q, min_value=0)
    V.int_arg("max_seqlen_k", max_k, min_value=0)
    if not (isinstance(window, (tuple, list)) and len(window) == 2 and all(isinstance(w, int) and w >= -1 for w in window)):
        V.fail("window", repr(window), "a pair (left, right) of ints >= -1 (-1 = unbounded)")


def check_varlen_values(q, k, cu_q, cu_k, max_q, max_k):
    """Value checks of cu_seqlens and max_seqlen (one small device-to-host copy); returns both lists."""
    bq = check_cu_seqlens("cu_seqlens_q", cu_q, q.shape[0])
    bk = check_cu_seqlens("cu_seqlens_k", cu_k, k.shape[0], len(bq) - 1)
    for b in range(len(bq) - 1):
        if bq[b + 1] - bq[b] > max_q:
            V.fail("max_seqlen_q", max_q, f">= every query length (sequence {b} has {bq[b + 1] - bq[b]})")
        if bk[b + 1] - bk[b] > max_k:
            V.fail("max_seqlen_k", max_k, f">= every key length (sequence {b} has {bk[b + 1] - bk[b]})")
    return bq, bk


def varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale):
    bq, bk = check_varlen_values(q, k, cu_q, cu_k, max_q, max_k)
    out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    lse = q.new_full(q.shape[:-1], float("-inf"), dtype=lse_dtype(q.dtype))
    for b in range(len(bq) - 1):
        (q0, q1), (k0, k1) = (bq[b], bq[b + 1]), (bk[b], bk[b + 1])
        if q1 == q0:
            continue
        o, l = attention_fwd(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, scale, tuple(window))
        out[q0:q1], lse[q0:q1] = o[0], l[0]
    return out, lse


def varlen_bwd(dout, dlse, q, k, v, cu_q, cu_k, causal, window, scale, out=None, lse=None):
    """(dq, dk, dv) per sequence; with ``out``/``lse`` at those statistics (see :func:`attention_bwd`)."""
    bq, bk = cu_q.tolist(), cu_k.tolist()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for b in range(len(bq) - 1):
        (q0, q1), (k0, k1) = (bq[b], bq[b + 1]), (bk[b], bk[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        stats = {} if out is None or lse is None else {"out": out[None, q0:q1], "lse": lse[None, q0:q1]}
        g = attention_bwd(dout[None, q0:q1], None if dlse is None else dlse[None, q0:q1],
                          q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, scale, tuple(window), **stats)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


class _VarlenRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale):
        out, lse = varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale)
        ctx.save_for_backward(q, k, v, cu_q, cu_k)
        ctx.args = (causal, window, scale)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = varlen_bwd(dout, dlse, q, k, v, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                     window=(-1, -1), scale=None, return_lse=False):
    """Padding-free attention over packed sequences.

    q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv]; sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1]
    of q and cu_seqlens_k[b]:cu_seqlens_k[b+1] of k/v (int32 [B + 1], starting at 0,
    non-decreasing). Within a sequence the rules of :func:`attention` apply, plus
    ``window=(left, right)``: query i sees keys i + Lk - Lq - left <= j <= i + Lk - Lq + right
    (-1 = unbounded; causal means right = 0). Zero-length sequences are legal. lse is [Tq, Hq].
    """
    check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window)
    out, lse = _VarlenRef.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                bool(causal), tuple(window), scale)
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------- unpad / pad


def check_unpad(x, mask):
    V.tensor("x", x, min_ndim=2)
    V.tensor("mask", mask, ndim=2, dtypes=(torch.bool,))
    if tuple(mask.shape) != tuple(x.shape[:2]):
        V.fail("mask", f"shape {tuple(mask.shape)}", f"[B, L] = {tuple(x.shape[:2])}, the first two dims of 'x'")
    if mask.device != x.device:
        V.fail("mask", f"device {mask.device}", f"the device of 'x' ({x.device})")


def unpad_fwd(x, mask):
    """(x_packed, indices int64, cu_seqlens int32, max_seqlen int64 0-d on the CPU)."""
    seqlens = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=x.device)
    cu[1:] = torch.cumsum(seqlens, dim=0)
    max_seqlen = seqlens.max().to("cpu", torch.int64) if seqlens.numel() else torch.zeros((), dtype=torch.int64)
    packed = x.reshape(-1, *x.shape[2:]).index_select(0, indices)
    return packed, indices, cu, max_seqlen


def check_pad(x_packed, indices, batch, seqlen):
    V.tensor("x_packed", x_packed, min_ndim=1)
    V.tensor("indices", indices, ndim=1, dtypes=(torch.int64, torch.int32))
    V.int_arg("batch", batch, min_value=0)
    V.int_arg("seqlen", seqlen, min_value=0)
    if indices.shape[0] != x_packed.shape[0]:
        V.fail("indices", f"{indices.shape[0]} entries", f"one per packed token ({x_packed.shape[0]})")


def check_pad_values(indices, batch, seqlen):
    """The range of pad's indices (one copy to the host)."""
    if indices.numel():
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= batch * seqlen:
            V.fail("indices", f"values in [{lo}, {hi}]", f"[0, batch * seqlen = {batch * seqlen})")


def pad_fwd(x_packed, indices, batch, seqlen):
    out = x_packed.new_zeros((batch * seqlen, *x_packed.shape[1:]))
    check_pad_values(indices, batch, seqlen)
    out.index_copy_(0, indices.long(), x_packed)
    return out.reshape(batch, seqlen, *x_packed.shape[1:])


def unpad(x, mask):
    """Pack the tokens of x [B, L, ...] where mask [B, L] (bool, True = token) is set.

    Returns (x_packed [T, ...], indices int64 [T] into the flattened B*L axis, cu_seqlens int32
    [B + 1], max_seqlen int). Differentiable in x.
    """
    check_unpad(x, mask)
    packed, indices, cu, max_seqlen = unpad_fwd(x, mask)
    if x.requires_grad:
        packed = x.reshape(-1, *x.shape[2:]).index_select(0, indices)
    return packed, indices, cu, int(max_seqlen)


def pad(x_packed, indices, batch, seqlen):
    """Inverse of :func:`unpad`: [T, ...] -> [batch, seqlen, ...] with zeros where no token is."""
    check_pad(x_packed, indices, batch, seqlen)
    if x_packed.requires_grad:
        pad_fwd(x_packed.detach(), indices, batch, seqlen)  # value checks
        out = x_packed.new_zeros((batch * seqlen, *x_packed.shape[1:]))
        return out.index_copy(0, indices.long(), x_packed).reshape(batch, seqlen, *x_packed.shape[1:])
    return pad_fwd(x_packed, indices, batch, seqlen)
