"""Context-parallel (ring) attention: forward and backward over sequence shards.

Rank r holds q, k, v shards in the layout of :mod:`.layout`. Step s attends the local q to the
KV shard of rank r - s while that shard moves on to rank r + 1 and the next one arrives: the
transfer is issued before the step's attention and waited for after it, so it overlaps. Partial
results merge through their lse in float32. The backward walks the same ring with the final
(out, lse): each block's gradients are its share of the row's gradients (the kernels take the
row statistics as given), dQ stays local and the dK/dV of a shard travel with it, one more hop
bringing them home to their owner.
"""
from __future__ import annotations

import torch

from ..ops.attention import attention, varlen_attention
from ..reference import dense_varlen as ref
from ._blocks import DenseBlocks, VarlenBlocks
from ._group import agree, dtype_code, rank_world
from ._ring import RingExchange, merge_partial_
from .layout import _host_cu


def _acc(x):
    """Accumulators: float32, float64 for float64 inputs (the references on CPU)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _step_kind(step: int, src: int, rank: int, causal: bool) -> str:
    if step == 0 or not causal:
        return "all"  # the local block (causal if causal) or any block without a mask
    return "kv_first" if src < rank else "q_second"


def ring_forward(blocks, q, k, v, causal: bool, ring: RingExchange):
    kv, out, lse = (k, v), None, None
    for step in range(ring.world):
        incoming = ring.shift(kv) if step + 1 < ring.world else None
        kind = _step_kind(step, (ring.rank - step) % ring.world, ring.rank, causal)
        if kind == "all":
            o, l = blocks.fwd(q, kv[0], kv[1], causal and step == 0)
            if out is None:
                out, lse = o.to(_acc(q)), l.to(_acc(q)).contiguous()
            else:
                merge_partial_(out, lse, o, l)
        elif kind == "kv_first":
            o, l = blocks.fwd(q, blocks.kv1(kv[0]), blocks.kv1(kv[1]), False, kv_half=True)
            merge_partial_(out, lse, o, l)
        else:
            o, l = blocks.fwd(blocks.q2(q), kv[0], kv[1], False, q_half=True)
            blocks.merge_q2_(merge_partial_, out, lse, o, l)
        if incoming is not None:
            kv = incoming.wait()
    return out.to(q.dtype), lse


def ring_backward(blocks, dout, dlse, q, k, v, out, lse, causal: bool, ring: RingExchange):
    dq = torch.zeros(q.shape, dtype=_acc(q), device=q.device)
    kv, dkv, pending = (k, v), None, None
    for step in range(ring.world):
        incoming = ring.shift(kv) if step + 1 < ring.world else None
        kind = _step_kind(step, (ring.rank - step) % ring.world, ring.rank, causal)
        if kind == "all":
            g = blocks.bwd(dout, dlse, q, kv[0], kv[1], out, lse, causal and step == 0)
            dq.add_(g[0])
        elif kind == "kv_first":
            g = blocks.bwd(dout, dlse, q, blocks.kv1(kv[0]), blocks.kv1(kv[1]), out, lse, False, kv_half=True)
            dq.add_(g[0])
        else:
            g = blocks.bwd(blocks.q2(dout), blocks.q2(dlse), blocks.q2(q), kv[0], kv[1], blocks.q2(out),
                           blocks.q2(lse), False, q_half=True)
            blocks.add_q2_(dq, g[0])
        if step == 0:
            dkv = [g[1].to(_acc(q)), g[2].to(_acc(q))]
        else:
            dkv = pending.wait()  # this shard's dK/dV so far, from the ranks it visited before us
            for acc, blk in zip(dkv, g[1:]):
                blocks.add_kv1_(acc, blk) if kind == "kv_first" else acc.add_(blk)
        if step + 1 == ring.world:  # complete: the owner only rounds them, so round before the last hop
            dkv = [dkv[0].to(k.dtype), dkv[1].to(v.dtype)]
        pending = ring.shift(dkv)  # on to the next rank; after the last step, home to the owner
        if incoming is not None:
            kv = incoming.wait()
    dk, dv = pending.wait()
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, blocks, causal, ring):
        out, lse = ring_forward(blocks, q, k, v, causal, ring)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.blocks, ctx.causal, ctx.ring = blocks, causal, ring
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = ring_backward(ctx.blocks, dout.contiguous(), None if dlse is None else dlse.contiguous(),
                                   q, k, v, out, lse, ctx.causal, ctx.ring)
        return dq, dk, dv, None, None, None


def _shape_fields(q, k, v, causal):
    return [("the number of dims", q.dim()), ("q's length", q.shape[-3]), ("k's length", k.shape[-3]),
            ("the batch", q.shape[0] if q.dim() == 4 else 1), ("q heads", q.shape[-2]), ("kv heads", k.shape[-2]),
            ("head dim", q.shape[-1]), ("value head dim", v.shape[-1]), ("dtype", dtype_code(q.dtype)),
            ("causal", int(bool(causal)))]


def context_parallel_attention(q, k, v, group=None, *, causal=False, scale=None, return_lse=False, _transfer=True):
    """Ring attention over sequence shards: equals :func:`attnx.attention` on the full sequence.

    q [B, Lq_local, Hq, D], k/v [B, Lk_local, Hk, D]: this rank's shards in the layout of
    :func:`shard_sequence` (with ``causal``, two mirrored chunks, and Lq_local == Lk_local: causal
    self-attention). Returns this rank's shard of the output (and of lse), fwd + bwd. Every rank
    must pass shards of the same shapes and dtype (checked: one small all-gather per call). Native
    kernels where :func:`attnx.attention` has them, the reference otherwise (CPU, gloo).
    """
    ref.check_attention(q, k, v)
    rank, world = rank_world(group)
    if world == 1:
        return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
    agree("context_parallel_attention", group, q, _shape_fields(q, k, v, causal))
    if causal and (q.shape[1] != k.shape[1] or q.shape[1] % 2):
        raise ValueError(f"context_parallel_attention: with causal, q and k shards must have the same even length "
                         f"(two mirrored chunks of shard_sequence(..., causal=True)); got {q.shape[1]} and "
                         f"{k.shape[1]}")
    out, lse = _RingAttention.apply(q, k.contiguous(), v.contiguous(), DenseBlocks(q, scale), bool(causal),
                                    RingExchange(group, _transfer))
    return (out, lse) if return_lse else out


def varlen_prologue(op, q, k, v, cu_seqlens, max_seqlen, group, causal) -> list[int]:
    """The varlen ops' checks: the ranks agree (shapes, dtype, the local cu_seqlens), then the
    local ones, which therefore fail alike on every rank. Returns the local cu_seqlens."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
        raise ValueError(f"{op}: argument 'cu_seqlens' must be a 1-D int32 tensor, got {cu_seqlens!r:.80}")
    host = cu_seqlens.tolist()
    checksum = sum((i + 1) * int(x) for i, x in enumerate(host)) % (1 << 61)
    agree(op, group, q, _shape_fields(q, k, v, causal) + [("the local cu_seqlens (checksum)", checksum)])
    ref.check_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, (-1, -1))
    cu = _host_cu(op, cu_seqlens, 1, causal)  # causal: every local sequence is two chunks, so even
    lengths = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    if cu[-1] != q.shape[0] or q.shape[0] != k.shape[0] or max(lengths, default=0) > int(max_seqlen):
        raise ValueError(f"{op}: cu_seqlens (ending at {cu[-1]}, longest {max(lengths, default=0)}) must cover "
                         f"q ({q.shape[0]} tokens) and k ({k.shape[0]}) exactly, within max_seqlen {max_seqlen}")
    return cu


def context_parallel_varlen_attention(q, k, v, cu_seqlens, max_seqlen, group=None, *, causal=False, scale=None,
                                      return_lse=False, _transfer=True):
    """Ring attention over packed sequences: this rank's q/k/v [T_local, H, D] from
    :func:`shard_varlen` with its local ``cu_seqlens`` (the same on every rank) and local
    ``max_seqlen``. Equals :func:`attnx.varlen_attention` (self-attention, cu_seqlens_q ==
    cu_seqlens_k) on the full packed sequences; fwd + bwd.
    """
    rank, world = rank_world(group)
    if world == 1:
        return varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal, scale=scale,
                                return_lse=return_lse)
    cu = varlen_prologue("context_parallel_varlen_attention", q, k, v, cu_seqlens, max_seqlen, group, causal)
    blocks = VarlenBlocks(q, cu_seqlens, cu, max_seqlen, scale)
    out, lse = _RingAttention.apply(q, k.contiguous(), v.contiguous(), blocks, bool(causal),
                                    RingExchange(group, _transfer))
    return (out, lse) if return_lse else out
