"""Which part of a sequence each rank holds, and the helpers that cut and reassemble it.

A sequence of length L is cut into W equal chunks (rank r holds chunk r) or, with ``causal``,
into 2W chunks of which rank r holds chunks r and 2W-1-r, in that order. Under a causal mask
the early chunks are cheap and the late ones dear; pairing chunk r with its mirror gives every
rank the same amount of work, and the rank's two chunks stay in increasing position order, so
the local causal block is an ordinary causal attention.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._group import rank_world


def chunk_ids(rank: int, world: int, causal: bool) -> tuple[int, ...]:
    return (rank, 2 * world - 1 - rank) if causal else (rank,)


def num_chunks(world: int, causal: bool) -> int:
    return 2 * world if causal else world


def _check_len(op: str, arg: str, length: int, world: int, causal: bool, what: str = "its length"):
    n = num_chunks(world, causal)
    if length % n:
        how = f"{n} chunks (two mirrored chunks per rank, causal)" if causal else f"{n} equal chunks"
        raise ValueError(f"{op}: argument '{arg}' has {what} {length}; a group of {world} ranks cuts it into "
                         f"{how}, so it must be a multiple of {n}")


def shard_sequence(x: torch.Tensor, group=None, *, causal: bool = False, dim: int = 1) -> torch.Tensor:
    """This rank's part of the full sequence ``x`` along ``dim`` (a contiguous copy)."""
    rank, world = rank_world(group)
    dim = dim % x.dim()
    _check_len("shard_sequence", "x", x.shape[dim], world, causal, f"length along dim {dim}")
    chunks = x.chunk(num_chunks(world, causal), dim)
    return torch.cat([chunks[i] for i in chunk_ids(rank, world, causal)], dim).contiguous()


def gather_sequence(x_local: torch.Tensor, group=None, *, causal: bool = False, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: every rank gets the full sequence (one all-gather)."""
    rank, world = rank_world(group)
    dim = dim % x_local.dim()
    parts = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(parts, x_local.contiguous(), group=group)
    per_rank = len(chunk_ids(0, world, causal))
    chunks: list = [None] * num_chunks(world, causal)
    for r, part in enumerate(parts):
        for c, piece in zip(chunk_ids(r, world, causal), part.chunk(per_rank, dim)):
            chunks[c] = piece
    return torch.cat(chunks, dim)


def varlen_index(cu: list[int], rank: int, world: int, causal: bool) -> torch.Tensor:
    """Global token positions this rank holds, in local order, for packed sequences ``cu``."""
    n = num_chunks(world, causal)
    pieces = []
    for b in range(len(cu) - 1):
        c = (cu[b + 1] - cu[b]) // n
        pieces += [torch.arange(cu[b] + i * c, cu[b] + (i + 1) * c) for i in chunk_ids(rank, world, causal)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)


def _host_cu(op: str, cu_seqlens: torch.Tensor, world: int, causal: bool) -> list[int]:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: argument 'cu_seqlens' must be a 1-D int32 tensor [B+1], "
                         f"got {getattr(cu_seqlens, 'shape', cu_seqlens)}")
    cu = cu_seqlens.tolist()
    for b in range(len(cu) - 1):
        if cu[b + 1] < cu[b]:
            raise ValueError(f"{op}: argument 'cu_seqlens' must be non-decreasing, got {cu[b]} then {cu[b + 1]}")
        _check_len(op, "cu_seqlens", cu[b + 1] - cu[b], world, causal, f"sequence {b} of length")
    return cu


def shard_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor, group=None, *, causal: bool = False):
    """This rank's part of packed sequences x [T, ...] -> (x_local, cu_seqlens_local, max_seqlen_local).

    Every sequence is cut as :func:`shard_sequence` cuts one (its length must be a multiple of W,
    or 2W with ``causal``); the local tensor packs this rank's part of each sequence in order,
    so every rank has the same ``cu_seqlens_local`` (the full one divided by W).
    """
    rank, world = rank_world(group)
    cu = _host_cu("shard_varlen", cu_seqlens, world, causal)
    if x.shape[0] != cu[-1]:
        raise ValueError(f"shard_varlen: argument 'x' has {x.shape[0]} tokens but cu_seqlens ends at {cu[-1]}")
    idx = varlen_index(cu, rank, world, causal).to(x.device)
    cu_local = torch.div(cu_seqlens, world, rounding_mode="floor").to(torch.int32)
    lengths = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    return x.index_select(0, idx), cu_local, max(lengths, default=0) // world


def gather_varlen(x_local: torch.Tensor, cu_seqlens: torch.Tensor, group=None, *, causal: bool = False):
    """Inverse of :func:`shard_varlen` (``cu_seqlens`` is the full sequences')."""
    rank, world = rank_world(group)
    cu = _host_cu("gather_varlen", cu_seqlens, world, causal)
    parts = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(parts, x_local.contiguous(), group=group)
    out = x_local.new_empty((cu[-1], *x_local.shape[1:]))
    for r, part in enumerate(parts):
        out.index_copy_(0, varlen_index(cu, r, world, causal).to(out.device), part)
    return out
