"""Modules with the usual qkv / output projections around the attnx ops.

Layouts are tokens-then-channels, as in NATTEN's modules: x [B, *spatial, C] for neighborhood
attention, packed x [T, C] with cu_seqlens for varlen attention, x [B, L, C] for PQ-sparse.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _validate as V


class _QKVProjection(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            V.fail("dim", dim, f"a multiple of num_heads ({num_heads})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        return q, k, v


class _NeighborhoodAttention(_QKVProjection):
    rank = 0

    def __init__(self, dim, num_heads, kernel_size, dilation=1, stride=1, is_causal=False, qkv_bias=True,
                 proj_bias=True):
        super().__init__(dim, num_heads, qkv_bias, proj_bias)
        self.kernel_size = V.per_axis("kernel_size", kernel_size, self.rank)
        self.dilation = V.per_axis("dilation", dilation, self.rank)
        self.stride = V.per_axis("stride", stride, self.rank)
        self.is_causal = V.per_axis("is_causal", is_causal, self.rank, kind=bool)

    def forward(self, x):
        """x [B, *spatial, C] -> [B, *spatial, C]."""
        from ..ops.neighborhood import neighborhood_attention
        if x.dim() != self.rank + 2:
            V.fail("x", f"shape {tuple(x.shape)}", f"[B, {'X, ' * self.rank}C]")
        q, k, v = self._qkv(x)
        o = neighborhood_attention(q, k, v, self.kernel_size, dilation=self.dilation, stride=self.stride,
                                   is_causal=self.is_causal)
        return self.proj(o.flatten(-2))

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, stride={self.stride}, is_causal={self.is_causal}")


class NeighborhoodAttention1D(_NeighborhoodAttention):
    rank = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    rank = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    rank = 3


class VarlenSelfAttention(_QKVProjection):
    """Self-attention over packed sequences: x [T, C] with cu_seqlens int32 [B + 1]."""

    def __init__(self, dim, num_heads, causal=False, window=(-1, -1), qkv_bias=True, proj_bias=True):
        super().__init__(dim, num_heads, qkv_bias, proj_bias)
        self.causal, self.window = causal, tuple(window)

    def forward(self, x, cu_seqlens, max_seqlen):
        from ..ops.attention import varlen_attention
        q, k, v = self._qkv(x)
        o = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=self.causal,
                             window=self.window)
        return self.proj(o.flatten(-2))


class PQSparseSelfAttention(_QKVProjection):
    """SPT self-attention: each query attends to its top-k keys found by product quantization.

    The codebook is fitted on the first training call and refreshed every ``refresh_every``
    training steps with a few incremental k-means iterations (attnx.pq.update).
    """

    def __init__(self, dim, num_heads, k_top, causal=False, num_subspaces=8, num_centroids=256,
                 refresh_every=100, qkv_bias=True, proj_bias=True):
        super().__init__(dim, num_heads, qkv_bias, proj_bias)
        self.k_top, self.causal = k_top, causal
        self.num_subspaces, self.num_centroids, self.refresh_every = num_subspaces, num_centroids, refresh_every
        self.register_buffer("centroids", None)
        self.steps = 0

    def forward(self, x):
        from .. import pq
        q, k, v = self._qkv(x)
        k_top = min(self.k_top, x.shape[1])
        if self.centroids is None:
            self.centroids = pq.fit(k.detach(), self.num_subspaces, self.num_centroids).centroids
        elif self.training and self.refresh_every and self.steps % self.refresh_every == 0:
            self.centroids = pq.update(pq.Codebook(self.centroids), k.detach()).centroids
        if self.training:
            self.steps += 1
        o = pq.pq_sparse_attention(q, k, v, k_top, codebook=pq.Codebook(self.centroids), causal=self.causal)
        return self.proj(o.flatten(-2))


class MLADecoder(nn.Module):
    """One DeepSeek-style MLA attention layer decoding with absorbed weights over a paged latent cache.

    Weights (per head h): W_UK [H, d_nope, kv_lora], W_UV [H, kv_lora, d_v]. A query q_nope [B, s, H,
    d_nope] is absorbed into the latent space (q_nope @ W_UK), concatenated with its rope part
    [B, s, H, d_rope], attends over the 576-wide latent cache (values: its first kv_lora columns),
    and the latent output is mapped back with W_UV. The scale is that of the un-absorbed layer,
    (d_nope + d_rope) ** -0.5.
    """

    def __init__(self, num_heads=128, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128):
        super().__init__()
        self.num_heads, self.kv_lora_rank = num_heads, kv_lora_rank
        self.d_nope, self.d_rope, self.d_v = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.w_uk = nn.Parameter(torch.randn(num_heads, qk_nope_head_dim, kv_lora_rank) * kv_lora_rank ** -0.5)
        self.w_uv = nn.Parameter(torch.randn(num_heads, kv_lora_rank, v_head_dim) * kv_lora_rank ** -0.5)

    def forward(self, q_nope, q_rope, kv_cache, block_table, cache_seqlens, *, causal=True, metadata=None):
        from ..ops.mla import mla_decode
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope, self.w_uk.to(q_nope.dtype))
        q = torch.cat([q_latent, q_rope], dim=-1)
        out, _ = mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v=self.kv_lora_rank,
                            scale=(self.d_nope + self.d_rope) ** -0.5, causal=causal, metadata=metadata)
        return torch.einsum("bshc,hcv->bshv", out, self.w_uv.to(out.dtype))
