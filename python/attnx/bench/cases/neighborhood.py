"""neighborhood and neighborhood_bwd: fused NA against flex attention's NA mask."""
from __future__ import annotations

import dataclasses
import math

import torch

import attnx
from attnx.ops.neighborhood import dilation_in_batch

from .. import peers as P
from ..common import Case, Ctx, Impl, attention_flops, gathered_ref_seconds, last_batch_heads, randn
from ._helpers import BWD_FLOP_FACTOR, _attnx_impl, _bwd_native, _check_heads, _fmt_axes, _na_host_per_chunk, _tup

NA = {  # (spatial, kernel_size), B, H, D
    "full": ([((128, 128), (31, 31)), ((16, 64, 64), (8, 16, 16)), ((32768,), (2049,)),
              ((128, 128), (13, 13)), ((32768,), (129,))], 1, 16, 128),  # the last two: short walks
    "quick": ([((64, 64), (15, 15)), ((8, 16, 16), (4, 8, 8)), ((2048,), (129,))], 1, 16, 128),
    "cpu": ([((16, 16), (7, 7)), ((4, 8, 8), (3, 5, 5)), ((256,), (33,))], 1, 2, 64),
    "cpu-quick": ([((12, 12), (5, 5)), ((128,), (17,))], 1, 2, 64),
}


def neighborhood(ctx: Ctx) -> list:
    cfgs, b, h, d = NA[ctx.mode]
    return [_na_case(ctx, "neighborhood", spatial, ks, 1, b, h, d) for spatial, ks in cfgs]


def _na_tile_bound(spatial, kernel, stride, causal, tokens=128):
    """The simulator's speedup bound for tiles of `tokens` tokens of one shape for Q and KV (the
    fused kernel runs 128 or, on short walks, 64), maximised over the power-of-two shapes that fit;
    halved until one fits (tiny spatial extents, e.g. the CPU modes' 12x12)."""
    shapes = [t for t in attnx.gna._pow2_shapes(len(spatial), tokens) if all(x <= n for x, n in zip(t, spatial))]
    if not shapes and tokens > 1:
        return _na_tile_bound(spatial, kernel, stride, causal, tokens // 2)
    return max((attnx.gna.speedup_bound(spatial, kernel, stride, 1, causal, q_tile=t, kv_tile=t)["speedup_bound"], t)
               for t in shapes)


def _na_case(ctx, family, spatial, kernel, stride, b, h, d, causal=False, model=None):
    rank = len(spatial)
    kernel, stride, causal_t = _tup(kernel, rank), _tup(stride, rank), _tup(causal, rank)
    dil = (1,) * rank
    tokens = math.prod(spatial)
    keys = math.prod(kernel)
    sb = attnx.gna.speedup_bound(spatial, kernel, stride, 1, causal_t)
    pairs = sb["attended_pairs"]
    hc = _check_heads(ctx, h, cheap=False)
    host = _na_host_per_chunk(spatial, kernel)
    ref_full = gathered_ref_seconds(b, tokens, tokens, h, keys, d, d, host, ctx.cuda)
    ref_check = gathered_ref_seconds(1, tokens, tokens, hc, keys, d, d, host, ctx.cuda)
    kw = {"stride": stride, "is_causal": causal_t}

    def make_set(i):
        shape = (b, *spatial, h, d)
        s = {"q": randn(shape, ctx), "k": randn(shape, ctx), "v": randn(shape, ctx)}
        s.update({f"{n}_flat": s[n].view(b, tokens, h, d) for n in "qkv"})  # views for the dense peers
        return s

    def run(s):
        return attnx.neighborhood_attention(s["q"], s["k"], s["v"], kernel, **kw)

    def dense(s):  # attnx's own dense attention over all tokens: its "attnx vs" is the NA speedup
        return attnx.attention(s["q_flat"], s["k_flat"], s["v_flat"])

    def expected(s):
        q, k, v = (last_batch_heads(s[n], hc) for n in "qkv")
        return attnx.reference.neighborhood_attention(q, k, v, kernel, **kw)

    def which_kernel(s):  # as attnx.neighborhood_attention decides
        if dilation_in_batch(s["q"], s["k"], s["v"], dil):
            return "native (fused NA, dilation groups in the batch)"
        native = attnx._native.covers("neighborhood_attention", s["q"], s["k"], s["v"], dilation=dil)
        return "native (fused NA)" if native else "reference"

    def impls():
        out = [_attnx_impl(ctx, run, which_kernel, ref_seconds=ref_full),
               P.flex_peer(ctx, lambda s: P.na_mask_mod(spatial, kernel, dil, stride, causal_t), tokens=tokens,
                           spatial=spatial, name="flex (NA mask)")]
        if ctx.cuda and family in ("neighborhood", "gna_paper"):
            dense_flops = attention_flops(b, h, d, tokens * tokens)
            out.append(Impl(name="attnx dense attention", run=dense, kernel="peer", check=False, flops=dense_flops,
                            note="all pairs: its 'attnx vs' is the NA speedup over dense"))
            if family == "neighborhood":
                out += P.sdpa_peers(ctx, causal=False, keys=("q_flat", "k_flat", "v_flat"), flops=dense_flops,
                                    note="dense attention over all tokens", check=False)
        return out

    name = f"{rank}d {_fmt_axes(spatial)} k{_fmt_axes(kernel)}"
    if any(s > 1 for s in stride):
        name += f" s{_fmt_axes(stride)}"
    if any(causal_t):
        name += " causal"
    name += f" H{h} D{d}" + (f" B{b}" if b > 1 else "")
    if model:
        name = f"{model}: {name}"
    tile_bound, tile = _na_tile_bound(spatial, kernel, stride, causal_t)
    small_bound, small_tile = _na_tile_bound(spatial, kernel, stride, causal_t, 64)
    note = (f"FLOP bound {sb['flop_speedup']:.2f}x over dense, tile bound {tile_bound:.2f}x "
            f"({math.prod(tile)}-token tiles {_fmt_axes(tile)}; {math.prod(small_tile)}-token tiles {_fmt_axes(small_tile)}: "
            f"{small_bound:.2f}x)")
    if family == "gna":
        note = (f"GNA bound {sb['speedup_bound']:.2f}x (FLOP {sb['flop_speedup']:.2f}x), "
                f"tile util {100 * sb['tile_utilization']:.0f}%")
    if family == "gna_paper":  # the simulator's bound next to the achieved speedup (the dense row's "attnx vs")
        note = (f"GNA paper config; simulator bound {tile_bound:.2f}x for the kernel's 128-token tiles "
                f"{_fmt_axes(tile)} (FLOP bound {sb['flop_speedup']:.2f}x); achieved = the dense row's 'attnx vs'")
    return Case(family=family, name=name, make_set=make_set, impls=impls,
                set_bytes=3 * b * tokens * h * d * ctx.dtype.itemsize, expected=expected,
                subset=lambda o: o[-1:, ..., h - hc:, :], check_ref_seconds=ref_check,
                flops=attention_flops(b, h, d, pairs), dtype=ctx.dtype, note=note,
                params={"B": b, "spatial": spatial, "kernel_size": kernel, "stride": stride, "causal": causal_t,
                        "H": h, "D": d, "attended_pairs": pairs, "check_heads": hc,
                        "reference_estimate_s": round(ref_full, 2)})


def neighborhood_bwd(ctx: Ctx) -> list:
    cfgs, b, h, d = NA[ctx.mode]
    return [_na_bwd_case(ctx, spatial, ks, b, h, d) for spatial, ks in cfgs]


def _na_bwd_tile_bound(spatial, kernel, stride):
    """The simulator's bound for the backward's tiles (128-key KV tiles, 64-query Q tiles, the
    shapes visiting the fewest pairs), against dense tiles of the same sizes."""
    rank = len(spatial)
    best = 0.0
    for kt in attnx.gna._pow2_shapes(rank, 128):
        for qt in attnx.gna._pow2_shapes(rank, 64):
            if all(x <= n for x, n in zip(kt, spatial)) and all(x <= n for x, n in zip(qt, spatial)):
                best = max(best, attnx.gna.speedup_bound(spatial, kernel, stride, 1, False, q_tile=qt,
                                                         kv_tile=kt)["speedup_bound"])
    return best


def _na_bwd_case(ctx, spatial, kernel, b, h, d, stride=1, family="neighborhood_bwd", model=None):
    """Backward of the neighborhood case. attnx: the forward op once per set (untimed), the timed call
    torch.ops.attnx.neighborhood_attention_backward(dout, None, ...). Peers: flex_attention's
    backward with the NA block mask, and SDPA's dense backward over all tokens (its 'attnx vs' is
    the NA backward's speedup over dense)."""
    rank = len(spatial)
    kernel, stride = _tup(kernel, rank), _tup(stride, rank)
    dil, causal_t = (1,) * rank, (False,) * rank
    geom_args = (list(kernel), list(dil), list(stride), list(causal_t))
    tokens, keys = math.prod(spatial), math.prod(kernel)
    pairs = attnx.gna.speedup_bound(spatial, kernel, stride, 1, causal_t)["attended_pairs"]
    hc = _check_heads(ctx, h, cheap=False)
    host = _na_host_per_chunk(spatial, kernel)
    ref_full = 3 * gathered_ref_seconds(b, tokens, tokens, h, keys, d, d, host, ctx.cuda)
    ref_check = 3 * gathered_ref_seconds(1, tokens, tokens, hc, keys, d, d, host, ctx.cuda)

    def make_set(i):
        shape = (b, *spatial, h, d)
        s = {n: randn(shape, ctx) for n in ("q", "k", "v", "dout")}
        s.update({f"{n}_flat": s[n].view(b, tokens, h, d) for n in ("q", "k", "v", "dout")})
        return s

    def native(s):
        return _bwd_native(ctx, "neighborhood_attention", s["q"], s["k"], s["v"], dilation=dil)

    def prepare(s):  # the forward, once per set, outside the timed region
        a = dict(s, op=not ctx.cuda or native(s))  # CPU: the ops run the reference
        if a["op"]:
            a["out"], a["lse"] = torch.ops.attnx.neighborhood_attention(s["q"], s["k"], s["v"], *geom_args, None)
        return a

    def run(a):
        if a["op"]:
            return torch.ops.attnx.neighborhood_attention_backward(a["dout"], None, a["q"], a["k"], a["v"], a["out"],
                                                                   a["lse"], *geom_args, None)
        q, k, v = (x.detach().requires_grad_() for x in (a["q"], a["k"], a["v"]))  # as autograd would
        with torch.enable_grad():
            out = attnx.neighborhood_attention(q, k, v, kernel, stride=stride)
        return torch.autograd.grad(out, (q, k, v), a["dout"])

    def expected(s):
        q, k, v, dout = (last_batch_heads(s[n], hc) for n in ("q", "k", "v", "dout"))
        geom = attnx.reference.neighborhood.normalize_na_args(q, *geom_args)
        return attnx.reference.neighborhood.na_bwd(dout, None, q, k, v, geom, None)

    def impls():
        out = [_attnx_impl(ctx, run, lambda s: "native (fused NA bwd)" if native(s) else "reference",
                           ref_seconds=ref_full, prepare=prepare),
               P.flex_peer(ctx, lambda s: P.na_mask_mod(spatial, kernel, dil, stride, causal_t), tokens=tokens,
                           spatial=spatial, name="flex (NA mask)", backward=True)]
        dense_flops = BWD_FLOP_FACTOR * attention_flops(b, h, d, tokens * tokens)
        if ctx.cuda and family == "neighborhood_bwd":
            out += [dataclasses.replace(p, output=None, check=False, flops=dense_flops,
                                        note="dense backward over all tokens")
                    for p in P.sdpa_bwd_peers(ctx, causal=False, keys=("q_flat", "k_flat", "v_flat", "dout_flat"))]
        if ctx.cuda and family == "gna_paper_bwd":  # attnx's own dense backward: "attnx vs" is the speedup
            out.append(Impl(name="attnx dense backward", run=dense_bwd, prepare=dense_fwd, kernel="peer", check=False,
                            flops=dense_flops, note="all pairs: its 'attnx vs' is the NA backward's speedup"))
        return out

    def dense_fwd(s):  # once per set, untimed
        out, lse = torch.ops.attnx.attention(s["q_flat"], s["k_flat"], s["v_flat"], False, None)
        return dict(s, out=out, lse=lse)

    def dense_bwd(a):
        return torch.ops.attnx.attention_backward(a["dout_flat"], None, a["q_flat"], a["k_flat"], a["v_flat"], a["out"],
                                                  a["lse"], False, None)

    name = f"{rank}d {_fmt_axes(spatial)} k{_fmt_axes(kernel)}"
    name += (f" s{_fmt_axes(stride)}" if any(x > 1 for x in stride) else "") + f" H{h} D{d}" + (f" B{b}" if b > 1 else "")
    name = f"{model}: {name}" if model else name
    sb = attnx.gna.speedup_bound(spatial, kernel, stride, 1, causal_t)
    note = f"FLOP bound {sb['flop_speedup']:.2f}x over dense"
    if family == "gna_paper_bwd":
        note = f"GNA paper config; simulator bound {_na_bwd_tile_bound(spatial, kernel, stride):.2f}x, " + note
    return Case(family=family, name=name, make_set=make_set, impls=impls,
                set_bytes=4 * b * tokens * h * d * ctx.dtype.itemsize, expected=expected,
                subset=lambda g: tuple(x[-1:, ..., h - hc:, :] for x in g), check_ref_seconds=ref_check,
                flops=BWD_FLOP_FACTOR * attention_flops(b, h, d, pairs), dtype=ctx.dtype, note=note,
                params={"B": b, "spatial": spatial, "kernel_size": kernel, "H": h, "D": d, "attended_pairs": pairs,
                        "check_heads": hc, "pass": "backward", "flop_factor": BWD_FLOP_FACTOR,
                        "reference_estimate_s": round(ref_full, 2)})
