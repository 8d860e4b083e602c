"""Reference neighborhood attention (NATTEN's semantics), 1-D to 3-D, with dilation, stride, causal.

Per spatial axis of length n, with kernel size k, dilation d, stride s, causal flag c:
  * the axis splits into d interleaved dilation groups (positions p with p % d == r); NA runs
    inside each group on group coordinates i = p // d, over the group's length n_r;
  * non-causal: the query's window is that of its stride-group leader
    L = min(floor(i / s) * s + floor(s / 2), n_r - 1): k keys starting at
    clamp(L - floor(k / 2), 0, n_r - k), i.e. centred (an even k has k/2 keys before the centre
    and k/2 - 1 after) and *shifted, not clipped*, at the borders: every query sees k keys;
  * causal: the leader is L = min(floor(i / s) * s + s - 1, n_r - 1) and the query sees the keys
    j with L - k < j <= i (so fewer than k near the start, or for non-leaders of a stride group);
  * s = 1 is the sliding window, s = k blocked attention.
A query's neighbourhood is the Cartesian product of its per-axis key sets; attention is a
softmax over exactly those keys. Requires k * d <= n and 1 <= s <= k on every axis.
"""
from __future__ import annotations

import functools
import math

import torch

from .. import _validate as V
from ._core import default_scale, gathered_attention, gathered_attention_backward


@functools.lru_cache(maxsize=64)
def _axis_neighbors_cpu(n: int, k: int, d: int, s: int, causal: bool) -> torch.Tensor:
    p = torch.arange(n)
    r, i = p % d, p // d
    n_r = (n - r + d - 1) // d  # length of p's dilation group
    t = torch.arange(k)
    if causal:
        lead = torch.minimum((i // s) * s + s - 1, n_r - 1)
        j = (lead - k + 1)[:, None] + t  # keys lead - k < j <= i
        valid = (j >= 0) & (j <= i[:, None])
    else:
        lead = torch.minimum((i // s) * s + s // 2, n_r - 1)
        start = torch.clamp(lead - k // 2, min=0)
        start = torch.minimum(start, n_r - k)  # shifted, not clipped, at the end of the group
        j = start[:, None] + t
        valid = torch.ones_like(j, dtype=torch.bool)
    return torch.where(valid, r[:, None] + j * d, torch.full_like(j, -1))


def axis_neighbors(n: int, k: int, d: int = 1, s: int = 1, causal: bool = False, device=None) -> torch.Tensor:
    """[n, k] int64: for each position on the axis, its key positions (-1 = empty slot)."""
    out = _axis_neighbors_cpu(int(n), int(k), int(d), int(s), bool(causal))
    return out.to(device) if device is not None else out.clone()


def normalize_na_args(q, kernel_size, dilation, stride, is_causal):
    """Validate NA arguments for q [B, *spatial, H, D]; return per-axis tuples."""
    rank = q.dim() - 3
    if rank not in (1, 2, 3):
        V.fail("q", f"a tensor of rank {q.dim()} (shape {tuple(q.shape)})", "[B, *spatial, H, D] with 1 to 3 spatial axes")
    spatial = tuple(q.shape[1:-2])
    ks = V.per_axis("kernel_size", kernel_size, rank)
    dil = V.per_axis("dilation", dilation, rank)
    st = V.per_axis("stride", stride, rank)
    ca = V.per_axis("is_causal", is_causal, rank, kind=bool)
    for a in range(rank):
        if dil[a] < 1:
            V.fail("dilation", dil, "ints >= 1")
        if ks[a] < 1 or ks[a] * dil[a] > spatial[a]:
            V.fail("kernel_size", ks, f"1 <= kernel_size * dilation <= the axis length on every axis (spatial {spatial}, dilation {dil})")
        if st[a] < 1 or st[a] > ks[a]:
            V.fail("stride", st, f"1 <= stride <= kernel_size on every axis (kernel_size {ks})")
    return spatial, ks, dil, st, ca


def na_indices(spatial, ks, dil, st, ca, rows: slice, device) -> torch.Tensor:
    """[c, K] flat key indices (row-major over spatial) of the flat queries ``rows``, -1 = none."""
    q_flat = torch.arange(rows.start, rows.stop, device=device)
    coords = torch.unravel_index(q_flat, spatial) if len(spatial) > 1 else (q_flat,)
    strides = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]
    flat = torch.zeros((q_flat.numel(), 1), dtype=torch.int64, device=device)
    valid = torch.ones_like(flat, dtype=torch.bool)
    for a, n in enumerate(spatial):
        tab = axis_neighbors(n, ks[a], dil[a], st[a], ca[a], device=device)[coords[a]]  # [c, k_a]
        flat = (flat[:, :, None] + tab[:, None, :] * strides[a]).flatten(1)
        valid = (valid[:, :, None] & (tab[:, None, :] >= 0)).flatten(1)
    return torch.where(valid, flat, torch.full_like(flat, -1))


def _flat(x):
    return x.reshape(x.shape[0], -1, *x.shape[-2:])


def _idx_of(geom, device):
    spatial, ks, dil, st, ca = geom
    return lambda sl: na_indices(spatial, ks, dil, st, ca, sl, device)[None, :, None, :]


def na_fwd(q, k, v, geom, scale):
    out, lse = gathered_attention(_flat(q), _flat(k), _flat(v), _idx_of(geom, q.device), math.prod(geom[1]),
                                  default_scale(scale, q.shape[-1]))
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])


def na_bwd(dout, dlse, q, k, v, geom, scale):
    dq, dk, dv = gathered_attention_backward(
        _flat(dout), None if dlse is None else dlse.reshape(dlse.shape[0], -1, dlse.shape[-1]), _flat(q), _flat(k),
        _flat(v), _idx_of(geom, q.device), math.prod(geom[1]), default_scale(scale, q.shape[-1]))
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def check_na(q, k, v, kernel_size, dilation, stride, is_causal):
    V.qkv(q, k, v)
    if q.dim() < 4:
        V.fail("q", f"a tensor of rank {q.dim()} (shape {tuple(q.shape)})", "[B, *spatial, H, D] with 1 to 3 spatial axes")
    if q.shape[:-2] != k.shape[:-2]:
        V.fail("k", f"shape {tuple(k.shape)}", f"the batch and spatial shape of 'q' {tuple(q.shape[:-2])}")
    return normalize_na_args(q, kernel_size, dilation, stride, is_causal)


class _NARef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, geom, scale):
        out, lse = na_fwd(q, k, v, geom, scale)
        ctx.save_for_backward(q, k, v)
        ctx.args = (geom, scale)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v = ctx.saved_tensors
        return (*na_bwd(dout, dlse, q, k, v, *ctx.args), None, None)


def neighborhood_attention(q, k, v, kernel_size, *, dilation=1, stride=1, is_causal=False, scale=None,
                           return_lse=False):
    """Neighborhood attention over q/k/v [B, *spatial, H, D] (1 to 3 spatial axes).

    Every parameter is an int or a per-axis tuple (is_causal: bools). See the module docstring
    for the exact definition. Returns out [B, *spatial, H, Dv] (and lse [B, *spatial, H]).
    """
    geom = check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    out, lse = _NARef.apply(q, k, v, geom, scale)
    return (out, lse) if return_lse else out


def fixed_rank(fn, rank: int):
    """``fn`` (a neighborhood_attention) restricted to ``rank`` spatial axes: na1d, na2d, na3d."""
    def f(q, k, v, kernel_size, *, dilation=1, stride=1, is_causal=False, scale=None, return_lse=False):
        if q.dim() != rank + 3:
            V.fail("q", f"a tensor of rank {q.dim()} (shape {tuple(q.shape)})", f"rank {rank + 3}: [B, {'X, ' * rank}H, D]")
        return fn(q, k, v, kernel_size, dilation=dilation, stride=stride, is_causal=is_causal, scale=scale,
                  return_lse=return_lse)
    f.__name__ = f.__qualname__ = f"na{rank}d"
    f.__doc__ = f"{rank}-D neighborhood attention: neighborhood_attention with q [B, {'X, ' * rank}H, D]."
    return f


na1d, na2d, na3d = (fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
