"""gna, gna_bwd, gna_paper(_bwd): strided NA and block-sparse GNA plans."""
from __future__ import annotations

import math

import numpy as np
import torch

import attnx

from .. import peers as P
from ..common import Case, Ctx, Impl, attention_flops, gathered_ref_seconds, last_batch_heads, randn
from ._helpers import BWD_FLOP_FACTOR, _attnx_impl, _bwd_native, _check_heads, _fmt_axes, _tup
from .neighborhood import _na_bwd_case, _na_case

GNA = {  # strided NA: (spatial, kernel, stride); block-sparse: (spatial, kernel, stride, tile); B, H, D
    "full": ([((128, 128), (32, 32), (16, 16)), ((16, 64, 64), (8, 16, 16), (8, 16, 16))],
             [((128, 128), (32, 32), (16, 16), (16, 8)), ((8, 64, 64), (8, 16, 16), (8, 16, 16), (4, 4, 8)),
              ((16, 64, 64), (8, 16, 16), (8, 16, 16), (2, 8, 8))],  # the perfectly block-sparse case
             1, 16, 128),
    "quick": ([((64, 64), (16, 16), (8, 8))],
              [((64, 64), (16, 16), (8, 8), (16, 8)), ((8, 16, 32), (4, 8, 8), (4, 8, 8), (4, 4, 8))],
              1, 16, 128),
    "cpu": ([((16, 16), (8, 8), (4, 4))],
            [((16, 16), (8, 8), (4, 4), (4, 4)), ((4, 8, 8), (2, 4, 4), (2, 4, 4), (2, 2, 4))], 1, 2, 64),
    "cpu-quick": ([((16, 16), (8, 8), (4, 4))], [((16, 16), (8, 8), (4, 4), (4, 4))], 1, 2, 64),
}


def gna_plan(spatial, kernel, stride, tile, causal=None):
    """attnx.gna.block_sparse_plan of a (dilation-1) config, plus the allowed (Q tile, KV tile)
    matrix the flex peer's tile mask needs: (index [num_tiles, max_count], count [num_tiles],
    allowed bool [num_tiles, num_tiles])."""
    causal = _tup(False if causal is None else causal, len(spatial))
    index, count = attnx.gna.block_sparse_plan(tuple(spatial), tuple(kernel), tuple(stride), tuple(causal), tuple(tile))
    index, count = index.copy(), count.copy()  # the plan is cached read-only
    nt = index.shape[0]
    allowed = np.zeros((nt, nt), dtype=bool)
    for t in range(nt):
        allowed[t, index[t, : count[t]]] = True
    return index, count, allowed


def gna(ctx: Ctx) -> list:
    strided, blocks, b, h, d = GNA[ctx.mode]
    cases = [_na_case(ctx, "gna", sp, ks, st, b, h, d) for sp, ks, st in strided]
    cases += [_block_sparse_case(ctx, sp, ks, st, tile, b, h, d) for sp, ks, st, tile in blocks]
    return cases


def _block_sparse_case(ctx, spatial, kernel, stride, tile, b, h, d):
    index_np, count_np, allowed_np = gna_plan(spatial, kernel, stride, tile)
    tokens = math.prod(spatial)
    block = math.prod(tile)
    nt = index_np.shape[0]
    visited_pairs = int(count_np.sum()) * block * block
    sb = attnx.gna.speedup_bound(spatial, kernel, stride, 1, False, q_tile=tile, kv_tile=tile)
    hc = _check_heads(ctx, h, cheap=False)
    keys = index_np.shape[1] * block
    ref_full = gathered_ref_seconds(b, tokens, tokens, h, keys, d, d, 3e-4, ctx.cuda)
    ref_check = gathered_ref_seconds(1, tokens, tokens, hc, keys, d, d, 3e-4, ctx.cuda)
    plan = {}

    def tables():
        if not plan:
            plan["index"] = torch.from_numpy(index_np).to(ctx.device).view(1, 1, nt, -1)
            plan["count"] = torch.from_numpy(count_np).to(ctx.device).view(1, 1, nt)
        return plan["index"], plan["count"]

    def make_set(i):
        index, count = tables()
        shape = (b, tokens, h, d)
        return {"q": randn(shape, ctx), "k": randn(shape, ctx), "v": randn(shape, ctx), "index": index,
                "count": count}

    def run(s):
        return attnx.block_sparse_attention(s["q"], s["k"], s["v"], s["index"], s["count"], q_block=block,
                                            kv_block=block)

    def expected(s):
        q, k, v = (last_batch_heads(s[n], hc) for n in "qkv")
        return attnx.reference.block_sparse_attention(q, k, v, s["index"], s["count"], q_block=block, kv_block=block)

    def tile_mask(s):
        allowed = torch.from_numpy(allowed_np.reshape(-1)).to(ctx.device)
        return P.tile_mask_mod(allowed, nt, block, block)

    def which_kernel(s):  # as attnx.block_sparse_attention decides
        native = attnx._native.covers("block_sparse_attention", s["q"], s["k"], s["v"], tiles=(block, block))
        return "native" if native else "reference"

    def dense(s):  # attnx's own dense attention: "attnx vs" of this row is the achieved speedup
        return attnx.attention(s["q"], s["k"], s["v"])

    def impls():
        out = [_attnx_impl(ctx, run, which_kernel, ref_seconds=ref_full),
               P.flex_peer(ctx, tile_mask, tokens=tokens, block=block, name="flex (tile mask)")]
        if ctx.cuda:
            out.append(Impl(name="attnx dense attention", run=dense, kernel="peer", check=False,
                            flops=attention_flops(b, h, d, tokens * tokens),
                            note="all pairs: its 'attnx vs' is the block-sparse speedup"))
        return out

    name = (f"block-sparse {len(spatial)}d {_fmt_axes(spatial)} k{_fmt_axes(kernel)} s{_fmt_axes(stride)} "
            f"tile {_fmt_axes(tile)} H{h} D{d}")
    note = (f"{sb['kv_tiles_per_q_tile']:.1f} of {nt} KV tiles per Q tile; as NA: bound {sb['speedup_bound']:.2f}x, "
            f"tile util {100 * sb['tile_utilization']:.0f}%")
    return Case(family="gna", name=name, make_set=make_set, impls=impls,
                set_bytes=3 * b * tokens * h * d * ctx.dtype.itemsize, expected=expected,
                subset=lambda o: o[-1:, :, h - hc:, :], check_ref_seconds=ref_check,
                flops=attention_flops(b, h, d, visited_pairs), dtype=ctx.dtype, note=note,
                params={"B": b, "spatial": spatial, "kernel_size": kernel, "stride": stride, "tile": tile,
                        "block": block, "H": h, "D": d, "visited_kv_tiles": int(count_np.sum()),
                        "attended_pairs": visited_pairs, "na_attended_pairs": sb["attended_pairs"],
                        "plan_matches_simulator": int(count_np.sum()) == sb["visited_kv_tiles"],
                        "check_heads": hc, "reference_estimate_s": round(ref_full, 2)})


# Configurations the GNA paper (Hassani et al., "Generalized Neighborhood Attention:
# Multi-dimensional Sparse Attention at the Speed of Light", arXiv:2504.16922, Sec. 4) applies to
# generation models: HunyuanVideo 720p 5 s (30x48x80 tokens, 24 heads of 128, window 18x24x24,
# stride 16x8x8; stride 1 for plain NA) and FLUX.1-dev at 4K (256x256 tokens, 24 heads of 128,
# window 80x80, stride 16x16 or 1). (name, spatial, kernel, stride), H, D; --quick and the CPU modes
# run shrunken stand-ins of the same shapes (the full ones take minutes with their dense peers).
GNA_PAPER = {
    "full": ([("HunyuanVideo", (30, 48, 80), (18, 24, 24), (16, 8, 8)), ("HunyuanVideo", (30, 48, 80), (18, 24, 24), 1),
              ("FLUX.1-dev 4K", (256, 256), (80, 80), (16, 16)), ("FLUX.1-dev 4K", (256, 256), (80, 80), 1)], 24, 128),
    "quick": ([("HunyuanVideo (1/2 per axis)", (15, 24, 40), (9, 12, 12), (8, 4, 4)),
               ("FLUX.1-dev 4K (1/2 per axis)", (128, 128), (40, 40), (8, 8))], 24, 128),
    "cpu": ([("HunyuanVideo (1/8 per axis)", (4, 6, 10), (3, 3, 3), (2, 1, 1)), ("FLUX.1-dev 4K (1/16 per axis)", (16, 16), (5, 5), 1)],
            2, 64),
    "cpu-quick": ([("FLUX.1-dev 4K (1/16 per axis)", (16, 16), (5, 5), 1)], 2, 64),
}


def gna_paper(ctx: Ctx) -> list:
    cfgs, h, d = GNA_PAPER[ctx.mode]
    return [_na_case(ctx, "gna_paper", sp, ks, st, 1, h, d, model=model) for model, sp, ks, st in cfgs]


def gna_paper_bwd(ctx: Ctx) -> list:
    cfgs, h, d = GNA_PAPER[ctx.mode]
    return [_na_bwd_case(ctx, sp, ks, 1, h, d, stride=st, family="gna_paper_bwd", model=model)
            for model, sp, ks, st in cfgs]


def gna_bwd(ctx: Ctx) -> list:
    strided, blocks, b, h, d = GNA[ctx.mode]
    cases = [_na_bwd_case(ctx, sp, ks, b, h, d, stride=st, family="gna_bwd") for sp, ks, st in strided]
    cases += [_block_sparse_bwd_case(ctx, sp, ks, st, tile, b, h, d) for sp, ks, st, tile in blocks]
    return cases


def _block_sparse_bwd_case(ctx, spatial, kernel, stride, tile, b, h, d):
    """Backward of the block-sparse GNA case: the forward op once per set (untimed), the timed call
    torch.ops.attnx.block_sparse_attention_backward(dout, None, ...). Peer: flex's backward."""
    index_np, count_np, allowed_np = gna_plan(spatial, kernel, stride, tile)
    tokens, block = math.prod(spatial), math.prod(tile)
    nt = index_np.shape[0]
    visited_pairs = int(count_np.sum()) * block * block
    hc = _check_heads(ctx, h, cheap=False)
    keys = index_np.shape[1] * block
    ref_full = 3 * gathered_ref_seconds(b, tokens, tokens, h, keys, d, d, 3e-4, ctx.cuda)
    ref_check = 3 * gathered_ref_seconds(1, tokens, tokens, hc, keys, d, d, 3e-4, ctx.cuda)
    index = torch.from_numpy(index_np).to(ctx.device).view(1, 1, nt, -1)
    count = torch.from_numpy(count_np).to(ctx.device).view(1, 1, nt)

    def make_set(i):
        return {n: randn((b, tokens, h, d), ctx) for n in ("q", "k", "v", "dout")}

    def native(s):
        return _bwd_native(ctx, "block_sparse_attention", s["q"], s["k"], s["v"], tiles=(block, block))

    def prepare(s):
        a = dict(s, op=not ctx.cuda or native(s))
        if a["op"]:
            a["out"], a["lse"] = torch.ops.attnx.block_sparse_attention(s["q"], s["k"], s["v"], index, count, block,
                                                                        block, None)
        return a

    def run(a):
        if a["op"]:
            return torch.ops.attnx.block_sparse_attention_backward(a["dout"], None, a["q"], a["k"], a["v"], a["out"],
                                                                   a["lse"], index, count, block, block, None)
        q, k, v = (x.detach().requires_grad_() for x in (a["q"], a["k"], a["v"]))
        with torch.enable_grad():
            out = attnx.block_sparse_attention(q, k, v, index, count, q_block=block, kv_block=block)
        return torch.autograd.grad(out, (q, k, v), a["dout"])

    def expected(s):
        q, k, v, do = (last_batch_heads(s[n], hc) for n in ("q", "k", "v", "dout"))
        return attnx.reference.block_sparse.block_sparse_bwd(do, None, q, k, v, index, count, block, block, None)

    def tile_mask(s):
        allowed = torch.from_numpy(allowed_np.reshape(-1)).to(ctx.device)
        return P.tile_mask_mod(allowed, nt, block, block)

    def impls():
        return [_attnx_impl(ctx, run, lambda s: "native" if native(s) else "reference", ref_seconds=ref_full,
                            prepare=prepare),
                P.flex_peer(ctx, tile_mask, tokens=tokens, block=block, name="flex (tile mask)", backward=True)]

    name = (f"block-sparse {len(spatial)}d {_fmt_axes(spatial)} k{_fmt_axes(kernel)} s{_fmt_axes(stride)} "
            f"tile {_fmt_axes(tile)} H{h} D{d}")
    return Case(family="gna_bwd", name=name, make_set=make_set, impls=impls,
                set_bytes=4 * b * tokens * h * d * ctx.dtype.itemsize, expected=expected,
                subset=lambda g: tuple(x[-1:, :, h - hc:, :] for x in g), check_ref_seconds=ref_check,
                flops=BWD_FLOP_FACTOR * attention_flops(b, h, d, visited_pairs), dtype=ctx.dtype,
                note=f"{count_np.sum() / nt:.1f} of {nt} KV tiles per Q tile",
                params={"B": b, "spatial": spatial, "kernel_size": kernel, "stride": stride, "tile": tile,
                        "H": h, "D": d, "attended_pairs": visited_pairs, "check_heads": hc, "pass": "backward",
                        "flop_factor": BWD_FLOP_FACTOR, "reference_estimate_s": round(ref_full, 2)})
