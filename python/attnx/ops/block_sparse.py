"""Block-sparse attention (the iteration space GNA plans into): op and public API."""
from __future__ import annotations

import torch

from .. import _native
from .._checked_once import CheckedOnce
from ..reference import block_sparse as ref
from ._registry import define_attention_like


def _forward(q, k, v, idx, cnt, q_block, kv_block, scale):
    ref.check_block_sparse(q, k, v, idx, cnt, q_block, kv_block)  # values too: tile ids, counts
    return ref.block_sparse_fwd(q, k, v, idx, cnt, q_block, kv_block, scale)


block_sparse_op, block_sparse_backward_op = define_attention_like(
    "block_sparse_attention", "Tensor kv_block_index, Tensor kv_block_count, int q_block, int kv_block, float? scale=None",
    _forward,
    lambda dout, dlse, q, k, v, out, lse, idx, cnt, qb, kb, scale: ref.block_sparse_bwd(
        dout, dlse, q, k, v, idx, cnt, qb, kb, scale),
    family="gna")


_values_checked = CheckedOnce()


def block_sparse_attention(q, k, v, kv_block_index, kv_block_count, *, q_block, kv_block, scale=None,
                           return_lse=False):
    """Attention where Q tile t visits only KV tiles ``kv_block_index[b, h, t, :kv_block_count[b, h, t]]``.

    q/k/v [B, L, H, D]; tiles are runs of ``q_block`` / ``kv_block`` tokens; a batch or head dim
    of size 1 in the index tensors broadcasts. See :func:`attnx.reference.block_sparse_attention`.

    On an H100 forward and backward run natively (fp16/bf16, head dims 64/128) when the tiles are
    the kernel's own, ``attnx._native.block_sparse_tiles(D)``: (128, 128), or (192, 128) at D = 64.
    The backward's CTAs own KV tiles and walk the 64-row Q tiles whose forward list holds them (the
    lists are transposed on the GPU, in order, so dK and dV are deterministic). Other tiles run the
    reference. The index values are checked once per pair of
    index tensors (a host sync) until either changes in place.
    """
    ref.check_block_sparse(q, k, v, kv_block_index, kv_block_count, q_block, kv_block, check_values=False)
    if _native.use_reference("block_sparse_attention", q, k, v, tiles=(q_block, kv_block)):
        out, lse = ref._BlockSparseRef.apply(q, k, v, kv_block_index, kv_block_count, q_block, kv_block, scale)
        return (out, lse) if return_lse else out
    if q.is_cuda and not torch.compiler.is_compiling():
        _values_checked((kv_block_index, kv_block_count), (q.shape[1], k.shape[1], q_block, kv_block),
                        lambda: ref.check_block_sparse(q, k, v, kv_block_index, kv_block_count, q_block, kv_block))
        kv_block_index = kv_block_index if kv_block_index.stride(-1) == 1 else kv_block_index.contiguous()
    out, lse = block_sparse_op(q, k, v, kv_block_index, kv_block_count, q_block, kv_block, scale)
    return (out, lse) if return_lse else out
