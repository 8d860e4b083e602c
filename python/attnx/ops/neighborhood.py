"""Neighborhood attention (1-D/2-D/3-D, dilation, stride, causal): op and public API."""
from __future__ import annotations

import torch

from .. import _native
from ..reference import neighborhood as ref
from ._registry import define_attention_like


def _geom(q, ks, dil, st, ca):
    return ref.normalize_na_args(q, list(ks), list(dil), list(st), [bool(c) for c in ca])


na_op, na_backward_op = define_attention_like(
    "neighborhood_attention", "int[] kernel_size, int[] dilation, int[] stride, bool[] is_causal, float? scale=None",
    lambda q, k, v, ks, dil, st, ca, scale: ref.na_fwd(q, k, v, _geom(q, ks, dil, st, ca), scale),
    lambda dout, dlse, q, k, v, out, lse, ks, dil, st, ca, scale: ref.na_bwd(
        dout, dlse, q, k, v, _geom(q, ks, dil, st, ca), scale),
    family="neighborhood")


def _tma_layout(x):
    """x itself when the native kernel can read it in place (batch stride = axis-0 extent x axis-0
    stride, true of contiguous tensors and of slices of one qkv tensor), else a contiguous copy."""
    if x.shape[0] > 1 and x.shape[1] > 1 and x.stride(0) != x.shape[1] * x.stride(1):
        return x.contiguous()
    return x if _native.aligned_16b(x) else x.contiguous()


def neighborhood_attention(q, k, v, kernel_size, *, dilation=1, stride=1, is_causal=False, scale=None,
                           return_lse=False):
    """Neighborhood attention (NATTEN's semantics) over q/k/v [B, *spatial, H, D], 1 to 3 spatial axes.

    ``kernel_size``, ``dilation``, ``stride`` are ints or per-axis tuples, ``is_causal`` a bool or
    a per-axis tuple. Windows are centred and shifted (not clipped) at borders; dilation splits
    an axis into interleaved groups; stride makes groups of queries share one window (stride ==
    kernel_size is blocked attention). The exact definition is
    :func:`attnx.reference.neighborhood_attention`.

    On an H100 (fp16/bf16, head dims 32/64/128, dilation 1) forward and backward are fused
    kernels. Forward: each CTA owns a multi-dimensional tile of 128 queries, loads only the KV
    tiles meeting its neighbourhoods (5-D TMA boxes straight from [B, *spatial, H, D], no
    permutation in memory) and masks inside partly visible tiles. Backward: each CTA owns a
    tile of 128 keys and walks the 64-query tiles that see them (dK, dV in registers, dQ
    accumulated in float32). Tile shapes are the ones that visit the fewest tile pairs. Dilated
    axes and other dtypes run the reference.
    """
    geom = ref.check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    _, ks, dil, st, ca = geom
    if _native.use_reference("neighborhood_attention", q, k, v, dilation=dil):
        out, lse = ref._NARef.apply(q, k, v, geom, scale)
    else:
        if q.is_cuda:
            q, k, v = _tma_layout(q), _tma_layout(k), _tma_layout(v)
        out, lse = na_op(q, k, v, list(ks), list(dil), list(st), list(ca), scale)
    return (out, lse) if return_lse else out


na1d, na2d, na3d = (ref.fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
