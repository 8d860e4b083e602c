"""Sparse attention over listed keys: op and public API."""
from __future__ import annotations

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


def sparse_attention(q, k, v, indices, *, scale=None, return_lse=False):
    """Each query attends to exactly the keys in its row of ``indices`` (int32 [B, Lq, H, k], -1 = empty).

    q [B, Lq, H, D], k/v [B, Lk, H, D|Dv]. Listed keys must be distinct. See
    :func:`attnx.reference.sparse_attention`.
    """
    ref.check_sparse(q, k, v, indices, check_values=False)
    out, lse = sparse_op(q, k, v, indices, scale)
    return (out, lse) if return_lse else out
