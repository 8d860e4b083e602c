"""MLA decode over a paged latent KV cache: ops and public API."""
from __future__ import annotations

import torch

from .. import _native
from .. import _validate as V
from .._checked_once import CheckedOnce, NativeLayouts
from ..reference import mla as ref
from ..reference._core import lse_dtype
from ._registry import define

MLAMetadata = ref.MLAMetadata
# The GPU planner keeps the lengths in shared memory; longer batches are planned on the host.
_GPU_PLAN_MAX_BATCH = 51200


metadata_op = define(
    "mla_decode_metadata",
    "(Tensor cache_seqlens, int num_q_heads, int num_kv_heads=1, int q_len=1) -> (Tensor tile_scheduler_metadata, Tensor num_splits)",
    lambda s, hq, hk, ql: tuple(ref.mla_decode_metadata_fwd(s, hq, hk, ql)),
    fake=lambda s, hq, hk, ql: (s.new_empty((ref.mla_num_parts(s.device, hq, hk, ql), 8)), s.new_empty((s.shape[0] + 1,))),
    family="mla")


def _decode_impl(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, causal, sched, splits):
    ref.check_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v)
    return ref.mla_decode_fwd(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, causal)


decode_op = define(
    "mla_decode",
    "(Tensor q, Tensor kv_cache, Tensor block_table, Tensor cache_seqlens, int head_dim_v=512, float? scale=None, "
    "bool causal=False, Tensor? tile_scheduler_metadata=None, Tensor? num_splits=None) -> (Tensor out, Tensor lse)",
    _decode_impl,
    fake=lambda q, kv, bt, s, dv, *_: (q.new_empty((*q.shape[:-1], dv)), q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype))),
    family="mla")


def mla_decode_metadata(cache_seqlens, num_q_heads, num_kv_heads=1, q_len=1):
    """Plan the split-KV decode (balanced across SMs, skewed batches included) -> MLAMetadata.

    Compute it once per decode step, from the cache_seqlens the step decodes with, and pass it to
    every layer's :func:`mla_decode` (an opaque plan: pass only what this function returned).
    On an H100 the plan is made by a small GPU kernel, without a host sync. Each piece of work is
    charged its pages plus a fixed cost that grows with the query block's rows (its query load and
    output store: 5 pages at 64 rows, 3 at 16; measured), so the plan depends on the head count
    and q_len, not only on the lengths.
    """
    ref.check_metadata(cache_seqlens, num_q_heads, num_kv_heads, q_len)
    if cache_seqlens.is_cuda and not (_native.covers("mla_decode_metadata", cache_seqlens)
                                      and cache_seqlens.shape[0] <= _GPU_PLAN_MAX_BATCH):
        return ref.mla_decode_metadata_fwd(cache_seqlens, num_q_heads, num_kv_heads, q_len)
    return MLAMetadata(*metadata_op(cache_seqlens, num_q_heads, num_kv_heads, q_len))


_values_checked = CheckedOnce()
_native_layouts = NativeLayouts()


def mla_decode(q, kv_cache, block_table, cache_seqlens, *, head_dim_v=512, scale=None, causal=False, metadata=None):
    """DeepSeek MLA decode: q [B, s_q, Hq, 576], kv_cache [num_blocks, 64, Hk, 576] -> (out, lse).

    Keys are all 576 columns, values the first ``head_dim_v``; with ``causal`` and s_q > 1 query t
    sees the keys at positions <= cache_seqlens[b] - s_q + t. ``metadata`` (from
    :func:`mla_decode_metadata`, for these cache_seqlens) is optional; it only decides how sequences
    split across SMs. A split sequence's pieces store their normalised partial outputs in q's dtype
    (they lie within the values' range; half the bytes of float32) and merge in float32 through
    their lse, so a split row can differ from an unsplit one by about one rounding of that dtype.
    See :func:`attnx.reference.mla_decode`.

    Checks: cache_seqlens within the block table's capacity (on CUDA once per tensor until it
    changes in place: a host sync on first use); the page ids a sequence uses inside the cache only
    with ``ATTNX_DEBUG=1`` (the kernel reads ids outside the cache as zero pages, never out of bounds).
    """
    compiling = torch.compiler.is_compiling()
    sig = None if compiling else NativeLayouts.key((q, kv_cache, block_table, cache_seqlens), head_dim_v)
    if sig not in _native_layouts:
        ref.check_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v, check_values=False)
        if _native.use_reference("mla_decode", q, kv_cache, head_dim_v=head_dim_v):
            return _decode_impl(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, bool(causal), None, None)
        _native_layouts.add(sig)
    if q.is_cuda and not compiling:
        debug = V.debug_checks()
        _values_checked((cache_seqlens, block_table), (tuple(kv_cache.shape), debug),
                        lambda: ref.check_mla_values(kv_cache, block_table, cache_seqlens, check_pages=debug))
        if not _native.aligned_16b(q):
            q = q.contiguous()
    sched, splits = (None, None) if metadata is None else tuple(metadata)
    return decode_op(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, bool(causal), sched, splits)
