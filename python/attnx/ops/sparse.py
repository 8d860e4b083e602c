"""Sparse attention over listed keys: op and public API."""
from __future__ import annotations

import torch

from .. import _native
from .. import _validate as V
from ..reference import sparse as ref
from ._registry import define_attention_like


def _forward(q, k, v, indices, scale):
    ref.check_sparse(q, k, v, indices)  # values too: range and duplicates
    return ref.sparse_fwd(q, k, v, indices, scale)


sparse_op, sparse_backward_op = define_attention_like(
    "sparse_attention", "Tensor indices, float? scale=None",
    _forward,
    lambda dout, dlse, q, k, v, out, lse, idx, scale: ref.sparse_bwd(dout, dlse, q, k, v, idx, scale),
    family="pq_sparse")


def sparse_call(q, k, v, indices, scale, *, trusted: bool = False):
    """(out, lse) through the native kernels when they cover the call, else the reference.

    ``trusted`` indices (made by attnx.pq.topk) skip the value checks."""
    if _native.use_reference("sparse_attention", q, k, v):
        return ref._SparseRef.apply(q, k, v, indices, scale)
    if q.is_cuda and not torch.compiler.is_compiling():
        if not trusted:
            ref.check_sparse_values(k, indices, duplicates=V.debug_checks())
        if indices.shape[-1] > 1 and indices.stride(-1) != 1:
            indices = indices.contiguous()
    return sparse_op(q, k, v, indices, scale)


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
    """
    ref.check_sparse(q, k, v, indices, check_values=False)
    out, lse = sparse_call(q, k, v, indices, scale)
    return (out, lse) if return_lse else out
