"""MLA decode with the paged latent cache split by sequence position across ranks.

Rank r holds the r-th consecutive segment of every sequence's cache (its own pages, block
table and cache_seqlens; a segment may be empty). The query is the same on every rank. Each rank
decodes its segment with the single-GPU kernel; one all-gather of the partial (out, lse) lets
every rank merge the exact result: lse = log sum_r e^lse_r, out = sum_r e^(lse_r - lse) out_r.
With causal and s_q > 1 (speculative tokens) the masked tail is the last rank's: its segment
must hold at least s_q - 1 tokens of every sequence (checked), and the earlier ranks' keys are
visible to every query.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from ..ops.mla import MLAMetadata
from ..ops.mla import mla_decode as mla_decode_local
from ..ops.mla import mla_decode_metadata as mla_decode_metadata_local
from ._group import agree, comm_device, rank_world


class DistributedMLAMetadata(NamedTuple):
    local: MLAMetadata  # this rank's split-KV plan
    shape: tuple  # (batch, num_q_heads, num_kv_heads, q_len, head_dim_v), the same on every rank
    tail_shortest: int  # the last rank's shortest local cache


def mla_decode_metadata(cache_seqlens, num_q_heads, num_kv_heads=1, q_len=1, group=None, *, head_dim_v=512):
    """This rank's split-KV plan plus a check that the ranks agree on the step's shapes.

    Once per decode step (every layer reuses it): one all-gather of a few integers and a host
    sync; the layers' :func:`mla_decode` calls then need only their one all-gather each.
    """
    rank, world = rank_world(group)
    local = mla_decode_metadata_local(cache_seqlens, num_q_heads, num_kv_heads, q_len)
    shape = (int(cache_seqlens.shape[0]), int(num_q_heads), int(num_kv_heads), int(q_len), int(head_dim_v))
    shortest = int(cache_seqlens.min()) if cache_seqlens.numel() else 0
    names = ("the batch", "num_q_heads", "num_kv_heads", "q_len", "head_dim_v")
    extras = agree("attnx.distributed.mla_decode", group, cache_seqlens, list(zip(names, shape)), extra=(shortest,))
    return DistributedMLAMetadata(local, shape, int(extras[-1][0]))


def merge_partials(gathered: torch.Tensor, head_dim_v: int):
    """[W, ..., Dv + 1] float32 (out | lse per rank) -> (out [..., Dv] float32, lse [...])."""
    lse_r = gathered[..., head_dim_v]
    top = lse_r.amax(0)
    top = torch.where(torch.isneginf(top), 0.0, top)  # no rank saw a key: weights 0, lse -inf, out 0
    weight = torch.exp(lse_r - top)  # a rank with no key (lse -inf) weighs 0
    total = weight.sum(0)
    share = weight / total.clamp_min(torch.finfo(total.dtype).tiny)
    out = torch.einsum("w...d,w...->...d", gathered[..., :head_dim_v], share)
    return out, top + torch.log(total)


def mla_decode(q, kv_cache, block_table, cache_seqlens, group=None, *, head_dim_v=512, scale=None, causal=False,
               metadata=None):
    """:func:`attnx.mla_decode` over a cache split by sequence position across the group's ranks.

    q [B, s_q, Hq, 576] the same on every rank; kv_cache, block_table, cache_seqlens: this rank's
    segment (see the module docstring). Returns the full (out [B, s_q, Hq, head_dim_v], lse) on
    every rank. ``metadata`` from :func:`mla_decode_metadata` (once per step) saves a check;
    without it this call makes it.
    """
    rank, world = rank_world(group)
    if isinstance(metadata, DistributedMLAMetadata):
        local_plan = metadata.local
    else:
        local_plan = metadata
    if world == 1:
        return mla_decode_local(q, kv_cache, block_table, cache_seqlens, head_dim_v=head_dim_v, scale=scale,
                                causal=causal, metadata=local_plan)
    if not isinstance(metadata, DistributedMLAMetadata):
        metadata = mla_decode_metadata(cache_seqlens, q.shape[2], kv_cache.shape[2], q.shape[1], group,
                                       head_dim_v=head_dim_v)
        local_plan = metadata.local
    b, s_q, hq = q.shape[0], q.shape[1], q.shape[2]
    if (b, hq, s_q, head_dim_v) != (metadata.shape[0], metadata.shape[1], metadata.shape[3], metadata.shape[4]):
        raise ValueError(f"attnx.distributed.mla_decode: argument 'q' {tuple(q.shape)} (head_dim_v {head_dim_v}) "
                         f"does not match the metadata's (batch, Hq, Hk, q_len, head_dim_v) = {metadata.shape}")
    if causal and s_q > 1 and metadata.tail_shortest < s_q - 1:
        raise ValueError(f"attnx.distributed.mla_decode: causal with s_q = {s_q} needs the last rank's segment of "
                         f"every sequence to hold at least {s_q - 1} tokens (the masked tail); its shortest holds "
                         f"{metadata.tail_shortest}")
    out, lse = mla_decode_local(q, kv_cache, block_table, cache_seqlens, head_dim_v=head_dim_v, scale=scale,
                                causal=causal and rank == world - 1, metadata=local_plan)
    packed = torch.empty((*out.shape[:-1], head_dim_v + 1), device=q.device,
                         dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    packed[..., :head_dim_v].copy_(out)
    packed[..., head_dim_v].copy_(lse)
    dev = comm_device(group, q)
    gathered = torch.empty((world * packed.shape[0], *packed.shape[1:]), dtype=packed.dtype, device=dev)
    dist.all_gather_into_tensor(gathered, packed.to(dev), group=group)  # rank-major, concatenated on dim 0
    out, lse = merge_partials(gathered.to(q.device).view(world, *packed.shape), head_dim_v)
    return out.to(q.dtype), lse
