"""Reference SPT layer: PQ-selected top-k keys per query, then exact sparse attention over them."""
from __future__ import annotations

from . import pq
from .sparse import sparse_attention


def pq_sparse_attention(q, k, v, k_top, *, codebook=None, causal=False, scale=None, return_lse=False,
                        num_subspaces=8, num_centroids=256):
    """SPT sparse attention: encode keys with a PQ codebook (fitted on k if none is given), pick each
    query's ``k_top`` keys by the PQ inner product, and attend exactly over those. The selection is
    not differentiable; the attention is."""
    if codebook is None:
        codebook = pq.fit(k.detach(), num_subspaces, num_centroids)
    idx = pq.topk(q.detach(), pq.encode(k.detach(), codebook), codebook, k_top, causal=causal)
    return sparse_attention(q, k, v, idx, scale=scale, return_lse=return_lse)
