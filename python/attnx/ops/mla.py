"""MLA decode over a paged latent KV cache: ops and public API."""
from __future__ import annotations


from ..reference import mla as ref
from ..reference._core import lse_dtype
from ._registry import define

MLAMetadata = ref.MLAMetadata


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

    Compute it once per decode step and pass it to every layer's :func:`mla_decode`.
    """
    ref.check_metadata(cache_seqlens, num_q_heads, num_kv_heads, q_len)
    return MLAMetadata(*metadata_op(cache_seqlens, num_q_heads, num_kv_heads, q_len))


def mla_decode(q, kv_cache, block_table, cache_seqlens, *, head_dim_v=512, scale=None, causal=False, metadata=None):
    """DeepSeek MLA decode: q [B, s_q, Hq, 576], kv_cache [num_blocks, 64, Hk, 576] -> (out, lse).

    Keys are all 576 columns, values the first ``head_dim_v``; with ``causal`` and s_q > 1 query t
    sees the keys at positions <= cache_seqlens[b] - s_q + t. ``metadata`` (from
    :func:`mla_decode_metadata`) is optional; results do not depend on it. See
    :func:`attnx.reference.mla_decode`.
    """
    ref.check_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v, check_values=False)
    sched, splits = (None, None) if metadata is None else tuple(metadata)
    return decode_op(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, bool(causal), sched, splits)
