"""Sparse attention over listed keys: op and public API."""
from __future__ import annotations

import os

import torch

from .. import _native
from .. import _validate as V
from ..reference import sparse as ref
from ._registry import define, define_attention_like


def _forward(q, k, v, indices, scale, query_order):
    ref.check_sparse(q, k, v, indices)  # values too: range and duplicates
    if query_order is not None:  # the order changes how the kernel tiles queries, not the result
        ref.check_query_order(q, query_order)
    return ref.sparse_fwd(q, k, v, indices, scale)


sparse_op, sparse_backward_op = define_attention_like(
    "sparse_attention", "Tensor indices, float? scale=None, Tensor? query_order=None",
    _forward,
    lambda dout, dlse, q, k, v, out, lse, idx, scale, order: ref.sparse_bwd(dout, dlse, q, k, v, idx, scale),
    family="pq_sparse")


def tiled_enabled() -> bool:
    """ATTNX_SPARSE_TILED=1: the native forward (and, at head dim 64, the backward) groups queries
    with similar lists into tiles of 128 and runs each tile over the union of its lists on tensor
    cores (built 2026-12-08, not yet measured on a GPU, hence off by default)."""
    return os.environ.get("ATTNX_SPARSE_TILED", "") not in ("", "0")


_MINHASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)  # odd 32-bit constants (Fibonacci, murmur3)
_NO_KEY = 0x7FFFFFFF


def _list_minhash(indices, seqlen_k):
    """int64 [B, H, Lq]: m_1 * 2^31 + m_2 with m_a the least h_a(j) = ((j * a) mod 2^32) >> 1 over the
    row's keys j in [0, Lk) (2^31 - 1 for a row without one). One head at a time: the hashes are
    int64, twice the bytes of that head's indices. The CUDA kernel (sparse_list_minhash.cu)
    computes the same values."""
    b, lq, h, kk = indices.shape
    keys = torch.empty(b, h, lq, dtype=torch.int64, device=indices.device)
    for hh in range(h):
        idx = indices[:, :, hh].to(torch.int64)
        valid = (idx >= 0) & (idx < seqlen_k)
        m = [torch.full((b, lq), _NO_KEY, dtype=torch.int64, device=idx.device) if kk == 0 else
             torch.where(valid, ((idx * a) & 0xFFFFFFFF) >> 1, _NO_KEY).amin(dim=-1) for a in _MINHASH_MULTIPLIERS]
        keys[:, hh] = (m[0] << 31) | m[1]
    return keys


def _minhash_fake(indices, seqlen_k):
    return indices.new_empty((indices.shape[0], indices.shape[2], indices.shape[1]), dtype=torch.int64)


def _minhash_checked(indices, seqlen_k):
    V.tensor("indices", indices, ndim=4, dtypes=(torch.int32,))
    if seqlen_k < 0:
        V.fail("seqlen_k", seqlen_k, "a key count >= 0")
    return _list_minhash(indices, seqlen_k)


minhash_op = define("sparse_list_minhash", "(Tensor indices, int seqlen_k) -> Tensor", _minhash_checked,
                    fake=_minhash_fake, family="pq_sparse")


def similar_lists_order(indices, seqlen_k: int):
    """int32 [B, H, Lq]: each (batch, head)'s queries sorted by two MinHash values of their lists.

    Two lists have the same MinHash with probability equal to their Jaccard similarity, so queries
    whose lists overlap much land next to each other and share most of a tile's union of keys."""
    return minhash_op(indices, seqlen_k).argsort(dim=-1).to(torch.int32)


# The tiled kernels' pre-pass (sparse_tile_union.cu), exposed for tests as
# attnx::sparse_tile_unions: its raw int32 workspace, read by parse_tile_unions.
TILE_M = TILE_N = 128  # queries per tile, union keys per chunk (kGatherTileM / kGatherTileN)


def tile_union_layout(b: int, lq: int, h: int, lk: int, topk: int):
    """(tiles, max_chunks, count_words, words) of SparseGatherWorkspace (csrc/kernels/sparse/sparse_params.h)."""
    tiles = -(-lq // TILE_M) * h * b
    max_chunks = -(-min(lk, TILE_M * topk) // TILE_N)
    count_words = -(-tiles // 4) * 4
    return tiles, max_chunks, count_words, count_words + tiles * max_chunks * (TILE_N + 4 * TILE_M)


def parse_tile_unions(ws, indices, seqlen_k: int):
    """(counts [tiles], keys [tiles, max_chunks * 128], masks [tiles, max_chunks, 128 rows, 4 words]):
    views into a pre-pass workspace; tile t = (b * H + h) * ceil(Lq / 128) + m. Only keys[t, :count]
    and the masks of the first ceil(count / 128) chunks are defined."""
    b, lq, h, kk = indices.shape
    tiles, mc, cw, _ = tile_union_layout(b, lq, h, seqlen_k, kk)
    keys_end = cw + tiles * mc * TILE_N
    return (ws[:tiles], ws[cw:keys_end].view(tiles, mc * TILE_N),
            ws[keys_end:keys_end + tiles * mc * TILE_M * 4].view(tiles, mc, TILE_M, 4))


def _tile_unions_reference(indices, query_order, seqlen_k):
    V.tensor("indices", indices, ndim=4, dtypes=(torch.int32,))
    V.tensor("query_order", query_order, ndim=3, dtypes=(torch.int32,))
    b, lq, h, kk = indices.shape
    *_, words = tile_union_layout(b, lq, h, seqlen_k, kk)
    ws = torch.zeros(max(words, 1), dtype=torch.int32, device=indices.device)
    counts, keys, masks = parse_tile_unions(ws, indices, seqlen_k)
    m_tiles = -(-lq // TILE_M)
    for bb in range(b):
        for hh in range(h):
            for m in range(m_tiles):
                t = (bb * h + hh) * m_tiles + m
                lists = indices[bb, query_order[bb, hh, m * TILE_M:(m + 1) * TILE_M].long().clamp(0, lq - 1), hh].long()
                valid = (lists >= 0) & (lists < seqlen_k)
                union = torch.unique(lists[valid])  # ascending
                counts[t] = union.numel()
                keys[t, :union.numel()] = union.int()
                r, e = valid.nonzero(as_tuple=True)
                pos = torch.searchsorted(union, lists[r, e])
                word = ((pos // TILE_N) * TILE_M + r) * 4 + (pos % TILE_N) // 32
                bits = torch.zeros(masks[t].numel(), dtype=torch.int64, device=ws.device)
                bits.index_add_(0, word, torch.ones_like(pos) << (pos % 32))  # distinct keys per row: sum = or
                masks[t] = torch.where(bits >= 2**31, bits - 2**32, bits).int().view_as(masks[t])
    return ws


tile_unions_op = define(
    "sparse_tile_unions", "(Tensor indices, Tensor query_order, int seqlen_k) -> Tensor", _tile_unions_reference,
    fake=lambda idx, order, lk: idx.new_empty((max(tile_union_layout(idx.shape[0], idx.shape[1], idx.shape[2], lk,
                                                                      idx.shape[3])[3], 1),), dtype=torch.int32),
    family="pq_sparse")


def sparse_call(q, k, v, indices, scale, *, trusted: bool = False, query_order=None):
    """(out, lse) through the native kernels when they cover the call, else the reference.

    ``trusted`` indices (made by attnx.pq.topk) skip the value checks. ``query_order`` (int32
    [B, H, Lq], a permutation per (batch, head)) selects the tiled native forward; with
    ATTNX_SPARSE_TILED=1 and no order given, one is made from the lists (similar_lists_order)."""
    if _native.use_reference("sparse_attention", q, k, v):
        return ref._SparseRef.apply(q, k, v, indices, scale)
    if q.is_cuda and not torch.compiler.is_compiling():
        if not trusted:
            ref.check_sparse_values(k, indices, duplicates=V.debug_checks())
        if indices.shape[-1] > 1 and indices.stride(-1) != 1:
            indices = indices.contiguous()
        if query_order is None and tiled_enabled():
            query_order = similar_lists_order(indices, k.shape[1])
        elif query_order is not None and V.debug_checks():
            ref.check_query_order(q, query_order)
    return sparse_op(q, k, v, indices, scale, query_order)


def sparse_attention(q, k, v, indices, *, scale=None, return_lse=False):
    """Each query attends to exactly the keys in its row of ``indices`` (int32 [B, Lq, H, k], -1 = empty).

    q [B, Lq, H, D], k/v [B, Lk, Hk, D|Dv] (Hk dividing H). Listed keys must be distinct. See
    :func:`attnx.reference.sparse_attention`.

    On an H100, forward and backward run natively for fp16/bf16 with head dims 64 and 128 (Dv = D):
    one warp per query gathers its listed keys (the forward, and dQ in the backward); dK/dV come
    from one warp per key walking the queries that list it, in query order (deterministic, no
    atomics on the gradients). Other configs run the reference. Checks on CUDA: index values in
    [-1, Lk) on every call (a host sync); duplicates only with ``ATTNX_DEBUG=1`` (the native
    kernels never read out of bounds, but a duplicated key would count twice in the forward).

    ``ATTNX_SPARSE_TILED=1`` (opt-in, not yet measured on a GPU) runs the forward tiled: queries are
    ordered by two MinHash values of their lists, and each tile of 128 runs over the union of its
    lists on tensor cores with a bit mask (docs/perf-notes.md); at head dim 64 the backward then
    runs on the same tiles, adding dK/dV to float32 accumulators with atomics (race-free, but not
    bitwise deterministic, unlike the default backward).
    """
    ref.check_sparse(q, k, v, indices, check_values=False)
    out, lse = sparse_call(q, k, v, indices, scale)
    return (out, lse) if return_lse else out
