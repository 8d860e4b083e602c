"""Product-quantization selection (SPT) and the PQ-sparse attention layer op: ops and public API."""
from __future__ import annotations

import torch

from .. import _native
from ..reference import pq as ref
from ._registry import define
from .sparse import sparse_call

FAMILY = "pq_sparse"


def _fit_fake(x, m, c, iters, seed):
    return x.new_empty((x.shape[2], m, c, x.shape[3] // m), dtype=torch.float32)


fit_op = define("pq_fit", "(Tensor x, int num_subspaces, int num_centroids=256, int iters=10, int seed=0) -> Tensor",
                lambda x, m, c, iters, seed: ref.pq_fit(x, m, c, iters, seed), fake=_fit_fake, family=FAMILY)
update_op = define("pq_update", "(Tensor centroids, Tensor x, int iters=1) -> Tensor",
                   lambda cb, x, iters: ref.pq_update(cb, x, iters),
                   fake=lambda cb, x, iters: torch.empty_like(cb), family=FAMILY)
encode_op = define("pq_encode", "(Tensor x, Tensor centroids) -> Tensor",
                   lambda x, cb: ref.pq_encode(x, cb),
                   fake=lambda x, cb: x.new_empty((*x.shape[:3], cb.shape[1]), dtype=torch.uint8), family=FAMILY)
topk_op = define("pq_topk",
                 "(Tensor q, Tensor k_codes, Tensor centroids, int k, bool causal=False, bool sorted=True) -> Tensor",
                 lambda q, codes, cb, k, causal, srt: ref.pq_topk(q, codes, cb, k, causal, srt),
                 fake=lambda q, codes, cb, k, causal, srt: q.new_empty((*q.shape[:3], k), dtype=torch.int32),
                 family=FAMILY)


def encode_call(x, centroids):
    """pq_encode through the native kernel when it covers the call, else the reference."""
    if not _native.covers("pq_encode", x, centroids):
        return ref.pq_encode(x, centroids) if x.is_cuda else encode_op(x, centroids)
    if not torch.compiler.is_compiling():
        ref.check_encode(x, centroids)
    if x.numel() and x.stride(3) != 1:
        x = x.contiguous()
    return encode_op(x, centroids.contiguous())


def topk_call(q, codes, centroids, k, causal, *, sorted: bool = True, trusted: bool = False):
    """pq_topk through the native kernel when it covers the call, else the reference.

    The kernel streams each head's codes, so they are laid out head-major first (one small copy
    unless they already are). ``trusted`` codes (made by pq.encode) skip the check that every
    code is below C (a read of all codes and a host sync)."""
    if not _native.covers("pq_topk", q, codes, centroids, topk=k):
        if q.is_cuda:
            return ref.pq_topk(q, codes, centroids, k, causal, sorted)
        return topk_op(q, codes, centroids, k, causal, sorted)
    if not torch.compiler.is_compiling():
        ref.check_topk(q, codes, centroids, k, check_values=not trusted)
    if codes.shape[1] > 1 and codes.stride(1) != codes.shape[3]:
        codes = codes.transpose(1, 2).contiguous().transpose(1, 2)
    return topk_op(q, codes, centroids.contiguous(), k, causal, sorted)


def _pq_sparse_impl(q, k, v, k_top, centroids, causal, scale, num_subspaces, num_centroids):
    # Selection is not differentiable: it only decides which keys each query reads. The lists go
    # in ascending key order (no sort by score: the attention does not care about list order).
    kd = k.detach()
    if centroids is None:
        centroids = fit_op(kd, num_subspaces, num_centroids, 10, 0)
    idx = topk_call(q.detach(), encode_call(kd, centroids), centroids, k_top, causal, sorted=False, trusted=True)
    # With ATTNX_SPARSE_TILED=1, sparse_call orders the queries by the MinHash of their lists: on
    # the bench's clustered data its tiles' unions are 0.29 of Lk against 0.41 when ordered by q's
    # first two PQ codes (L 16384, k 512; scripts/pq_tile_unions.py).
    return sparse_call(q, k, v, idx, scale, trusted=True)


define("pq_sparse_attention",
       "(Tensor q, Tensor k, Tensor v, int k_top, Tensor? centroids=None, bool causal=False, float? scale=None, "
       "int num_subspaces=8, int num_centroids=256) -> (Tensor out, Tensor lse)",
       _pq_sparse_impl, family=FAMILY, key="CompositeImplicitAutograd")
