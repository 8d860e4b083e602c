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


def tiled_forward_enabled() -> bool:
    """ATTNX_SPARSE_TILED=1: the native forward groups queries with similar lists into tiles of
    128 and runs each tile over the union of its lists on tensor cores (built 2026-12-08, not yet
    measured on a GPU, hence off by default)."""
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
        if query_order is None and tiled_forward_enabled():
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
