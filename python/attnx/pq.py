"""Product quantization for sparse attention (SPT): codebooks, codes, top-k selection, the layer op.

Thin wrappers over the torch.ops.attnx.pq_* ops; the semantics are those of
:mod:`attnx.reference.pq` (the executable specification).
"""
from __future__ import annotations

import torch

from .ops.pq import encode_call, fit_op, topk_call, update_op
from .reference.pq import Codebook, _codebook, quantization_error

__all__ = ["Codebook", "fit", "update", "encode", "topk", "quantization_error", "pq_sparse_attention"]


def fit(x, num_subspaces, num_centroids=256, iters=10, *, seed=0) -> Codebook:
    """k-means codebooks per head and subspace for keys x [B, L, H, D] -> Codebook."""
    return Codebook(fit_op(x, num_subspaces, num_centroids, iters, seed))


def update(codebook, x, *, iters=1) -> Codebook:
    """Refresh a codebook with ``iters`` k-means iterations on new keys (cheap, for fine-tuning)."""
    return Codebook(update_op(_codebook("codebook", codebook), x, iters))


def encode(x, codebook) -> torch.Tensor:
    """uint8 codes [B, L, H, M] of x [B, L, H, D]: each subspace's nearest centroid.

    On an H100 (x fp16/bf16/fp32, D / M in {2, 4, 8, 16, 32}, C <= 256) a native kernel computes
    the distances in float32 as sums of squared differences, one thread per key and subspace with
    the codebook in shared memory; the reference expands ||c||^2 - 2 x . c, so a key almost
    equidistant from two centroids may get either. Other configurations run the reference.
    """
    return encode_call(x, _codebook("codebook", codebook))


def topk(q, k_codes, codebook, k, *, causal=False, sorted=True) -> torch.Tensor:
    """int32 [B, Lq, H, k]: each query's k keys by PQ inner product, -1 where fewer are allowed.

    ``sorted`` (the default) lists them in descending score order; ``sorted=False`` lists the
    same keys in ascending index order, which skips the sort by score (what
    ``pq_sparse_attention`` uses: its attention does not depend on the order).

    On an H100 (q fp16/bf16/fp32, M in {4, 8, 16}, C <= 256, D <= 256, k up to a few thousand)
    native kernels select them, with no score matrix ever stored:

    - rows of at least 1024 keys (and 4x the selection buffer, k + 256 rounded up to a power of
      two; D <= 128): a tensor-core scan scores q against the decoded keys (q . concatenated
      centroids) tile by tile, twice: once in fp16 into a per-row histogram that fixes a threshold,
      once with fp16 hi/lo splits (about fp32 accuracy) to list the keys above it, a margin wide
      enough that the list provably holds the k best; a warp then sorts the list (or, unsorted,
      finds the k-th best by a bitwise search and reads the chosen keys back in index order from
      a bitmap). The order is by
      these scores, which can differ from the float32 lookup-table sums in the last bits, so keys
      whose scores tie to ~1e-6 relative may come in either order;
    - other rows, and rows whose list would not fit (heavy ties, a zero query): one warp per query
      builds its lookup table in shared memory and streams the head's codes, histogramming the
      scores to find the k-th largest (refined until its bin fits the selection buffer), then
      collects (in key order) and sorts the chosen keys.

    Equal scores are ordered by key index. ``ATTNX_PQ_SCAN=0`` turns the scan off. Other
    configurations run the reference.
    """
    return topk_call(q, k_codes, _codebook("codebook", codebook), k, bool(causal), sorted=bool(sorted))


def pq_sparse_attention(q, k, v, k_top, *, codebook=None, causal=False, scale=None, return_lse=False,
                        num_subspaces=8, num_centroids=256):
    """The SPT layer: PQ picks each query's ``k_top`` keys, exact sparse attention runs over them.

    q/k/v [B, L, H, D]. Without a codebook one is fitted on k (10 k-means iterations). The
    selection is not differentiable; the attention over the selected keys is.
    """
    centroids = None if codebook is None else _codebook("codebook", codebook)
    out, lse = torch.ops.attnx.pq_sparse_attention(q, k, v, k_top, centroids, bool(causal), scale, num_subspaces,
                                                   num_centroids)
    return (out, lse) if return_lse else out
