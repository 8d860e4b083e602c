"""Neighborhood attention (1-D/2-D/3-D, dilation, stride, causal): op and public API."""
from __future__ import annotations

import functools
import itertools
import math

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


class DilationSplit:
    """Dilated NA as plain NA over batches of dilation groups.

    On an axis of length n with dilation d, group r (positions p with p % d == r) holds
    n // d + 1 positions when r < n % d and n // d otherwise, and dilated NA is plain NA inside
    each group on group coordinates p // d. Groups of equal length on every axis form one
    *class*: up to two per dilated axis, so at most 2^rank classes. ``gather`` lays a class out
    as [B * groups, *lengths, ...] (one index_select, a copy), where the fused kernels run with
    dilation 1; ``scatter`` puts the classes' results back in place (one concatenation and one
    index_select). Both are differentiable, so autograd copies the gradients back too.
    """

    def __init__(self, spatial, dilation, device):
        per_axis = []  # per axis: [(positions [groups, length] on the axis)], one entry per class
        for n, d in zip(spatial, dilation):
            base, extra = divmod(n, d)
            lengths = ([(torch.arange(0, extra), base + 1)] if extra else []) + [(torch.arange(extra, d), base)]
            per_axis.append([groups[:, None] + torch.arange(length)[None, :] * d for groups, length in lengths])
        row_stride = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]
        self.classes = []  # (flat token index [groups..., lengths...] flattened, number of groups, lengths)
        for combo in itertools.product(*per_axis):
            rank = len(combo)
            flat = torch.zeros((1,) * (2 * rank), dtype=torch.int64)
            for a, pos in enumerate(combo):  # axis a's group at dim a, its position at dim rank + a
                shape = [1] * (2 * rank)
                shape[a], shape[rank + a] = pos.shape
                flat = flat + (pos * row_stride[a]).view(shape)
            self.classes.append((flat.flatten().to(device), math.prod(p.shape[0] for p in combo),
                                 tuple(p.shape[1] for p in combo)))
        order = torch.cat([c[0] for c in self.classes])
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(order.numel(), device=order.device)
        self.rank = len(spatial)

    @staticmethod
    @functools.lru_cache(maxsize=32)
    def of(spatial, dilation, device) -> "DilationSplit":
        """The split of these axes, built once (its index tensors live on the device)."""
        return DilationSplit(spatial, dilation, device)

    def gather(self, x):
        """[B, *spatial, *rest] -> one [B * groups, *lengths, *rest] tensor per class."""
        b, rest = x.shape[0], x.shape[1 + self.rank:]
        flat = x.reshape(b, -1, *rest)
        return [flat.index_select(1, idx).reshape(b * groups, *lengths, *rest) for idx, groups, lengths in self.classes]

    def scatter(self, ys, batch, spatial):
        """The inverse of gather: per-class [B * groups, *lengths, *rest] -> [B, *spatial, *rest]."""
        rest = ys[0].shape[1 + self.rank:]
        y = torch.cat([y.reshape(batch, -1, *rest) for y in ys], dim=1)
        return y.index_select(1, self.inverse).reshape(batch, *spatial, *rest)


def dilation_in_batch(q, k, v, dilation) -> bool:
    """Whether neighborhood_attention runs this dilated CUDA call on the native kernels, with the
    dilation groups moved into the batch (DilationSplit)."""
    return any(d > 1 for d in dilation) and _native.covers("neighborhood_attention", q, k, v,
                                                          dilation=(1,) * len(dilation))


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
    runs on the same kernels: the dilation groups move into the batch, where they are plain
    neighbourhoods (DilationSplit: one copy of q, k, v and of the outputs; autograd copies the
    gradients back). When an axis is not a multiple of its dilation its groups come in two
    lengths, and each combination of lengths over the axes is one kernel call (at most 2^rank).
    Other dtypes and head dims run the reference.
    """
    geom = ref.check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    spatial, ks, dil, st, ca = geom
    if dilation_in_batch(q, k, v, dil):
        split = DilationSplit.of(tuple(spatial), tuple(dil), q.device)
        parts = [na_op(qg, kg, vg, list(ks), [1] * len(dil), list(st), list(ca), scale)
                 for qg, kg, vg in zip(split.gather(q), split.gather(k), split.gather(v))]
        out, lse = (split.scatter(list(ys), q.shape[0], spatial) for ys in zip(*parts))
        return (out, lse) if return_lse else out
    if _native.use_reference("neighborhood_attention", q, k, v, dilation=dil):
        out, lse = ref._NARef.apply(q, k, v, geom, scale)
    else:
        if q.is_cuda:
            q, k, v = _tma_layout(q), _tma_layout(k), _tma_layout(v)
        out, lse = na_op(q, k, v, list(ks), list(dil), list(st), list(ca), scale)
    return (out, lse) if return_lse else out


na1d, na2d, na3d = (ref.fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
