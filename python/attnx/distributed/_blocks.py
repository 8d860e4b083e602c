"""The local attention blocks of the ring, for dense [B, L, H, D] and packed [T, H, D] shards.

In the causal (mirrored-chunk) layout, step 0 is the local causal block; afterwards the KV of a
lower rank is seen whole by both local chunks but only its first chunk matters (its mirror lies
after both of ours), and the KV of a higher rank is seen only by our second chunk, but whole.
So a step attends (all q, first half of kv) or (second half of q, all kv): half the square each.
A layout says how to take those halves and how to add results back into them.
"""
from __future__ import annotations

import torch

from .. import _native
from ..reference import dense_varlen as ref


def _native_fmha(q, k, v, backward: bool) -> bool:
    tag = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(q.dtype)
    if tag is None or not _native.covers("attention", q, k, v):
        return False
    return not backward or f"fmha_bwd_{tag}_hdim{q.shape[-1]}" in _native.instances()


class DenseBlocks:
    """Shards [B, L, H, D]; the halves are views along the sequence dim."""

    def __init__(self, q: torch.Tensor, scale):
        self.half = q.shape[1] // 2
        self.scale = scale

    def q2(self, x):
        return None if x is None else x[:, self.half:]

    def kv1(self, x):
        return x[:, :self.half]

    def merge_q2_(self, merge, out_acc, lse_acc, o, l):
        merge(out_acc[:, self.half:], lse_acc[:, self.half:], o, l)

    def add_q2_(self, acc, g):
        acc[:, self.half:].add_(g)

    def add_kv1_(self, acc, g):
        acc[:, :self.half].add_(g)

    def fwd(self, q, k, v, causal, q_half=False, kv_half=False):
        if _native_fmha(q, k, v, False):
            return torch.ops.attnx.attention(q, k, v, causal, self.scale)
        return ref.attention_fwd(q, k, v, causal, self.scale)

    def bwd(self, dout, dlse, q, k, v, out, lse, causal, q_half=False, kv_half=False):
        if _native_fmha(q, k, v, True):
            return torch.ops.attnx.attention_backward(dout, dlse, q, k, v, out, lse, causal, self.scale)
        return ref.attention_bwd(dout, dlse, q, k, v, causal, self.scale, out=out, lse=lse)


class VarlenBlocks:
    """Packed shards [T, H, D] with the local cu_seqlens (the same on every rank); halves are
    gathered rows (each local sequence is its two chunks, first then second)."""

    def __init__(self, q: torch.Tensor, cu_seqlens: torch.Tensor, cu_host: list[int], max_seqlen: int, scale):
        self.scale = scale
        self.cu, self.max = cu_seqlens, int(max_seqlen)
        self.cu_half, self.max_half = torch.div(cu_seqlens, 2, rounding_mode="floor"), int(max_seqlen) // 2
        first, second = [], []
        for b in range(len(cu_host) - 1):
            mid = (cu_host[b] + cu_host[b + 1]) // 2
            first.append(torch.arange(cu_host[b], mid))
            second.append(torch.arange(mid, cu_host[b + 1]))
        cat = lambda xs: (torch.cat(xs) if xs else torch.zeros(0, dtype=torch.int64)).to(q.device)  # noqa: E731
        self.first, self.second = cat(first), cat(second)

    def q2(self, x):
        return None if x is None else x.index_select(0, self.second)

    def kv1(self, x):
        return x.index_select(0, self.first)

    def merge_q2_(self, merge, out_acc, lse_acc, o, l):
        out_part, lse_part = out_acc.index_select(0, self.second), lse_acc.index_select(0, self.second)
        merge(out_part, lse_part, o, l)
        out_acc.index_copy_(0, self.second, out_part)
        lse_acc.index_copy_(0, self.second, lse_part)

    def add_q2_(self, acc, g):
        acc.index_add_(0, self.second, g.to(acc.dtype))

    def add_kv1_(self, acc, g):
        acc.index_add_(0, self.first, g.to(acc.dtype))

    def _lens(self, q_half, kv_half):
        return ((self.cu_half, self.max_half) if q_half else (self.cu, self.max),
                (self.cu_half, self.max_half) if kv_half else (self.cu, self.max))

    def fwd(self, q, k, v, causal, q_half=False, kv_half=False):
        (cq, mq), (ck, mk) = self._lens(q_half, kv_half)
        if _native_fmha(q, k, v, False):
            return torch.ops.attnx.varlen_attention(q, k, v, cq, ck, mq, mk, causal, -1, -1, self.scale)
        return ref.varlen_fwd(q, k, v, cq, ck, mq, mk, causal, (-1, -1), self.scale)

    def bwd(self, dout, dlse, q, k, v, out, lse, causal, q_half=False, kv_half=False):
        (cq, mq), (ck, mk) = self._lens(q_half, kv_half)
        if _native_fmha(q, k, v, True):
            return torch.ops.attnx.varlen_attention_backward(dout, dlse, q, k, v, out, lse, cq, ck, mq, mk, causal,
                                                            -1, -1, self.scale)
        return ref.varlen_bwd(dout, dlse, q, k, v, cq, ck, causal, (-1, -1), self.scale, out=out, lse=lse)
