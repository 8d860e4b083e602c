"""Reference sparse attention: each query attends to exactly the keys listed for it.

  out[b, i, h] = sum_{j in S(b,i,h)} softmax_j(scale * q[b,i,h] . k[b,j,h]) v[b,j,h]
with S(b, i, h) = {indices[b, i, h, t] : indices[b, i, h, t] >= 0} (-1 marks an empty slot;
a key listed twice is an error). An empty S gives out = 0 and lse = -inf.
"""
from __future__ import annotations

import torch

from .. import _validate as V
from ._core import default_scale, gathered_attention, gathered_attention_backward


def check_sparse(q, k, v, indices, *, check_values: bool = True):
    V.qkv(q, k, v, q_ndim=4)
    if q.shape[0] != k.shape[0]:
        V.fail("k", f"batch {k.shape[0]}", f"the batch of 'q' ({q.shape[0]})")
    V.tensor("indices", indices, ndim=4, dtypes=(torch.int32,))
    if tuple(indices.shape[:3]) != tuple(q.shape[:3]):
        V.fail("indices", f"shape {tuple(indices.shape)}", f"[B, Lq, H, k] with [B, Lq, H] = {tuple(q.shape[:3])}")
    if indices.device != q.device:
        V.fail("indices", f"device {indices.device}", f"the device of 'q' ({q.device})")
    if check_values:
        check_sparse_values(k, indices)


def check_sparse_values(k, indices, *, duplicates: bool = True):
    """Index values: -1 or a key position in [0, Lk) (one min/max: a host sync on CUDA) and, with
    ``duplicates``, no key listed twice in a row (a sort)."""
    if not indices.numel():
        return
    lo, hi = (int(x) for x in torch.aminmax(indices))
    if lo < -1 or hi >= k.shape[1]:
        V.fail("indices", f"values in [{lo}, {hi}]", f"-1 (empty) or key positions in [0, {k.shape[1]})")
    if duplicates:
        srt = indices.sort(dim=-1).values
        dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        if bool(dup.any()):
            V.fail("indices", "a key listed twice for one query", "distinct keys per query (-1 may repeat)")


def check_query_order(q, query_order):
    """query_order: int32 [B, H, Lq], each (batch, head) row a permutation of range(Lq). The values
    are checked here (a sort), on the reference path only: the native path receives orders that
    attnx made itself (argsort), and its kernels clamp any value into range."""
    V.tensor("query_order", query_order, ndim=3, dtypes=(torch.int32,))
    want = (q.shape[0], q.shape[2], q.shape[1])
    if tuple(query_order.shape) != want:
        V.fail("query_order", f"shape {tuple(query_order.shape)}", f"[B, H, Lq] = {want}")
    if query_order.device != q.device:
        V.fail("query_order", f"device {query_order.device}", f"the device of 'q' ({q.device})")
    if query_order.numel() and not torch.equal(query_order.sort(dim=-1).values,
                                               torch.arange(q.shape[1], device=q.device, dtype=torch.int32)
                                               .expand_as(query_order)):
        V.fail("query_order", "a row that is not a permutation of the query positions",
               f"each [b, h] row a permutation of range({q.shape[1]})")


def sparse_fwd(q, k, v, indices, scale):
    return gathered_attention(q, k, v, lambda sl: indices[:, sl], indices.shape[-1], default_scale(scale, q.shape[-1]))


def sparse_bwd(dout, dlse, q, k, v, indices, scale):
    return gathered_attention_backward(dout, dlse, q, k, v, lambda sl: indices[:, sl], indices.shape[-1],
                                       default_scale(scale, q.shape[-1]))


class _SparseRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, scale):
        out, lse = sparse_fwd(q, k, v, indices, scale)
        ctx.save_for_backward(q, k, v, indices)
        ctx.scale = scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, indices = ctx.saved_tensors
        return (*sparse_bwd(dout, dlse, q, k, v, indices, ctx.scale), None, None)


def sparse_attention(q, k, v, indices, *, scale=None, return_lse=False):
    """Sparse attention. q [B, Lq, H, D], k/v [B, Lk, H, D|Dv], indices int32 [B, Lq, H, k]."""
    check_sparse(q, k, v, indices)
    out, lse = _SparseRef.apply(q, k, v, indices, scale)
    return (out, lse) if return_lse else out
