"""Generalized Neighborhood Attention (GNA): an exact, analytical speedup-bound simulator.

GNA (paper "Generalized Neighborhood Attention") runs neighborhood attention as a block-sparse
FMHA: tokens are permuted so that a multi-dimensional *tile* (a box of the token grid) becomes a
contiguous run, and for each query tile the kernel visits only the key/value tiles that hold at
least one key of one of its queries (attnx's fused NA kernel loads such tiles straight from
[B, *spatial, H, D] with multi-dimensional TMA boxes, so the permutation never happens in memory).
This module answers, without any kernel, how much a given configuration can gain:

* ``flop_speedup`` = L*L / (attended (query, key) pairs): what an ideal, element-sparse kernel
  could gain over dense attention.
* ``speedup_bound`` = dense KV tiles / visited KV tiles: what a block-sparse kernel that skips
  whole tiles (and pays full price for every visited one) can gain at best.
* ``perfectly_block_sparse``: every visited (Q tile, KV tile) pair is fully used (no masked
  element inside a visited tile), so the two numbers agree.

Semantics of the neighbourhood (NATTEN's; DESIGN.md, ``neighborhood_attention``), per spatial axis
of length n with kernel size k, dilation d, stride s and a causal flag: the axis splits into d
interleaved dilation groups (positions p with p % d == r, group length n_r, which differs between
groups when n % d != 0). In group coordinates i = p // d:

* non-causal: leader L = min((i // s) * s + s // 2, n_r - 1); the window is k keys starting at
  clamp(L - k // 2, 0, n_r - k) (centred on the leader: k // 2 keys before it, k - k // 2 - 1
  after it; shifted, not clipped, at the borders);
* causal: leader L = min((i // s) * s + s - 1, n_r - 1); keys j with max(0, L - k + 1) <= j <= i.

Group coordinate j is position r + j * d. A query's neighbourhood is the Cartesian product of its
per-axis key sets. Requires k * d <= n and s <= k per axis.

Tiles:

* a tuple with one entry per axis (*multi-dimensional* tile): the grid is cut into boxes of that
  shape, with partial boxes at the ends of an axis whose length the tile does not divide. Since
  neighbourhoods and tiles are both Cartesian products, every count factorises over the axes
  and is computed per axis (exact, O(sum of axis lengths)).
* an int (*flat* tile): the row-major token order is cut into runs of that many tokens (the last
  one partial). Computed exactly with vectorised numpy over row segments (runs of a tile that
  share all coordinates but the last), chunked so memory stays bounded.

Defaults: both tiles default to a multi-dimensional box of 128 tokens, ``DEFAULT_TILES[rank]``
= (128,), (16, 8) or (4, 4, 8), each entry clipped to its axis length. If only one of the tiles
is given as an int (flat), the other defaults to a flat tile of 128 tokens.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import numbers
import sys
from typing import Sequence

import numpy as np

__all__ = ["speedup_bound", "best_tiles", "main", "SUPPORTED_TILES", "DEFAULT_TILES"]

DEFAULT_TILES = {1: (128,), 2: (16, 8), 3: (4, 4, 8)}

# Intervals handled at once by the flat-tile path (each costs a few int64 temporaries).
_CHUNK_INTERVALS = 1 << 21


def _pow2_shapes(rank: int, tokens: int) -> list[tuple]:
    """All tile shapes of ``rank`` power-of-two dims whose product is ``tokens`` (a power of two)."""
    e = tokens.bit_length() - 1
    out = []
    for parts in itertools.product(range(e + 1), repeat=rank):
        if sum(parts) == e:
            out.append(tuple(1 << p for p in parts))
    # balanced boxes first (smallest sum of dims), then larger trailing dims
    return sorted(out, key=lambda t: (sum(t), max(t), tuple(-x for x in t[::-1])))


def _supported_tiles() -> dict:
    table = {}
    for rank in (1, 2, 3):
        qs = _pow2_shapes(rank, 128)
        kvs = _pow2_shapes(rank, 128) + _pow2_shapes(rank, 64)
        table[rank] = [(q, kv) for q in qs for kv in kvs]
    return table


# The multi-dimensional (Q tile, KV tile) shapes the GNA kernels are built for: every box of
# power-of-two dims with 128 query tokens, paired with every box of 128 or 64 KV tokens. (The
# token permutation makes any box shape a contiguous run, so the block-sparse FMHA underneath
# only sees 128 x 128 or 128 x 64 tiles.)
SUPPORTED_TILES: dict = _supported_tiles()


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _fail(arg: str, given, allowed: str):
    raise ValueError(f"attnx.gna: argument '{arg}': got {given}; allowed: {allowed}")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _spatial_arg(spatial) -> tuple:
    if _is_int(spatial):
        spatial = (spatial,)
    if not isinstance(spatial, (tuple, list)) or not 1 <= len(spatial) <= 3 or not all(_is_int(n) for n in spatial):
        _fail("spatial", repr(spatial), "a tuple of 1 to 3 positive ints (the axis lengths)")
    if any(n < 1 for n in spatial):
        _fail("spatial", repr(tuple(spatial)), "positive axis lengths")
    return tuple(int(n) for n in spatial)


def _per_axis(arg: str, value, rank: int, *, boolean=False, min_value=1) -> tuple:
    what = "a bool (or 0/1)" if boolean else f"an int >= {min_value}"
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            _fail(arg, f"{tuple(value)!r} ({len(value)} entries)", f"{what} or a tuple of {rank} such values, one per spatial axis")
        vals = tuple(value)
    else:
        vals = (value,) * rank
    out = []
    for x in vals:
        if boolean:
            if isinstance(x, (bool, np.bool_)) or (_is_int(x) and x in (0, 1)):
                out.append(bool(x))
                continue
            _fail(arg, repr(value), f"{what} or a tuple of {rank} of them")
        if not _is_int(x) or x < min_value:
            _fail(arg, repr(value), f"{what} or a tuple of {rank} of them")
        out.append(int(x))
    return tuple(out)


def _tile_arg(arg: str, value, rank: int):
    """None, a positive int (flat tile) or a tuple of ``rank`` positive ints (multi-dim tile)."""
    if value is None:
        return None
    if _is_int(value):
        if value < 1:
            _fail(arg, repr(value), "a positive int (flat tile) or a tuple of positive ints, one per axis")
        return int(value)
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            _fail(arg, f"{tuple(value)!r} ({len(value)} entries)",
                  f"an int (flat tile) or a tuple of {rank} positive ints, one per spatial axis")
        if not all(_is_int(x) and x >= 1 for x in value):
            _fail(arg, repr(tuple(value)), "positive ints")
        return tuple(int(x) for x in value)
    _fail(arg, repr(value), "None, a positive int (flat tile) or a tuple of positive ints, one per axis")


def default_tile(spatial: Sequence[int]) -> tuple:
    """The default multi-dim tile (128 tokens) for this rank, clipped to the axis lengths."""
    return tuple(min(t, n) for t, n in zip(DEFAULT_TILES[len(spatial)], spatial))


def _normalize(spatial, kernel_size, stride, dilation, is_causal, q_tile, kv_tile):
    spatial = _spatial_arg(spatial)
    rank = len(spatial)
    ks = _per_axis("kernel_size", kernel_size, rank)
    dil = _per_axis("dilation", dilation, rank)
    st = _per_axis("stride", stride, rank)
    causal = _per_axis("is_causal", is_causal, rank, boolean=True)
    for a in range(rank):
        if ks[a] * dil[a] > spatial[a]:
            _fail("kernel_size", f"{ks} with dilation {dil} on spatial {spatial}",
                  f"kernel_size * dilation <= the axis length on every axis (axis {a}: "
                  f"{ks[a]} * {dil[a]} > {spatial[a]})")
        if st[a] > ks[a]:
            _fail("stride", f"{st} with kernel_size {ks}", f"1 <= stride <= kernel_size on every axis (axis {a})")
    qt = _tile_arg("q_tile", q_tile, rank)
    kt = _tile_arg("kv_tile", kv_tile, rank)
    if qt is None and kt is None:
        qt = kt = default_tile(spatial)
    elif qt is None:
        qt = 128 if isinstance(kt, int) else default_tile(spatial)
    elif kt is None:
        kt = 128 if isinstance(qt, int) else default_tile(spatial)
    if isinstance(qt, int) != isinstance(kt, int):
        _fail("kv_tile", repr(kt), f"the same kind of tile as q_tile={qt!r} (both ints: flat tiles, or both "
              "tuples: multi-dim tiles; Q and KV share one token order)")
    return spatial, ks, st, dil, causal, qt, kt


# ----------------------------------------------------------------------------------------------
# one axis
# ----------------------------------------------------------------------------------------------
def _windows(i, r, n: int, k: int, d: int, s: int, causal: bool):
    """Window [start, end] (group coordinates) of the query with group coordinate i in group r."""
    i = np.asarray(i, dtype=np.int64)
    n_r = (n - r + d - 1) // d  # positions p < n with p % d == r
    if causal:
        leader = np.minimum((i // s) * s + s - 1, n_r - 1)
        start = np.maximum(leader - k + 1, 0)
        end = i
    else:
        leader = np.minimum((i // s) * s + s // 2, n_r - 1)
        start = np.clip(leader - k // 2, 0, n_r - k)
        end = start + k - 1
    return start, end


def axis_neighborhoods(n: int, k: int, d: int = 1, s: int = 1, causal: bool = False):
    """Per position p of one axis: (group r, first key group coord, last key group coord).

    The keys of p are r + j * d for first <= j <= last.
    """
    p = np.arange(n, dtype=np.int64)
    r = p % d
    start, end = _windows(p // d, r, n, k, d, s, causal)
    return r, start, end


def _range_union(a, b, n: int, k: int, d: int, s: int, causal: bool):
    """Union of the key sets of the queries a..b (inclusive, arrays) of one axis, per dilation group.

    Returns arrays [len(a), d]: group r, first and last group coordinate of the union in that
    group, and a validity mask (False where no query of [a, b] lies in group r). Within a group,
    windows are monotone in the query and consecutive ones overlap or touch, so the union of the
    windows of queries ia..ib is the single range [start(ia), end(ib)].
    """
    a = np.asarray(a, dtype=np.int64)[:, None]
    b = np.asarray(b, dtype=np.int64)[:, None]
    r = np.arange(d, dtype=np.int64)[None, :]
    ia = -((r - a) // d)  # ceil((a - r) / d)
    ia = np.maximum(ia, 0)
    ib = (b - r) // d
    valid = ia <= ib
    ia_s = np.where(valid, ia, 0)
    ib_s = np.where(valid, ib, 0)
    rr = np.broadcast_to(r, ia.shape)
    start, _ = _windows(ia_s, rr, n, k, d, s, causal)
    _, end = _windows(ib_s, rr, n, k, d, s, causal)
    return rr, start, end, valid


def _union_tiles(rows, lo, hi, nrows: int, ncols: int, col_sizes):
    """Per row: number of distinct columns covered by the intervals [lo, hi], and the sum of
    ``col_sizes`` over them. rows/lo/hi are int64 arrays of one length."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(nrows, np.int64), np.zeros(nrows, np.int64)
    off = rows * (ncols + 2)
    lo_o = lo + off
    order = np.argsort(lo_o, kind="stable")
    lo_o = lo_o[order]
    hi_o = hi[order] + off[order]
    rows_s = rows[order]
    run = np.maximum.accumulate(hi_o)
    prev = np.empty_like(run)
    prev[0] = -1
    prev[1:] = run[:-1]
    new_lo = np.maximum(lo_o, prev + 1)
    take = hi_o >= new_lo
    count = np.where(take, hi_o - new_lo + 1, 0)
    cum = np.concatenate([[0], np.cumsum(np.asarray(col_sizes, dtype=np.int64))])
    o_s = off[order]
    hi_c = np.where(take, hi_o - o_s + 1, 0)
    lo_c = np.where(take, new_lo - o_s, 0)
    weight = cum[hi_c] - cum[lo_c]
    starts = np.searchsorted(rows_s, np.arange(nrows), side="left")
    ends = np.searchsorted(rows_s, np.arange(nrows), side="right")
    c1 = np.concatenate([[0], np.cumsum(count)])
    c2 = np.concatenate([[0], np.cumsum(weight)])
    return c1[ends] - c1[starts], c2[ends] - c2[starts]


def _tile_sizes(n: int, t: int):
    num = -(-n // t)
    sizes = np.full(num, t, dtype=np.int64)
    sizes[-1] = n - (num - 1) * t
    return sizes


def _expand_pieces(r, start, end, valid, d: int, tile: int):
    """Key pieces [first, last] (axis positions) such that every tile between first // tile and
    last // tile (plus any row offset) holds a key: one piece per group when d <= tile (keys d
    apart cannot skip a whole tile), else one piece per key."""
    if d <= tile:
        return r + start * d, r + end * d, valid
    length = np.where(valid, end - start + 1, 0)
    m = max(1, int(length.max()) if length.size else 1)
    j = np.arange(m, dtype=np.int64)
    pos = (r + start * d)[..., None] + j * d
    ok = valid[..., None] & (j < length[..., None])
    shape = pos.shape[:-2] + (-1,)
    return pos.reshape(shape), pos.reshape(shape), ok.reshape(shape)


@functools.lru_cache(maxsize=4096)
def _axis_tile_stats(n: int, k: int, d: int, s: int, causal: bool, tq: int, tk: int):
    """(num q tiles, num kv tiles, visited (q, kv) tile pairs, sum over visited pairs of
    |q tile| * |kv tile|) for one axis with tiles of tq / tk positions."""
    nq, nk = -(-n // tq), -(-n // tk)
    t = np.arange(nq, dtype=np.int64)
    a = t * tq
    b = np.minimum(a + tq, n) - 1
    r, start, end, valid = _range_union(a, b, n, k, d, s, causal)
    first, last, ok = _expand_pieces(r, start, end, valid, d, tk)
    rows = np.broadcast_to(t[:, None], first.shape)
    lo, hi, rows = (first // tk)[ok], (last // tk)[ok], rows[ok]
    cnt, wsum = _union_tiles(rows, lo, hi, nq, nk, _tile_sizes(n, tk))
    qsz = _tile_sizes(n, tq)
    return nq, nk, int(cnt.sum()), int((qsz * wsum).sum())


@functools.lru_cache(maxsize=1024)
def _axis_attended(n: int, k: int, d: int, s: int, causal: bool) -> int:
    _, start, end = axis_neighborhoods(n, k, d, s, causal)
    return int((end - start + 1).sum())


# ----------------------------------------------------------------------------------------------
# flat tiles
# ----------------------------------------------------------------------------------------------
def _flat_stats(spatial, ks, st, dil, causal, Q: int, K: int):
    rank = len(spatial)
    L = math.prod(spatial)
    n_last = spatial[-1]
    nq, nk = -(-L // Q), -(-L // K)
    q_sizes = _tile_sizes(L, Q)
    k_sizes = _tile_sizes(L, K)

    # Row segments: the part of q tile t inside one row (fixed leading coordinates).
    t = np.arange(nq, dtype=np.int64)
    t0 = t * Q
    t1 = np.minimum(t0 + Q, L)
    row_a = t0 // n_last
    row_b = (t1 - 1) // n_last
    nseg = row_b - row_a + 1
    seg_t = np.repeat(t, nseg)
    seg_row = np.repeat(row_a, nseg) + (np.arange(int(nseg.sum()), dtype=np.int64) - np.repeat(np.cumsum(nseg) - nseg, nseg))
    seg_a = np.maximum(seg_t * Q, seg_row * n_last) - seg_row * n_last
    seg_b = np.minimum(np.minimum(seg_t * Q + Q, L), (seg_row + 1) * n_last) - 1 - seg_row * n_last

    # Key sets of the leading axes, padded to k entries: keys[p, e] (valid[p, e]).
    lead_keys = []
    for ax in range(rank - 1):
        r, start, end = axis_neighborhoods(spatial[ax], ks[ax], dil[ax], st[ax], causal[ax])
        e = np.arange(ks[ax], dtype=np.int64)
        j = start[:, None] + e
        lead_keys.append((r[:, None] + j * dil[ax], j <= end[:, None]))
    lead_coords = np.unravel_index(seg_row, spatial[:-1]) if rank > 1 else ()
    per_row_keys = math.prod(ks[:-1])

    # Last axis: the union over each segment's range, as pieces.
    n3, k3, d3, s3, c3 = spatial[-1], ks[-1], dil[-1], st[-1], causal[-1]
    pieces_per_seg = d3 if d3 <= K else d3 * k3 + max(1, Q // d3 + 1)
    step = max(1, _CHUNK_INTERVALS // max(1, per_row_keys * pieces_per_seg))
    visited = 0
    cells = 0
    S = seg_t.size
    # chunk boundaries on q-tile boundaries so each chunk's rows are complete
    bounds = [0]
    while bounds[-1] < S:
        e = min(S, bounds[-1] + step)
        if e < S:
            tt = seg_t[e]
            e2 = int(np.searchsorted(seg_t, tt, side="left"))
            e = e2 if e2 > bounds[-1] else int(np.searchsorted(seg_t, tt, side="right"))
        bounds.append(e)
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        sl = slice(c0, c1)
        r, start, end, valid = _range_union(seg_a[sl], seg_b[sl], n3, k3, d3, s3, c3)
        first, last, ok = _expand_pieces(r, start, end, valid, d3, K)  # [s, P]
        base = np.zeros((c1 - c0, 1), dtype=np.int64)
        bval = np.ones((c1 - c0, 1), dtype=bool)
        for ax in range(rank - 1):
            keys, kval = lead_keys[ax]
            pc = lead_coords[ax][sl]
            base = (base[:, :, None] * spatial[ax] + keys[pc][:, None, :]).reshape(c1 - c0, -1)
            bval = (bval[:, :, None] & kval[pc][:, None, :]).reshape(c1 - c0, -1)
        base = base * n_last
        lo = (base[:, :, None] + first[:, None, :]) // K
        hi = (base[:, :, None] + last[:, None, :]) // K
        m = bval[:, :, None] & ok[:, None, :]
        tq0 = int(seg_t[c0])
        rows = np.broadcast_to((seg_t[sl] - tq0)[:, None, None], lo.shape)[m]
        nrows = int(seg_t[c1 - 1]) - tq0 + 1
        cnt, wsum = _union_tiles(rows, lo[m], hi[m], nrows, nk, k_sizes)
        visited += int(cnt.sum())
        cells += int((q_sizes[tq0:tq0 + nrows] * wsum).sum())
    return nq, nk, visited, cells


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def speedup_bound(spatial, kernel_size, stride=1, dilation=1, is_causal=False, q_tile=None, kv_tile=None) -> dict:
    """Exact tile-level analysis of one GNA configuration (see the module docstring).

    spatial: 1 to 3 axis lengths. kernel_size, stride, dilation: an int or one per axis;
    is_causal: a bool or one per axis. q_tile / kv_tile: a tuple per axis (multi-dim tile), an int
    (flat tile over the row-major token order) or None (the default: ``default_tile(spatial)``).

    Returns a dict with (among others): ``tokens`` (L), ``num_q_tiles``, ``num_kv_tiles``,
    ``dense_kv_tiles`` (= num_q_tiles * num_kv_tiles), ``visited_kv_tiles`` (sum over Q tiles of
    the number of KV tiles that hold a key of one of its queries), ``attended_pairs`` (number of
    (query, key) pairs in the neighbourhoods), ``visited_pairs`` (sum over visited tile pairs of
    |Q tile| * |KV tile|: the elements a block-sparse kernel computes), ``tile_utilization``
    (attended / visited pairs), ``flop_speedup`` (L*L / attended), ``speedup_bound`` (dense /
    visited KV tiles) and ``perfectly_block_sparse`` (visited pairs == attended pairs).
    """
    spatial, ks, st, dil, causal, qt, kt = _normalize(spatial, kernel_size, stride, dilation, is_causal,
                                                       q_tile, kv_tile)
    L = math.prod(spatial)
    attended = math.prod(_axis_attended(n, k, d, s, c) for n, k, d, s, c in zip(spatial, ks, dil, st, causal))
    if isinstance(qt, tuple):
        kind = "multi-dim"
        per = [_axis_tile_stats(n, k, d, s, c, tq, tk)
               for n, k, d, s, c, tq, tk in zip(spatial, ks, dil, st, causal, qt, kt)]
        nq = math.prod(p[0] for p in per)
        nk = math.prod(p[1] for p in per)
        visited = math.prod(p[2] for p in per)
        cells = math.prod(p[3] for p in per)
        q_tokens, kv_tokens = math.prod(qt), math.prod(kt)
    else:
        kind = "flat"
        nq, nk, visited, cells = _flat_stats(spatial, ks, st, dil, causal, qt, kt)
        q_tokens, kv_tokens = qt, kt
    dense = nq * nk
    return {
        "spatial": spatial,
        "kernel_size": ks,
        "stride": st,
        "dilation": dil,
        "is_causal": causal,
        "tile_kind": kind,
        "q_tile": qt,
        "kv_tile": kt,
        "q_tile_tokens": q_tokens,
        "kv_tile_tokens": kv_tokens,
        "tokens": L,
        "num_q_tiles": nq,
        "num_kv_tiles": nk,
        "dense_kv_tiles": dense,
        "visited_kv_tiles": visited,
        "kv_tiles_per_q_tile": visited / nq,
        "dense_pairs": L * L,
        "attended_pairs": attended,
        "visited_pairs": cells,
        "tile_utilization": attended / cells,
        "flop_speedup": (L * L) / attended,
        "speedup_bound": dense / visited,
        "perfectly_block_sparse": cells == attended,
    }


@functools.lru_cache(maxsize=64)
def block_sparse_plan(spatial: tuple, kernel_size: tuple, stride: tuple, is_causal: tuple, tile: tuple):
    """The block-sparse form of a dilation-1 (G)NA configuration with one tile shape for Q and KV.

    Tokens are taken tile-major (tile t = tokens [t * T, (t + 1) * T) with T = prod(tile), tiles
    row-major over the tile grid; see :func:`to_tiles`). Per axis the keys of a tile's queries form
    one range, so the KV tiles a Q tile visits are a Cartesian product of per-axis tile ranges.
    Returns numpy (kv_block_index int32 [num_tiles, max_count], kv_block_count int32 [num_tiles]).
    Exact for attention only when the configuration is perfectly block-sparse for this tile
    (:func:`speedup_bound`); cached per configuration.
    """
    ranges = []
    for n, k, st, t, c in zip(spatial, kernel_size, stride, tile, is_causal):
        if n % t:
            _fail("tile", tile, f"dims dividing the spatial extent {spatial}")
        _, start, end = axis_neighborhoods(n, k, 1, st, c)
        ranges.append([range(int(start[i:i + t].min()) // t, int(end[i:i + t].max()) // t + 1) for i in range(0, n, t)])
    grid = [n // t for n, t in zip(spatial, tile)]
    rows = [[int(np.ravel_multi_index(kc, grid)) for kc in itertools.product(*[ranges[a][c] for a, c in enumerate(coords)])]
            for coords in itertools.product(*[range(g) for g in grid])]
    index = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int32)
    count = np.array([len(r) for r in rows], dtype=np.int32)
    for t, r in enumerate(rows):
        index[t, : len(r)] = r
    index.setflags(write=False)
    count.setflags(write=False)
    return index, count


def to_tiles(x, tile: Sequence[int]):
    """[B, *spatial, H, D] -> [B, tokens, H, D] in tile-major token order (a copy)."""
    b, spatial, rest = x.shape[0], x.shape[1:1 + len(tile)], x.shape[1 + len(tile):]
    split = [b]
    for n, t in zip(spatial, tile):
        split += [n // t, t]
    r = len(tile)
    order = [0] + [1 + 2 * a for a in range(r)] + [2 + 2 * a for a in range(r)] + [1 + 2 * r + i for i in range(len(rest))]
    return x.reshape(*split, *rest).permute(order).reshape(b, -1, *rest)


def from_tiles(x, spatial: Sequence[int], tile: Sequence[int]):
    """Inverse of :func:`to_tiles`: [B, tokens, ...] tile-major -> [B, *spatial, ...]."""
    b, rest, r = x.shape[0], x.shape[2:], len(tile)
    grid = [n // t for n, t in zip(spatial, tile)]
    y = x.reshape(b, *grid, *tile, *rest)
    order = [0] + [a for i in range(r) for a in (1 + i, 1 + r + i)] + [1 + 2 * r + i for i in range(len(rest))]
    return y.permute(order).reshape(b, *spatial, *rest)


def best_tiles(spatial, kernel_size, stride=1, dilation=1, is_causal=False, *, top=5) -> list:
    """The ``top`` (q_tile, kv_tile, result) among ``SUPPORTED_TILES[rank]`` by speedup_bound.

    Shapes with a dim larger than its axis are skipped. Sorted by speedup_bound (descending),
    then perfectly block-sparse first, then the larger KV tile, then table order.
    """
    spatial_n = _spatial_arg(spatial)
    if not _is_int(top) or top < 1:
        _fail("top", repr(top), "an int >= 1")
    # validate once (also gives errors for the parameters even if no tile fits)
    _normalize(spatial_n, kernel_size, stride, dilation, is_causal, None, None)
    rows = []
    for order, (qt, kt) in enumerate(SUPPORTED_TILES[len(spatial_n)]):
        if any(t > n for t, n in zip(qt, spatial_n)) or any(t > n for t, n in zip(kt, spatial_n)):
            continue
        res = speedup_bound(spatial_n, kernel_size, stride, dilation, is_causal, q_tile=qt, kv_tile=kt)
        rows.append(((-res["speedup_bound"], not res["perfectly_block_sparse"], -res["kv_tile_tokens"], order),
                     (qt, kt, res)))
    rows.sort(key=lambda x: x[0])
    return [r[1] for r in rows[:top]]


# ----------------------------------------------------------------------------------------------
# command line: python -m attnx gna-sim ...
# ----------------------------------------------------------------------------------------------
def _fmt_tile(t) -> str:
    return f"{t} (flat)" if isinstance(t, int) else "x".join(str(x) for x in t)


def _summary(res: dict) -> str:
    lines = [
        f"spatial {res['spatial']} ({res['tokens']} tokens), kernel_size {res['kernel_size']}, "
        f"stride {res['stride']}, dilation {res['dilation']}, is_causal {res['is_causal']}",
        f"tiles ({res['tile_kind']}): q {_fmt_tile(res['q_tile'])} = {res['q_tile_tokens']} tokens, "
        f"kv {_fmt_tile(res['kv_tile'])} = {res['kv_tile_tokens']} tokens",
        f"q tiles {res['num_q_tiles']}, kv tiles {res['num_kv_tiles']}: dense {res['dense_kv_tiles']} tile pairs, "
        f"visited {res['visited_kv_tiles']} ({res['kv_tiles_per_q_tile']:.2f} kv tiles per q tile)",
        f"attended pairs {res['attended_pairs']} of {res['dense_pairs']}; visited-tile elements "
        f"{res['visited_pairs']} (utilization {100 * res['tile_utilization']:.1f}%)",
        f"FLOP speedup {res['flop_speedup']:.3f}x, block-sparse speedup bound {res['speedup_bound']:.3f}x, "
        f"perfectly block-sparse: {'yes' if res['perfectly_block_sparse'] else 'no'}",
    ]
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def main(argv=None) -> int:
    """``attnx gna-sim``: print the analysis of one configuration (and with --best the best tiles)."""
    p = argparse.ArgumentParser(prog="attnx gna-sim", description="GNA speedup-bound simulator (exact, analytical)")
    p.add_argument("--spatial", type=int, nargs="+", required=True, help="axis lengths (1 to 3)")
    p.add_argument("--kernel-size", type=int, nargs="+", required=True, help="one value or one per axis")
    p.add_argument("--stride", type=int, nargs="+", default=[1])
    p.add_argument("--dilation", type=int, nargs="+", default=[1])
    p.add_argument("--causal", type=int, nargs="+", default=[0], help="0/1, one value or one per axis")
    p.add_argument("--q-tile", type=int, nargs="+", default=None,
                   help="one int per axis (multi-dim tile) or a single int (flat tile; in 1-D the same thing)")
    p.add_argument("--kv-tile", type=int, nargs="+", default=None)
    p.add_argument("--best", action="store_true", help="also rank the supported tile shapes")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    def one(v):
        return v[0] if len(v) == 1 else tuple(v)

    def tile(v):
        if v is None:
            return None
        if len(v) == 1 and len(args.spatial) > 1:
            return v[0]  # flat
        return tuple(v)

    try:
        causal = one([bool(c) if c in (0, 1) else c for c in args.causal])
        res = speedup_bound(tuple(args.spatial), one(args.kernel_size), one(args.stride), one(args.dilation),
                            causal, q_tile=tile(args.q_tile), kv_tile=tile(args.kv_tile))
        best = best_tiles(tuple(args.spatial), one(args.kernel_size), one(args.stride), one(args.dilation),
                          causal, top=args.top) if args.best else None
    except ValueError as e:
        print(f"attnx gna-sim: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = {"result": res}
        if best is not None:
            out["best"] = [{"q_tile": q, "kv_tile": k, "result": r} for q, k, r in best]
        print(json.dumps(_jsonable(out), indent=2))
        return 0
    print(_summary(res))
    if best is not None:
        print()
        if not best:
            print("no supported tile shape fits these axis lengths")
        else:
            hdr = f"{'rank':>4}  {'q tile':>10}  {'kv tile':>10}  {'bound':>8}  {'flop':>8}  {'util':>6}  perfect"
            print(f"best tiles among SUPPORTED_TILES[{len(args.spatial)}]:")
            print(hdr)
            for i, (q, k, r) in enumerate(best, 1):
                print(f"{i:>4}  {_fmt_tile(q):>10}  {_fmt_tile(k):>10}  {r['speedup_bound']:>7.3f}x  "
                      f"{r['flop_speedup']:>7.3f}x  {100 * r['tile_utilization']:>5.1f}%  "
                      f"{'yes' if r['perfectly_block_sparse'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
