"""Head-parallel attention: all-to-all from sequence shards to head groups and back.

Each rank trades its sequence shard of every head for the whole sequence of H/W heads (one
all-to-all per tensor), runs the single-GPU kernel on that, and trades back. Four all-to-alls
in the forward (q, k, v, out), four in the backward; each moves (W-1)/W of a shard, so the
volume per rank does not grow with W, but none of it overlaps the attention and W may not
exceed the KV head count. The ring moves (W-1) KV shards per rank, hidden under the attention
when the shards are long; it has no head-count limit. docs/perf-notes.md has the measurements.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops.attention import attention, varlen_attention
from ..reference import dense_varlen as ref
from ._group import agree, rank_world
from .context_parallel import _shape_fields, varlen_prologue
from .layout import chunk_ids, varlen_index


def _orders(cu: list[int], world: int, causal: bool, device):
    """(order, inverse) between the rank-major gathered sequence and the natural one: ``order[p]``
    is where natural token p sits after the exchange. None when the two coincide (one sequence,
    not causal); packed sequences interleave (rank r holds a chunk of each)."""
    if not causal and len(cu) == 2:
        return None, None
    held = torch.cat([varlen_index(cu, r, world, causal) for r in range(world)]).to(device)
    return torch.argsort(held), held


def _seq_to_heads(x, group, world, order, inverse):
    """[B, n, H, D] sequence shard -> [B, W*n, H/W, D] full sequence of this rank's head group."""
    b, n, h, d = x.shape
    send = x.reshape(b, n, world, h // world, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    full = recv.permute(1, 0, 2, 3, 4).reshape(b, world * n, h // world, d)
    return full if order is None else full.index_select(1, order)


def _heads_to_seq(x, group, world, order, inverse):
    """Inverse of :func:`_seq_to_heads`: [B, L, H/W, D] -> [B, L/W, H, D]."""
    if inverse is not None:
        x = x.index_select(1, inverse)
    b, length, hg, d = x.shape
    n = length // world
    send = x.reshape(b, world, n, hg, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, n, world * hg, d)


def _exchange(x, to_heads: bool, *args):
    """One of the two exchanges; lse ([B, L, H], no head dim) travels as [B, L, H, 1]."""
    fn = _seq_to_heads if to_heads else _heads_to_seq
    if x.dim() == 3:
        return fn(x.unsqueeze(-1), *args).squeeze(-1)
    return fn(x, *args)


class _Exchange(torch.autograd.Function):
    """An all-to-all between the sequence and the head layouts; its gradient takes the other way."""

    @staticmethod
    def forward(ctx, x, to_heads, group, world, order, inverse):
        ctx.args = (not to_heads, group, world, order, inverse)
        return _exchange(x, to_heads, group, world, order, inverse)

    @staticmethod
    def backward(ctx, g):
        grad = None if g is None else _exchange(g.contiguous(), *ctx.args)
        return grad, None, None, None, None, None


def head_parallel_attention(q, k, v, group=None, *, causal=False, scale=None, return_lse=False):
    """All-to-all attention over sequence shards (the layout of :func:`shard_sequence`): equals
    :func:`attnx.attention` on the full sequence; fwd + bwd. Needs Hq and Hk divisible by the
    group size (else use :func:`context_parallel_attention`)."""
    ref.check_attention(q, k, v)
    rank, world = rank_world(group)
    if world == 1:
        return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
    op = "head_parallel_attention"
    agree(op, group, q, _shape_fields(q, k, v, causal))
    if q.shape[2] % world or k.shape[2] % world:
        raise ValueError(f"{op}: q has {q.shape[2]} heads and k {k.shape[2]}; both must be multiples of the group "
                         f"size {world} (context_parallel_attention has no such limit)")
    if q.shape[1] != k.shape[1] or q.shape[1] % len(chunk_ids(0, world, causal)):
        raise ValueError(f"{op}: q and k shards must have the same length (self-attention), a multiple of "
                         f"{len(chunk_ids(0, world, causal))}; got {q.shape[1]} and {k.shape[1]}")
    args = (group, world, *_orders([0, world * q.shape[1]], world, causal, q.device))
    qh, kh, vh = (_Exchange.apply(x, True, *args) for x in (q, k, v))
    out, lse = attention(qh, kh, vh, causal=causal, scale=scale, return_lse=True)
    out = _Exchange.apply(out, False, *args)
    return (out, _Exchange.apply(lse.contiguous(), False, *args)) if return_lse else out


def head_parallel_varlen_attention(q, k, v, cu_seqlens, max_seqlen, group=None, *, causal=False, scale=None,
                                   return_lse=False):
    """All-to-all attention over packed shards from :func:`shard_varlen` (local ``cu_seqlens`` and
    ``max_seqlen``, the same on every rank): equals :func:`attnx.varlen_attention` on the full
    packed sequences (self-attention); fwd + bwd. Needs Hq and Hk divisible by the group size.
    Where the sequences are short, this beats the ring, whose transfers do not shrink with them."""
    rank, world = rank_world(group)
    if world == 1:
        return varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal, scale=scale,
                                return_lse=return_lse)
    op = "head_parallel_varlen_attention"
    cu = varlen_prologue(op, q, k, v, cu_seqlens, max_seqlen, group, causal)
    if q.shape[1] % world or k.shape[1] % world:
        raise ValueError(f"{op}: q has {q.shape[1]} heads and k {k.shape[1]}; both must be multiples of the group "
                         f"size {world} (context_parallel_varlen_attention has no such limit)")
    args = (group, world, *_orders([x * world for x in cu], world, causal, q.device))
    qh, kh, vh = (_Exchange.apply(x.unsqueeze(0), True, *args)[0] for x in (q, k, v))
    cu_full = cu_seqlens * world
    out, lse = varlen_attention(qh, kh, vh, cu_full, cu_full, int(max_seqlen) * world, int(max_seqlen) * world,
                                causal=causal, scale=scale, return_lse=True)
    out = _Exchange.apply(out.unsqueeze(0), False, *args)[0]
    return (out, _Exchange.apply(lse.unsqueeze(0).contiguous(), False, *args)[0]) if return_lse else out
