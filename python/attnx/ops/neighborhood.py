"""Neighborhood attention (1-D/2-D/3-D, dilation, stride, causal): op and public API."""
from __future__ import annotations

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


def neighborhood_attention(q, k, v, kernel_size, *, dilation=1, stride=1, is_causal=False, scale=None,
                           return_lse=False):
    """Neighborhood attention (NATTEN's semantics) over q/k/v [B, *spatial, H, D], 1 to 3 spatial axes.

    ``kernel_size``, ``dilation``, ``stride`` are ints or per-axis tuples, ``is_causal`` a bool or
    a per-axis tuple. Windows are centred and shifted (not clipped) at borders; dilation splits
    an axis into interleaved groups; stride makes groups of queries share one window (stride ==
    kernel_size is blocked attention). The exact definition is
    :func:`attnx.reference.neighborhood_attention`.
    """
    _, ks, dil, st, ca = ref.check_na(q, k, v, kernel_size, dilation, stride, is_causal)
    out, lse = na_op(q, k, v, list(ks), list(dil), list(st), list(ca), scale)
    return (out, lse) if return_lse else out


na1d, na2d, na3d = (ref.fixed_rank(neighborhood_attention, r) for r in (1, 2, 3))
