"""Neighborhood attention (1-D/2-D/3-D, dilation, stride, causal): op and public API."""
from __future__ import annotations

import functools

import torch

from .. import _native, gna
from ..reference import neighborhood as ref
from ._registry import define_attention_like
from .block_sparse import block_sparse_attention


def _geom(q, ks, dil, st, ca):
    return ref.normalize_na_args(q, list(ks), list(dil), list(st), [bool(c) for c in ca])


na_op, na_backward_op = define_attention_like(
    "neighborhood_attention", "int[] kernel_size, int[] dilation, int[] stride, bool[] is_causal, float? scale=None",
    lambda q, k, v, ks, dil, st, ca, scale: ref.na_fwd(q, k, v, _geom(q, ks, dil, st, ca), scale),
    lambda dout, dlse, q, k, v, out, lse, ks, dil, st, ca, scale: ref.na_bwd(
        dout, dlse, q, k, v, _geom(q, ks, dil, st, ca), scale),
    family="neighborhood")


@functools.lru_cache(maxsize=256)
def _block_sparse_tile(spatial: tuple, ks: tuple, st: tuple, ca: tuple, tokens: int):
    """The tile of ``tokens`` tokens (power-of-two dims dividing the axes) under which this dilation-1
    configuration is perfectly block-sparse with the largest speedup bound, or None."""
    best = None
    for tile in gna._pow2_shapes(len(spatial), tokens):
        if any(n % t for n, t in zip(spatial, tile)):
            continue
        res = gna.speedup_bound(spatial, ks, st, 1, ca, q_tile=tile, kv_tile=tile)
        if res["perfectly_block_sparse"] and (best is None or res["speedup_bound"] > best[0]):
            best = (res["speedup_bound"], tile)
    return None if best is None else best[1]


_plans: dict = {}  # (config, tile, device) -> (kv_block_index, kv_block_count) on the device


def _as_block_sparse(q, k, v, ks, dil, st, ca, scale):
    """Strided NA as the native block-sparse forward when that is exact: dilation 1 and a tile of
    the kernel's size under which every visited (Q tile, KV tile) pair is fully attended (blocked
    attention, strides matching the tile). Tokens are permuted tile-major around the call.
    Returns (out, lse), or None when the configuration does not qualify."""
    d = q.shape[-1]
    qb, kb = _native.block_sparse_tiles(d)
    if (not q.is_cuda or any(x != 1 for x in dil) or qb != kb or k.shape[1:-2] != q.shape[1:-2]
            or not _native.covers("block_sparse_attention", q, k, v, tiles=(qb, kb))):
        return None
    spatial = tuple(q.shape[1:-2])
    tile = _block_sparse_tile(spatial, tuple(ks), tuple(st), tuple(ca), qb)
    if tile is None:
        return None
    key = (spatial, tuple(ks), tuple(st), tuple(ca), tile, q.device)
    if key not in _plans:
        index, count = gna.block_sparse_plan(spatial, tuple(ks), tuple(st), tuple(ca), tile)
        _plans[key] = (torch.from_numpy(index.copy()).to(q.device)[None, None],
                       torch.from_numpy(count.copy()).to(q.device)[None, None])
    index, count = _plans[key]
    out, lse = block_sparse_attention(*(gna.to_tiles(x, tile) for x in (q, k, v)), index, count, q_block=qb,
                                      kv_block=kb, scale=scale, return_lse=True)
    return gna.from_tiles(out, spatial, tile), gna.from_tiles(lse, spatial, tile)


def neighborhood_attention(q, k, v, kernel_size, *, dilation=1, stride=1, is_causal=False, scale=None,
                           return_lse=False):
    """Neighborhood attention (NATTEN's semantics) over q/k/v [B, *spatial, H, D], 1 to 3 spatial axes.

    ``kernel_size``, ``dilation``, ``stride`` are ints or per-axis tuples, ``is_causal`` a bool or
    a per-axis tuple. Windows are centred and shifted (not clipped) at borders; dilation splits
    an axis into interleaved groups; stride makes groups of queries share one window (stride ==
    kernel_size is blocked attention). The exact definition is
    :func:`attnx.reference.neighborhood_attention`.

    On an H100, configurations that are perfectly block-sparse under a tile of the block-sparse
    kernel's size (dilation 1; e.g. blocked attention, or strides matching a tile) run as the
    native block-sparse forward over tile-major permuted tokens (backward: reference); the rest
    run the reference.
    """
    _, ks, dil, st, ca = ref.check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    if not torch.compiler.is_compiling():
        routed = _as_block_sparse(q, k, v, ks, dil, st, ca, scale)
        if routed is not None:
            return routed if return_lse else routed[0]
    out, lse = na_op(q, k, v, list(ks), list(dil), list(st), list(ca), scale)
    return (out, lse) if return_lse else out


na1d, na2d, na3d = (ref.fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
