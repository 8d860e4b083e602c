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


def groups_to_batch(x, dilation):
    """[B, *spatial, *rest] -> [B * prod(dilation), *(n // d), *rest]: dilation group r of an axis
    (positions p with p % d == r) becomes a batch entry whose axis holds positions p // d, so
    dilated NA is plain NA on the result. Needs every n % d == 0; copies (reshape of a permute)."""
    rank = len(dilation)
    b, spatial, rest = x.shape[0], x.shape[1:1 + rank], x.shape[1 + rank:]
    split = [b] + [m for n, d in zip(spatial, dilation) for m in (n // d, d)]
    x = x.reshape(*split, *rest)
    perm = [0] + [2 + 2 * a for a in range(rank)] + [1 + 2 * a for a in range(rank)]
    perm += list(range(1 + 2 * rank, x.dim()))
    return x.permute(perm).reshape(-1, *(n // d for n, d in zip(spatial, dilation)), *rest)


def batch_to_groups(y, batch, spatial, dilation):
    """The inverse of groups_to_batch."""
    rank = len(dilation)
    rest = y.shape[1 + rank:]
    y = y.reshape(batch, *dilation, *(n // d for n, d in zip(spatial, dilation)), *rest)
    perm = [0] + [i for a in range(rank) for i in (1 + rank + a, 1 + a)] + list(range(1 + 2 * rank, y.dim()))
    return y.permute(perm).reshape(batch, *spatial, *rest)


def dilation_in_batch(q, k, v, spatial, dilation) -> bool:
    """Whether neighborhood_attention runs this dilated CUDA call on the native kernels, with the
    dilation groups moved into the batch (every dilated axis a multiple of its dilation)."""
    return (any(d > 1 for d in dilation) and all(n % d == 0 for n, d in zip(spatial, dilation))
            and _native.covers("neighborhood_attention", q, k, v, dilation=(1,) * len(dilation)))


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
    accumulated in float32). Tile shapes are the ones that visit the fewest tile pairs. Dilation
    runs on the same kernels when every dilated axis is a multiple of its dilation: the dilation
    groups move into the batch (one copy of q, k, v and of the outputs; autograd copies the
    gradients back), where they are plain neighbourhoods. Other dilated problems and other
    dtypes run the reference.
    """
    geom = ref.check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    spatial, ks, dil, st, ca = geom
    if dilation_in_batch(q, k, v, spatial, dil):
        qg, kg, vg = (groups_to_batch(x, dil) for x in (q, k, v))
        out, lse = na_op(qg, kg, vg, list(ks), [1] * len(dil), list(st), list(ca), scale)
        out, lse = (batch_to_groups(x, q.shape[0], spatial, dil) for x in (out, lse))
        return (out, lse) if return_lse else out
    if _native.use_reference("neighborhood_attention", q, k, v, dilation=dil):
        out, lse = ref._NARef.apply(q, k, v, geom, scale)
    else:
        if q.is_cuda:
            q, k, v = _tma_layout(q), _tma_layout(k), _tma_layout(v)
        out, lse = na_op(q, k, v, list(ks), list(dil), list(st), list(ca), scale)
    return (out, lse) if return_lse else out


na1d, na2d, na3d = (ref.fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
