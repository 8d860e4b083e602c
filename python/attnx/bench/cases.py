"""The benchmark cases: one function per family, each returning [Case] for the run's mode.

Modes: "full" (GPU defaults), "quick" (GPU, smaller), "cpu" and "cpu-quick" (references only,
small sizes, float32). Building a case allocates nothing on the device: inputs are made by
``Case.make_set`` when the case runs.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

import attnx
from attnx.ops.neighborhood import dilation_in_batch
from attnx.reference import dense_varlen as _ref_dv

from . import peers as P
from .common import (Case, Ctx, Impl, attention_flops, causal_pairs, gathered_ref_seconds, last_batch_heads,
                     randn)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _attnx_impl(ctx: Ctx, run, kernel, *, ref_seconds: float = 0.0, output=None, note: str = "",
                prepare=None) -> Impl:
    """attnx's own entry point. On the CPU it runs the reference (by design), so it is named so."""
    return Impl(name="attnx" if ctx.cuda else "reference", kind="attnx", run=run,
                kernel=kernel if ctx.cuda else "reference", ref_seconds=ref_seconds, output=output, note=note,
                prepare=prepare)


def _check_heads(ctx: Ctx, heads: int, cheap: bool) -> int:
    """Heads kept in the check subset: all when the reference is cheap, else the last two."""
    return heads if (cheap or not ctx.cuda) else min(heads, 2)


def _na_host_per_chunk(spatial, kernel) -> float:
    """Host time per query chunk of attnx.reference.neighborhood_attention (builds per-axis tables in Python)."""
    return sum(n * (35e-6 + 0.2e-6 * k) for n, k in zip(spatial, kernel))


def _fmt_axes(x) -> str:
    return "x".join(str(v) for v in x)


def _tup(x, rank):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank


# ----------------------------------------------------------------------------------------------
# dense
# ----------------------------------------------------------------------------------------------
DENSE = {
    "full": [(4, 8192, 16, 128), (4, 8192, 16, 64)],
    "quick": [(2, 2048, 16, 128), (2, 2048, 16, 64)],
    "cpu": [(1, 256, 2, 64)],
    "cpu-quick": [(1, 128, 2, 64)],
}


def dense(ctx: Ctx) -> list:
    cases = []
    for (b, l, h, d), causal in itertools.product(DENSE[ctx.mode], (False, True)):
        cases.append(_dense_case(ctx, b, l, h, d, causal))
    return cases


def _dense_case(ctx, b, l, h, d, causal):
    pairs = causal_pairs(l, l) if causal else l * l

    def make_set(i):
        return {"q": randn((b, l, h, d), ctx), "k": randn((b, l, h, d), ctx), "v": randn((b, l, h, d), ctx)}

    def run(s):
        return attnx.attention(s["q"], s["k"], s["v"], causal=causal)

    def kernel(s):
        return "native" if attnx._native.covers("attention", s["q"], s["k"], s["v"]) else "reference"

    def expected(s):
        return attnx.reference.attention(s["q"][-1:], s["k"][-1:], s["v"][-1:], causal=causal)

    def impls():
        return [_attnx_impl(ctx, run, kernel)] + P.sdpa_peers(ctx, causal=causal)

    return Case(family="dense", name=f"B{b} L{l} H{h} D{d}{' causal' if causal else ''}", make_set=make_set,
                impls=impls, set_bytes=3 * b * l * h * d * ctx.dtype.itemsize, expected=expected,
                subset=lambda o: o[-1:], flops=attention_flops(b, h, d, pairs), dtype=ctx.dtype,
                params={"B": b, "L": l, "H": h, "D": d, "causal": causal, "attended_pairs": pairs})


# ----------------------------------------------------------------------------------------------
# varlen
# ----------------------------------------------------------------------------------------------
VARLEN = {  # (number of sequences, max length, H, D)
    "full": (32, 4096, 16, 128),
    "quick": (8, 1024, 16, 128),
    "cpu": (4, 256, 2, 64),
    "cpu-quick": (3, 128, 2, 64),
}
# The ByteTransformer setting (BERT-base attention): 64 sentences of at most 512 tokens averaging
# 0.6 * 512, 12 heads of 64, non-causal; peers: varlen_attn and SDPA on the padded [64, 512, 12, 64]
# batch with a key-padding mask.
VARLEN_BT = {  # (number of sentences, max length, H, D)
    "full": (64, 512, 12, 64),
    "quick": (16, 512, 12, 64),
    "cpu": (8, 128, 2, 64),
    "cpu-quick": (4, 64, 2, 64),
}


def varlen_lengths(n: int, max_len: int, seed: int = 0) -> list:
    """n lengths uniform in [0.2, 1] * max_len (seeded)."""
    g = torch.Generator().manual_seed(seed)
    frac = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    return [max(1, int(round(f * max_len))) for f in frac.tolist()]


def mean_fraction_lengths(n: int, max_len: int, mean: float = 0.6, seed: int = 0) -> list:
    """n lengths spread evenly over [2 * mean - 1, 1] * max_len (the midpoints of n equal slices), in a
    seeded random order: the spread of a uniform draw, with an average of exactly ``mean`` * max_len
    (up to rounding). mean = 0.6: [0.2, 1] * max_len, as in ByteTransformer's benchmarks."""
    lo = 2 * mean - 1
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    return [max(1, int(round((lo + (1 - lo) * (i + 0.5) / n) * max_len))) for i in order]


def varlen(ctx: Ctx) -> list:
    n, max_len, h, d = VARLEN[ctx.mode]
    lens = varlen_lengths(n, max_len)
    cases = [_varlen_case(ctx, lens, max_len, h, d, causal) for causal in (False, True)]
    n, max_len, h, d = VARLEN_BT[ctx.mode]
    lens = mean_fraction_lengths(n, max_len, 0.6)
    cases.append(_varlen_case(
        ctx, lens, max_len, h, d, False, padded_peer=True,
        name=f"ByteTransformer: {n} seqs, mean {sum(lens) / n / max_len:.2f}*{max_len} (T={sum(lens)}) H{h} D{d}",
        note=f"padded SDPA: [{n}, {max_len}, {h}, {d}] with a key-padding mask; TFLOP/s over real tokens only"))
    return cases


def _varlen_case(ctx, lens, nominal_max, h, d, causal, *, padded_peer=False, name=None, note=""):
    """Packed sequences of the given lengths. Peers: varlen_attn (CUDA) and flex with a document mask,
    or (``padded_peer``) varlen_attn and SDPA on the [B, nominal_max] padded batch with a key mask."""
    total = sum(lens)
    cu_list = [0] + list(itertools.accumulate(lens))
    max_len = max(lens)
    pairs = sum((l * (l + 1)) // 2 if causal else l * l for l in lens)

    def make_set(i):
        return {"q": randn((total, h, d), ctx), "k": randn((total, h, d), ctx), "v": randn((total, h, d), ctx),
                "cu": torch.tensor(cu_list, dtype=torch.int32, device=ctx.device), "max_len": max_len}

    def run(s):
        return attnx.varlen_attention(s["q"], s["k"], s["v"], s["cu"], s["cu"], s["max_len"], s["max_len"],
                                      causal=causal)

    def expected(s):
        return attnx.reference.varlen_attention(s["q"], s["k"], s["v"], s["cu"], s["cu"], s["max_len"],
                                                s["max_len"], causal=causal)

    padded = -(-total // 128) * 128  # flex runs on a multiple of its block; the padding is its own "sequence"

    def doc_mask(s):
        ids = torch.repeat_interleave(torch.arange(len(lens), device=ctx.device, dtype=torch.int32),
                                      torch.tensor(lens, device=ctx.device))
        ids = torch.cat([ids, torch.full((padded - total,), len(lens), dtype=torch.int32, device=ctx.device)])
        return P.document_mask_mod(ids, causal)

    def impls():
        out = [_attnx_impl(ctx, run, lambda s: ctx.op_status("varlen_attention"))]
        if ctx.cuda:
            out.append(P.varlen_attn_peer(ctx, causal=causal))
        if padded_peer:
            out.append(P.padded_sdpa_peer(ctx, lens, nominal_max))
        else:
            out.append(P.flex_peer(ctx, doc_mask, tokens=total, packed=True, padded_tokens=padded,
                                   name="flex (document mask)"))
        return out

    if name is None:
        name = f"{len(lens)} seqs of [0.2,1]*{nominal_max} (T={total}) H{h} D{d}{' causal' if causal else ''}"
    params = {"num_seqs": len(lens), "lengths": lens, "total_tokens": total, "H": h, "D": d,
              "causal": causal, "attended_pairs": pairs}
    if padded_peer:
        params.update(padded_len=nominal_max, padded_tokens=len(lens) * nominal_max,
                      mean_len_fraction=total / (len(lens) * nominal_max))
    return Case(family="varlen", name=name,
                make_set=make_set, impls=impls, set_bytes=3 * total * h * d * ctx.dtype.itemsize, expected=expected,
                flops=attention_flops(1, h, d, pairs), dtype=ctx.dtype, note=note, params=params)


# ----------------------------------------------------------------------------------------------
# dense_bwd, varlen_bwd: the backward alone
# ----------------------------------------------------------------------------------------------
# The usual convention: the forward does 2 matmuls (QK^T, PV), the backward 5 (QK^T recomputed,
# dO V^T, P^T dO, dS K, dS^T Q), so backward FLOPs = 2.5x the forward's.
BWD_FLOP_FACTOR = 2.5


def _bwd_native(ctx: Ctx, op: str, q, k, v, **kw) -> bool:
    """True if ``op`` and its backward run attnx's native kernels for these inputs: as the API
    decides for the forward (``kw``: covers' extras), with the backward instance built too
    (the set's tensors do not require grad, so covers alone would not ask for it)."""
    if not ctx.cuda:
        return False
    with torch.enable_grad():
        covered = attnx._native.covers(op, q.detach().requires_grad_(), k, v, **kw)
    return covered and attnx._native.has_cuda_kernel(f"{op}_backward")


def _ref_bwd_seconds(score_elems: float, d: int, blocks: int, cuda: bool) -> float:
    """Rough cost of attnx.reference's attention backward: 6 fp32 matmuls over all score elements
    (causal masks, not skips) plus per-block (sequence, chunk) host overhead."""
    rate = 2e13 if cuda else 2e10
    return 12.0 * score_elems * d / rate + blocks * (1e-3 if cuda else 2e-4)


def dense_bwd(ctx: Ctx) -> list:
    return [_dense_bwd_case(ctx, b, l, h, d, causal)
            for (b, l, h, d), causal in itertools.product(DENSE[ctx.mode], (False, True))]


def _dense_bwd_case(ctx, b, l, h, d, causal):
    """Backward of the dense case. attnx: forward op once per input set (untimed, in prepare), the
    timed call torch.ops.attnx.attention_backward(dout, None, ...). Peers: SDPA's backward."""
    pairs = causal_pairs(l, l) if causal else l * l
    item = ctx.dtype.itemsize
    ref_full = _ref_bwd_seconds(b * h * l * l, d, b, ctx.cuda)
    ref_check = _ref_bwd_seconds(h * l * l, d, 1, ctx.cuda)

    def make_set(i):
        return {n: randn((b, l, h, d), ctx) for n in ("q", "k", "v", "dout")}

    def native(s):
        return _bwd_native(ctx, "attention", s["q"], s["k"], s["v"])

    def prepare(s):  # the forward, once per set, outside the timed region
        a = dict(s, op=not ctx.cuda or native(s))  # CPU: the ops run the reference
        if a["op"]:
            a["out"], a["lse"] = torch.ops.attnx.attention(s["q"], s["k"], s["v"], causal, None)
        else:  # a CUDA config without a native kernel: the reference, as attnx.attention does
            a["out"], a["lse"] = _ref_dv.attention_fwd(s["q"], s["k"], s["v"], causal, None)
        return a

    def run(a):
        if a["op"]:
            return torch.ops.attnx.attention_backward(a["dout"], None, a["q"], a["k"], a["v"], a["out"], a["lse"],
                                                      causal, None)
        return _ref_dv.attention_bwd(a["dout"], None, a["q"], a["k"], a["v"], causal, None)

    def expected(s):
        return _ref_dv.attention_bwd(s["dout"][-1:], None, s["q"][-1:], s["k"][-1:], s["v"][-1:], causal, None)

    def impls():
        return ([_attnx_impl(ctx, run, lambda s: "native" if native(s) else "reference", ref_seconds=ref_full,
                             prepare=prepare)] + P.sdpa_bwd_peers(ctx, causal=causal))

    return Case(family="dense_bwd", name=f"B{b} L{l} H{h} D{d}{' causal' if causal else ''}", make_set=make_set,
                impls=impls, set_bytes=5 * b * l * h * d * item + 4 * b * l * h, expected=expected,
                subset=lambda g: tuple(x[-1:] for x in g), check_ref_seconds=ref_check,
                flops=BWD_FLOP_FACTOR * attention_flops(b, h, d, pairs), dtype=ctx.dtype,
                params={"B": b, "L": l, "H": h, "D": d, "causal": causal, "attended_pairs": pairs,
                        "pass": "backward", "flop_factor": BWD_FLOP_FACTOR,
                        "reference_estimate_s": round(ref_full, 2)})


def varlen_bwd(ctx: Ctx) -> list:
    n, max_len, h, d = VARLEN[ctx.mode]
    lens = varlen_lengths(n, max_len)
    return [_varlen_bwd_case(ctx, lens, max_len, h, d, causal) for causal in (False, True)]


def _varlen_bwd_case(ctx, lens, nominal_max, h, d, causal):
    """Backward of the packed varlen case. attnx: forward op once per set (untimed), the timed call
    torch.ops.attnx.varlen_attention_backward(dout, None, ...). Peer: varlen_attn's backward (CUDA)."""
    total = sum(lens)
    cu_list = [0] + list(itertools.accumulate(lens))
    max_len = max(lens)
    pairs = sum((l * (l + 1)) // 2 if causal else l * l for l in lens)
    item = ctx.dtype.itemsize
    ref_full = _ref_bwd_seconds(h * sum(l * l for l in lens), d, len(lens), ctx.cuda)

    def make_set(i):
        s = {n: randn((total, h, d), ctx) for n in ("q", "k", "v", "dout")}
        s.update(cu=torch.tensor(cu_list, dtype=torch.int32, device=ctx.device), max_len=max_len)
        return s

    def native(s):
        return _bwd_native(ctx, "varlen_attention", s["q"], s["k"], s["v"])

    def prepare(s):  # the forward, once per set, outside the timed region
        a = dict(s, op=not ctx.cuda or native(s))
        if a["op"]:
            a["out"], a["lse"] = torch.ops.attnx.varlen_attention(s["q"], s["k"], s["v"], s["cu"], s["cu"],
                                                                  max_len, max_len, causal, -1, -1, None)
        else:
            a["out"], a["lse"] = _ref_dv.varlen_fwd(s["q"], s["k"], s["v"], s["cu"], s["cu"], max_len, max_len,
                                                    causal, (-1, -1), None)
        return a

    def run(a):
        if a["op"]:
            return torch.ops.attnx.varlen_attention_backward(
                a["dout"], None, a["q"], a["k"], a["v"], a["out"], a["lse"], a["cu"], a["cu"], max_len, max_len,
                causal, -1, -1, None)
        return _ref_dv.varlen_bwd(a["dout"], None, a["q"], a["k"], a["v"], a["cu"], a["cu"], causal, (-1, -1),
                                  None)

    def expected(s):
        return _ref_dv.varlen_bwd(s["dout"], None, s["q"], s["k"], s["v"], s["cu"], s["cu"], causal, (-1, -1),
                                  None)

    def impls():
        out = [_attnx_impl(ctx, run, lambda s: "native" if native(s) else "reference", ref_seconds=ref_full,
                           prepare=prepare)]
        if ctx.cuda:
            out.append(P.varlen_attn_bwd_peer(ctx, causal=causal))
        return out

    name = f"{len(lens)} seqs of [0.2,1]*{nominal_max} (T={total}) H{h} D{d}{' causal' if causal else ''}"
    return Case(family="varlen_bwd", name=name, make_set=make_set, impls=impls,
                set_bytes=5 * total * h * d * item + 4 * total * h, expected=expected, check_ref_seconds=ref_full,
                flops=BWD_FLOP_FACTOR * attention_flops(1, h, d, pairs), dtype=ctx.dtype,
                params={"num_seqs": len(lens), "lengths": lens, "total_tokens": total, "H": h, "D": d,
                        "causal": causal, "attended_pairs": pairs, "pass": "backward",
                        "flop_factor": BWD_FLOP_FACTOR, "reference_estimate_s": round(ref_full, 2)})


# ----------------------------------------------------------------------------------------------
# neighborhood (and strided NA for gna)
# ----------------------------------------------------------------------------------------------
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
    fused kernel runs 128 or, on short walks, 64), maximised over the power-of-two shapes that fit."""
    best = max((attnx.gna.speedup_bound(spatial, kernel, stride, 1, causal, q_tile=t, kv_tile=t)["speedup_bound"], t)
               for t in attnx.gna._pow2_shapes(len(spatial), tokens) if all(x <= n for x, n in zip(t, spatial)))
    return best


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
            f"(128-token tiles {_fmt_axes(tile)}; 64-token tiles {_fmt_axes(small_tile)}: {small_bound:.2f}x)")
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


# ----------------------------------------------------------------------------------------------
# gna: strided NA and block-sparse attention over a GNA tile plan
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# mla
# ----------------------------------------------------------------------------------------------
# The cases. Memory-bound: s_q = 1 with 16-64 heads reads each cache byte once for few FLOPs
# (GB/s is the figure of merit, %ceil against the device-copy ceiling). Compute-bound: 128 heads x 2
# query tokens share every cache token (about 480 FLOP per cache byte): TFLOP/s, %ceil of the matmul
# ceiling. Skewed beside even: one long sequence among short ones, and the same number of tokens spread
# evenly over the same batch; with a good split-KV plan the two take about the same time.
MLA = {  # "grid": [(B, cache length, Hq, s_q)]; "compute": likewise; "skew": (long, n_short, short, Hq, s_q)
    "full": {"grid": [(b, n, hq, 1) for b in (64, 128) for n in (4096, 8192) for hq in (16, 32, 64)],
             "compute": [(64, 8192, 128, 2)],
             "skew": (32768, 127, 256, 64, 1)},
    "quick": {"grid": [(16, 1024, 16, 1), (16, 1024, 64, 1)],
              "compute": [(8, 1024, 128, 2)],
              "skew": (4096, 15, 256, 64, 1)},
    "cpu": {"grid": [(2, 256, 16, 1)], "compute": [], "skew": (512, 3, 64, 16, 1)},
    "cpu-quick": {"grid": [(2, 128, 16, 1)], "compute": [], "skew": (256, 3, 64, 16, 1)},
}
MLA_PAGE, MLA_DQK, MLA_DV, MLA_HK = 64, 576, 512, 1


def mla(ctx: Ctx) -> list:
    cfg = MLA[ctx.mode]
    cases = [_mla_case(ctx, [n] * b, hq, sq, name=f"B{b} cache {n} Hq{hq} s_q{sq}") for b, n, hq, sq in cfg["grid"]]
    cases += [_mla_case(ctx, [n] * b, hq, sq, name=f"B{b} cache {n} Hq{hq} s_q{sq} (compute-bound)", primary="flops")
              for b, n, hq, sq in cfg["compute"]]
    long_len, n_short, short, hq, sq = cfg["skew"]
    skewed, even = mla_skew_lengths(long_len, n_short, short)
    b, total = len(skewed), sum(skewed)
    lo, hi = min(even), max(even)
    spread = f"{b}x{lo}" if lo == hi else f"{b}x{lo}-{hi}"
    cases.append(_mla_case(ctx, skewed, hq, sq, name=f"B{b} skewed 1x{long_len} + {n_short}x{short} (T={total}) "
                           f"Hq{hq} s_q{sq}", note="same tokens as the next (even) case",
                           extra={"batch": "skewed"}))
    cases.append(_mla_case(ctx, even, hq, sq, name=f"B{b} even {spread} (T={total}) Hq{hq} s_q{sq}",
                           note="the skewed case's tokens, spread evenly",
                           extra={"batch": "even"}))
    return cases


def mla_skew_lengths(long_len: int, n_short: int, short: int) -> tuple:
    """(skewed, even): one sequence of long_len tokens beside n_short of ``short`` tokens, and the same
    total spread as evenly as integers allow over the same n_short + 1 sequences (the first
    ``total % B`` get one token more)."""
    skewed = [long_len] + [short] * n_short
    b, total = len(skewed), sum(skewed)
    even = [total // b + (1 if i < total % b else 0) for i in range(b)]
    return skewed, even


def _mla_case(ctx, lens, hq, sq, *, name, primary="bytes", note="", extra=None):
    """attnx.mla_decode over a paged cache holding sequences of the given lengths (pages in random
    order; block-table entries past a sequence's pages hold page 0, which the gather peer reads and
    masks). Bytes count each used cache token once (the tail of a partial last page is not counted)
    plus q, out and lse; FLOPs 2 * (576 + 512) per (query row, key) pair."""
    b = len(lens)
    pages = [-(-n // MLA_PAGE) for n in lens]
    num_blocks, max_pages, total = sum(pages), max(max(pages), 1), sum(lens)
    item = ctx.dtype.itemsize
    cache_bytes = total * MLA_HK * MLA_DQK * item
    io_bytes = b * sq * hq * (MLA_DQK * item + MLA_DV * item + 4)  # q in; out and float32 lse back
    used = torch.arange(max_pages)[None, :] < torch.tensor(pages)[:, None]  # [B, max_pages]: the pages in use
    check = sorted(set(range(min(4, b))) | set(range(max(0, b - 4), b)))  # first and last sequences

    def make_set(i):
        dev = ctx.device
        table = torch.zeros((b, max_pages), dtype=torch.int32, device=dev)
        table[used.to(dev)] = torch.randperm(num_blocks, device=dev).to(torch.int32)
        seqlens = torch.tensor(lens, dtype=torch.int32, device=dev)
        s = {"q": randn((b, sq, hq, MLA_DQK), ctx),
             "kv_cache": randn((num_blocks, MLA_PAGE, MLA_HK, MLA_DQK), ctx),
             "block_table": table, "cache_seqlens": seqlens}
        s["metadata"] = attnx.mla_decode_metadata(seqlens, hq, MLA_HK, sq)  # once per step, untimed
        return s

    def run(s):
        return attnx.mla_decode(s["q"], s["kv_cache"], s["block_table"], s["cache_seqlens"], head_dim_v=MLA_DV,
                                metadata=s["metadata"])

    def kernel(s):  # as attnx.mla_decode decides
        native = attnx._native.covers("mla_decode", s["q"], s["kv_cache"], head_dim_v=MLA_DV)
        return "native" if native else "reference"

    def expected(s):
        return attnx.reference.mla_decode(s["q"][check], s["kv_cache"], s["block_table"][check],
                                          s["cache_seqlens"][check], head_dim_v=MLA_DV)[0]

    def impls():
        out = [_attnx_impl(ctx, run, kernel, output=lambda o: o[0]), P.torch_mla_peer(ctx, MLA_DV)]
        if ctx.cuda:
            out += _mla_optional_peers(ctx, lens, hq, sq)
        return out

    params = {"B": b, "cache_len": lens[0] if len(set(lens)) == 1 else None, "total_tokens": total,
              "max_len": max(lens), "Hq": hq, "Hk": MLA_HK, "s_q": sq, "page": MLA_PAGE, "d_qk": MLA_DQK,
              "d_v": MLA_DV, "cache_bytes": cache_bytes, "io_bytes": io_bytes, "primary": primary,
              "check_sequences": check}
    if len(set(lens)) > 1:
        params["lengths"] = list(lens)
    params.update(extra or {})
    what = ("GB/s: used cache bytes once + q, out, lse" if primary == "bytes"
            else "%ceil: of the matmul ceiling")
    return Case(family="mla", name=name, make_set=make_set, impls=impls,
                set_bytes=num_blocks * MLA_PAGE * MLA_HK * MLA_DQK * item + io_bytes, expected=expected,
                subset=lambda o: o[check], flops=2.0 * hq * sq * total * (MLA_DQK + MLA_DV),
                nbytes=cache_bytes + io_bytes, dtype=ctx.dtype, params=params,
                note=f"{note}; {what}" if note else what)


def _mla_optional_peers(ctx, lens, hq, sq) -> list:
    """FlashMLA and FlashInfer's MLA wrapper, each only where its package is installed (not dependencies)."""
    import importlib.util
    out = []
    if importlib.util.find_spec("flash_mla") is not None:
        out.append(_flash_mla_peer(ctx, hq, sq))
    if importlib.util.find_spec("flashinfer") is not None:
        out.append(_flashinfer_mla_peer(ctx, lens, hq, sq))
    return out


def _flash_mla_peer(ctx, hq, sq) -> Impl:
    """deepseek-ai/FlashMLA's flash_mla_with_kvcache on the set's own cache and block table. Its plan
    (get_mla_metadata; newer versions build it lazily on the first call) is made in prepare, untimed."""
    from .common import NotAvailable
    mod = {}

    def setup(_):
        try:
            import flash_mla
        except Exception as e:  # noqa: BLE001
            raise NotAvailable(f"flash_mla does not import ({type(e).__name__}: {e})")
        mod["m"] = flash_mla

    def run(a):
        return mod["m"].flash_mla_with_kvcache(a["q"], a["kv_cache"], a["block_table"], a["cache_seqlens"], MLA_DV,
                                               a["sched"], a["splits"], causal=False)

    def prepare(s):
        sched, splits = mod["m"].get_mla_metadata(s["cache_seqlens"], sq * hq // MLA_HK, MLA_HK)
        a = dict(s, sched=sched, splits=splits)
        run(a)  # the first call plans (newer FlashMLA) and warms up, outside the timed region
        return a

    return Impl(name="FlashMLA", run=run, prepare=prepare, setup=setup, output=lambda o: o[0], kernel="peer")


def _flashinfer_mla_peer(ctx, lens, hq, sq) -> Impl:
    """flashinfer.mla.BatchMLAPagedAttentionWrapper: planned per input set in prepare (untimed), on
    contiguous copies of the cache's latent (512) and rope (64) columns, as FlashInfer lays them out."""
    from .common import NotAvailable
    b = len(lens)
    mod = {}

    def setup(_):
        try:
            from flashinfer.mla import BatchMLAPagedAttentionWrapper
        except Exception as e:  # noqa: BLE001
            raise NotAvailable(f"flashinfer.mla does not import ({type(e).__name__}: {e})")
        mod["wrapper"] = BatchMLAPagedAttentionWrapper

    def prepare(s):
        dev, kv, seqlens = ctx.device, s["kv_cache"], s["cache_seqlens"]
        pages = (seqlens + MLA_PAGE - 1) // MLA_PAGE
        kv_indptr = torch.zeros(b + 1, dtype=torch.int32, device=dev)
        kv_indptr[1:] = torch.cumsum(pages, 0)
        used = torch.arange(s["block_table"].shape[1], device=dev)[None, :] < pages[:, None]
        kv_indices = s["block_table"][used].contiguous()
        qo_indptr = torch.arange(b + 1, dtype=torch.int32, device=dev) * sq
        w = mod["wrapper"](torch.empty(128 << 20, dtype=torch.uint8, device=dev))
        w.plan(qo_indptr, kv_indptr, kv_indices, seqlens, hq, MLA_DV, MLA_DQK - MLA_DV, MLA_PAGE, False,
               MLA_DQK ** -0.5, s["q"].dtype, kv.dtype)
        q = s["q"].reshape(b * sq, hq, MLA_DQK)
        return {"w": w, "q_nope": q[..., :MLA_DV].contiguous(), "q_pe": q[..., MLA_DV:].contiguous(),
                "ckv": kv[:, :, 0, :MLA_DV].contiguous(), "kpe": kv[:, :, 0, MLA_DV:].contiguous()}

    def run(a):
        return a["w"].run(a["q_nope"], a["q_pe"], a["ckv"], a["kpe"])

    return Impl(name="FlashInfer MLA", run=run, prepare=prepare, setup=setup,
                output=lambda o: o.reshape(b, sq, hq, MLA_DV), kernel="peer")


# ----------------------------------------------------------------------------------------------
# pq_sparse
# ----------------------------------------------------------------------------------------------
PQ = {  # B, L, H, D, subspaces, centroids, k-means iterations
    "full": (1, 4096, 16, 64, 8, 256, 10),
    "quick": (1, 2048, 16, 64, 8, 256, 5),
    "cpu": (1, 256, 2, 64, 8, 16, 5),
    "cpu-quick": (1, 128, 2, 64, 8, 16, 3),
}


def pq_sparse(ctx: Ctx) -> list:
    b, l, h, d, m, c, iters = PQ[ctx.mode]
    k_top = max(1, l // 16)
    dense_flops = attention_flops(b, h, d, l * l)
    sparse_flops = attention_flops(b, h, d, l * k_top)
    item = ctx.dtype.itemsize
    set_bytes = 3 * b * l * h * d * item + b * l * h * k_top * 4
    ref_full = gathered_ref_seconds(b, l, l, h, k_top, d, d, 3e-4, ctx.cuda)

    def make_set(i):
        q, k, v = (randn((b, l, h, d), ctx) for _ in range(3))
        cb = attnx.pq.fit(k, m, c, iters=iters, seed=i)
        idx = attnx.pq.topk(q, attnx.pq.encode(k, cb), cb, k_top)
        return {"q": q, "k": k, "v": v, "codebook": cb, "indices": idx}

    def run_sparse(s):
        return attnx.sparse_attention(s["q"], s["k"], s["v"], s["indices"])

    def expected_sparse(s):
        return attnx.reference.sparse_attention(s["q"][-1:], s["k"][-1:], s["v"][-1:], s["indices"][-1:])

    def run_layer(s):
        return attnx.pq_sparse_attention(s["q"], s["k"], s["v"], k_top, codebook=s["codebook"])

    def expected_layer(s):
        return attnx.reference.pq_sparse_attention(s["q"][-1:], s["k"][-1:], s["v"][-1:], k_top,
                                                   codebook=s["codebook"])

    def peers():
        return P.sdpa_peers(ctx, causal=False, flops=dense_flops, note="dense attention over all L keys",
                            check=False)

    params = {"B": b, "L": l, "H": h, "D": d, "k_top": k_top, "num_subspaces": m, "num_centroids": c,
              "attended_pairs": l * k_top}
    sparse_case = Case(
        family="pq_sparse", name=f"sparse_attention L{l} H{h} D{d} k{k_top} (PQ-selected)", make_set=make_set,
        impls=lambda: [_attnx_impl(ctx, run_sparse, lambda s: ctx.op_status("sparse_attention"),
                                   ref_seconds=ref_full)] + peers(),
        set_bytes=set_bytes, expected=expected_sparse, subset=lambda o: o[-1:], flops=sparse_flops, dtype=ctx.dtype,
        params=dict(params), note="TFLOP/s of the sparse rows count the L*k attended pairs")
    layer_case = Case(
        family="pq_sparse", name=f"pq_sparse_attention L{l} H{h} D{d} k{k_top} (encode+topk+attend)",
        make_set=make_set,
        impls=lambda: [_attnx_impl(ctx, run_layer, lambda s: ctx.op_status("pq_encode", "pq_topk", "sparse_attention"),
                                   ref_seconds=ref_full, note="codebook fitted beforehand")] + peers(),
        set_bytes=set_bytes, expected=expected_layer, subset=lambda o: o[-1:], flops=sparse_flops, dtype=ctx.dtype,
        params=dict(params), note="TFLOP/s counts the attention over the selected keys only")
    b2, l2, h2, d2, k2 = PQ_TRAIN[ctx.mode]
    return [sparse_case, layer_case, _pq_topk_case(ctx, b, l, h, d, m, c, l // 16),
            _pq_topk_case(ctx, b, l, h, d, 2 * m, c, l // 16), _pq_topk_case(ctx, b2, l2, h2, d2, m, c, k2), _sparse_train_case(ctx, b2, l2, h2, d2, k2),
            _pq_train_case(ctx, b2, l2, h2, d2, m, c, k2)]


def clustered_qk(b, l, h, d, ctx, clusters=64, noise=0.5, seed=0):
    """q and k [B, L, H, D] drawn around `clusters` shared Gaussian centres per head (unit-variance
    centres, isotropic noise): data where a query's large weights sit on a few clusters of keys,
    the structure PQ selection relies on (SPT's premise), unlike i.i.d. Gaussian keys."""
    g = torch.Generator(device=ctx.device).manual_seed(seed)
    centres = torch.randn(h, clusters, d, device=ctx.device, generator=g)
    heads = torch.arange(h, device=ctx.device).view(1, 1, h)

    def draw():
        pick = torch.randint(0, clusters, (b, l, h), device=ctx.device, generator=g)
        return (centres[heads, pick] + noise * torch.randn(b, l, h, d, device=ctx.device, generator=g)).to(ctx.dtype)

    return draw(), draw()


def pq_recall(q, k, idx, rows=256):
    """Fraction of the exact top-k keys (by q . k) that idx lists, over the first `rows` queries
    of the last batch entry (all heads)."""
    k_top = idx.shape[-1]
    qs = q[-1, :rows].float().transpose(0, 1)  # [H, rows, D]
    exact = torch.einsum("hid,jhd->hij", qs, k[-1].float()).topk(k_top, dim=-1).indices  # [H, rows, k]
    got = idx[-1, :rows].transpose(0, 1).long()  # [H, rows, k]
    hits = sum(int((got[hh].unsqueeze(-1) == exact[hh].unsqueeze(-2)).any(-1).sum()) for hh in range(got.shape[0]))
    return hits / got.numel()


def _pq_topk_case(ctx, b, l, h, d, m, c, k_top):
    """attnx.pq.topk alone (codes precomputed) on clustered keys, with its recall of the exact
    top-k in the note; the peer computes exact scores per head (an L x L matrix each) and torch.topk."""
    holder = {}

    def make_set(i):
        q, k = clustered_qk(b, l, h, d, ctx, seed=i)
        cb = attnx.pq.fit(k, m, c, iters=10, seed=i)
        s = {"q": q, "k": k, "codebook": cb, "codes": attnx.pq.encode(k, cb)}
        if i == 0 and "impl" in holder:
            recall = pq_recall(q, k, attnx.pq.topk(q, s["codes"], cb, k_top))
            holder["impl"].note = f"recall of the exact top-{k_top}: {recall:.3f} (clustered keys; first 256 queries)"
        return s

    def run(s):
        return attnx.pq.topk(s["q"], s["codes"], s["codebook"], k_top)

    def exact(s):  # one head at a time: the L x L scores of a head, then torch.topk
        return [torch.topk(s["q"][:, :, hh].float() @ s["k"][:, :, hh].float().transpose(1, 2), k_top, dim=-1).indices
                for hh in range(h)]

    def impls():
        holder["impl"] = _attnx_impl(ctx, run, lambda s: ctx.op_status("pq_topk"))
        return [holder["impl"], Impl(name="exact: q @ k^T + torch.topk (per head)", run=exact, kernel="peer",
                                     check=False)]

    return Case(family="pq_sparse", name=f"pq.topk L{l} H{h} D{d} M{m} C{c} k{k_top}", make_set=make_set,
                impls=impls, set_bytes=2 * b * l * h * d * ctx.dtype.itemsize + b * l * h * m, dtype=ctx.dtype,
                flops=2.0 * b * h * l * l * d, max_sets=1,
                note="TFLOP/s: 2 L^2 D per head",
                params={"B": b, "L": l, "H": h, "D": d, "num_subspaces": m, "num_centroids": c, "k_top": k_top})


def _pq_train_case(ctx, b, l, h, d, m, c, k_top):
    """The issue's target: pq_sparse_attention forward + backward with the selection (encode +
    topk) inside the timed call, the codebook fitted beforehand (refreshed every N steps in
    training), against SDPA forward + backward over all keys."""
    hc = _check_heads(ctx, h, cheap=False)
    pairs = l * k_top
    ref_full = 3 * gathered_ref_seconds(b, l, l, h, k_top, d, d, 3e-4, ctx.cuda)

    def make_set(i):
        q, k = clustered_qk(b, l, h, d, ctx, seed=i)
        s = {"q": q, "k": k, "v": randn((b, l, h, d), ctx), "dout": randn((b, l, h, d), ctx)}
        s["codebook"] = attnx.pq.fit(k, m, c, iters=10, seed=i)
        return s

    def prepare(s):
        return dict(s, leaves=tuple(x.detach().requires_grad_() for x in (s["q"], s["k"], s["v"])))

    def run(a):
        with torch.enable_grad():
            out = attnx.pq_sparse_attention(*a["leaves"], k_top, codebook=a["codebook"])
            return torch.autograd.grad(out, a["leaves"], a["dout"])

    def kernel(s):
        return ctx.op_status("pq_encode", "pq_topk", "sparse_attention", "sparse_attention_backward")

    return Case(family="pq_sparse", name=f"pq_sparse_attention fwd+bwd L{l} H{h} D{d} k{k_top} (selection included)",
                make_set=make_set,
                impls=lambda: ([_attnx_impl(ctx, run, kernel, ref_seconds=ref_full, prepare=prepare,
                                            note="encode + topk + attention fwd + bwd; codebook fitted beforehand")]
                               + P.sdpa_train_peers(ctx, causal=False,
                                                    flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, l * l),
                                                    note="dense attention over all L keys")),
                set_bytes=5 * b * l * h * d * ctx.dtype.itemsize, max_sets=2,
                flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, pairs), dtype=ctx.dtype,
                note="target: 1.5x faster than SDPA flash fwd+bwd; TFLOP/s counts the L*k attended pairs",
                params={"B": b, "L": l, "H": h, "D": d, "k_top": k_top, "num_subspaces": m, "num_centroids": c,
                        "check_heads": hc})


# The training case: L 16384, H 16, D 64, k = L/32, forward + backward of sparse_attention
# through autograd, against SDPA's forward + backward over all L keys. Lists: distinct random keys
# per query (no locality between neighbouring queries: the gathers' worst case).
PQ_TRAIN = {"full": (1, 16384, 16, 64, 512), "quick": (1, 4096, 16, 64, 128), "cpu": (1, 256, 2, 64, 8),
            "cpu-quick": (1, 128, 2, 64, 4)}


def random_key_lists(b, lq, h, lk, k_top, device, chunk_elems=1 << 28):
    """int32 [b, lq, h, k_top]: k_top distinct uniformly random keys per (query, head)."""
    out = torch.empty(b, lq, h, k_top, dtype=torch.int32, device=device)
    rows = max(1, chunk_elems // max(1, h * lk))
    for bi in range(b):
        for s in range(0, lq, rows):
            e = min(lq, s + rows)
            out[bi, s:e] = torch.rand(e - s, h, lk, device=device).topk(k_top, dim=-1).indices.int()
    return out


def _sparse_train_case(ctx, b, l, h, d, k_top):
    hc = _check_heads(ctx, h, cheap=False)
    pairs = l * k_top
    ref_full = 3 * gathered_ref_seconds(b, l, l, h, k_top, d, d, 3e-4, ctx.cuda)
    ref_check = 3 * gathered_ref_seconds(1, l, l, hc, k_top, d, d, 3e-4, ctx.cuda)

    def make_set(i):
        s = {n: randn((b, l, h, d), ctx) for n in ("q", "k", "v", "dout")}
        s["indices"] = random_key_lists(b, l, h, l, k_top, ctx.device)
        return s

    def prepare(s):
        return dict(s, leaves=tuple(x.detach().requires_grad_() for x in (s["q"], s["k"], s["v"])))

    def run(a):
        with torch.enable_grad():
            out = attnx.sparse_attention(*a["leaves"], a["indices"])
            return torch.autograd.grad(out, a["leaves"], a["dout"])

    def expected(s):
        q, k, v, do = (last_batch_heads(s[n], hc) for n in ("q", "k", "v", "dout"))
        idx = s["indices"][-1:, :, h - hc:].contiguous()
        return attnx.reference.sparse.sparse_bwd(do, None, q, k, v, idx, None)

    def impls():
        return ([_attnx_impl(ctx, run, lambda s: "native" if _bwd_native(ctx, "sparse_attention", s["q"], s["k"],
                                                                          s["v"]) else "reference",
                             ref_seconds=ref_full, prepare=prepare, note="random lists, value check included")]
                + P.sdpa_train_peers(ctx, causal=False, flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, l * l),
                                     note="dense attention over all L keys"))

    return Case(family="pq_sparse", name=f"sparse_attention fwd+bwd L{l} H{h} D{d} k{k_top}", make_set=make_set,
                impls=impls, set_bytes=4 * b * l * h * d * ctx.dtype.itemsize + b * l * h * k_top * 4,
                expected=expected, subset=lambda g: tuple(x[-1:, :, h - hc:, :] for x in g), check_ref_seconds=ref_check,
                flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, pairs), dtype=ctx.dtype,
                note="TFLOP/s of the sparse row counts the L*k attended pairs",
                params={"B": b, "L": l, "H": h, "D": d, "k_top": k_top, "attended_pairs": pairs, "check_heads": hc,
                        "pass": "forward+backward", "reference_estimate_s": round(ref_full, 2)})


# ----------------------------------------------------------------------------------------------
# ceilings
# ----------------------------------------------------------------------------------------------
CEILINGS = {  # copy buffer bytes, read buffer bytes, matmul n, dtype
    "full": (2 << 30, 2 << 30, 8192, torch.bfloat16),
    "quick": (512 << 20, 1 << 30, 4096, torch.bfloat16),
    "cpu": (64 << 20, 64 << 20, 1024, torch.float32),
    "cpu-quick": (16 << 20, 16 << 20, 512, torch.float32),
}


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= (1 << 30) else f"{nbytes / (1 << 20):.0f} MiB"


def ceilings(ctx: Ctx) -> list:
    copy_bytes, read_bytes, n, dt = CEILINGS[ctx.mode]
    read_dt = torch.bfloat16 if ctx.cuda else torch.float32
    dtn = str(dt).replace("torch.", "")

    def copy_set(i):
        src = torch.empty(copy_bytes // dt.itemsize, device=ctx.device, dtype=dt).normal_()
        return {"src": src, "dst": torch.empty_like(src)}

    def read_set(i):
        return {"x": torch.empty(read_bytes // read_dt.itemsize, device=ctx.device, dtype=read_dt).normal_()}

    def mm_set(i):
        return {"a": torch.randn(n, n, device=ctx.device, dtype=dt),
                "b": torch.randn(n, n, device=ctx.device, dtype=dt)}

    def ceiling(name, run):
        return lambda: [Impl(name=name, kind="ceiling", run=run, kernel="torch")]

    big = 1 << 40  # one set: these buffers are far larger than L2
    return [
        Case(family="ceilings", name=f"device copy {_gib(copy_bytes)} (read+write)", make_set=copy_set,
             impls=ceiling("torch copy_", lambda s: s["dst"].copy_(s["src"])), set_bytes=big,
             nbytes=2 * copy_bytes, dtype=dt, ceiling="copy_gbps", params={"bytes": copy_bytes, "primary": "bytes"}),
        Case(family="ceilings", name=f"read-only {str(read_dt).replace('torch.', '')} sum {_gib(read_bytes)}",
             make_set=read_set, impls=ceiling("torch sum", lambda s: s["x"].sum()), set_bytes=big,
             nbytes=read_bytes, dtype=read_dt, ceiling="read_gbps", params={"bytes": read_bytes, "primary": "bytes"}),
        Case(family="ceilings", name=f"{dtn} matmul {n}^3", make_set=mm_set,
             impls=ceiling("torch matmul", lambda s: s["a"] @ s["b"]), set_bytes=big, flops=2.0 * n ** 3, dtype=dt,
             ceiling="matmul_tflops", params={"n": n}),
    ]


# ----------------------------------------------------------------------------------------------
# unpad / pad: memory-bound row copies, GB/s against the device copy ceiling
# ----------------------------------------------------------------------------------------------
UNPAD_PAD = {  # B, L, H, D: ByteTransformer's hidden state (12 heads of 64) and a long-sequence batch
    "full": [(64, 512, 12, 64), (32, 4096, 16, 128)],
    "quick": [(64, 512, 12, 64)],
    "cpu": [(4, 64, 2, 16)],
    "cpu-quick": [(2, 32, 2, 8)],
}


def unpad_pad(ctx: Ctx) -> list:
    cases = []
    for b, l, h, d in UNPAD_PAD[ctx.mode]:
        lens = mean_fraction_lengths(b, l, 0.6)  # ByteTransformer's setting: average 60% of the padded length
        cases += [_unpad_case(ctx, b, l, h, d, lens), _pad_case(ctx, b, l, h, d, lens)]
    return cases


def _padding_mask(ctx, b, l, lens):
    return torch.arange(l, device=ctx.device)[None, :] < torch.tensor(lens, device=ctx.device)[:, None]


def _unpad_case(ctx, b, l, h, d, lens):
    total, row = sum(lens), h * d * ctx.dtype.itemsize

    def make_set(i):
        return {"x": randn((b, l, h, d), ctx), "mask": _padding_mask(ctx, b, l, lens)}

    def impls():
        return [_attnx_impl(ctx, lambda s: attnx.unpad(s["x"], s["mask"]), lambda s: ctx.op_status("unpad"),
                            output=lambda o: o[0]),
                Impl(name="torch x[mask]", run=lambda s: s["x"][s["mask"]], kernel="torch"),
                Impl(name="nonzero + index_select (attnx.reference)", run=lambda s: attnx.reference.unpad(s["x"], s["mask"]),
                     output=lambda o: o[0], kernel="torch")]

    params = {"B": b, "L": l, "H": h, "D": d, "total_tokens": total, "row_bytes": row, "primary": "bytes"}
    return Case(family="unpad_pad", name=f"unpad [{b}, {l}, {h}, {d}] -> T={total}", make_set=make_set, impls=impls,
                set_bytes=b * l * row + total * row, expected=lambda s: s["x"][s["mask"]],
                nbytes=2 * total * row + b * l, dtype=ctx.dtype, params=params,
                note="GB/s: token rows read + written once, plus the mask")


def _pad_case(ctx, b, l, h, d, lens):
    total, row = sum(lens), h * d * ctx.dtype.itemsize

    def make_set(i):
        mask = _padding_mask(ctx, b, l, lens)
        return {"x": randn((total, h, d), ctx), "mask": mask, "indices": torch.nonzero(mask.flatten()).flatten()}

    def expected(s):
        out = s["x"].new_zeros((b, l, h, d))
        out[s["mask"]] = s["x"]
        return out

    def index_copy(s):
        out = s["x"].new_zeros((b * l, h, d))
        return out.index_copy_(0, s["indices"], s["x"]).view(b, l, h, d)

    def impls():
        return [_attnx_impl(ctx, lambda s: attnx.pad(s["x"], s["indices"], b, l), lambda s: ctx.op_status("pad")),
                Impl(name="torch zeros + index_copy_", run=index_copy, kernel="torch")]

    params = {"B": b, "L": l, "H": h, "D": d, "total_tokens": total, "row_bytes": row, "primary": "bytes"}
    return Case(family="unpad_pad", name=f"pad T={total} -> [{b}, {l}, {h}, {d}]", make_set=make_set, impls=impls,
                set_bytes=b * l * row + total * row, expected=expected,
                nbytes=total * row + b * l * row + 8 * total, dtype=ctx.dtype, params=params,
                note="GB/s: packed rows read once, every padded row written once, plus the indices")


# ----------------------------------------------------------------------------------------------
FAMILIES = {
    "ceilings": (ceilings, "device ceilings: copy and read-only bandwidth, bf16 matmul"),
    "dense": (dense, "attnx.attention vs SDPA flash / cuDNN"),
    "varlen": (varlen, "attnx.varlen_attention vs varlen_attn / flex (document mask) / padded SDPA (key mask)"),
    "dense_bwd": (dense_bwd, "backward only: attnx.attention_backward vs SDPA flash / cuDNN backward"),
    "varlen_bwd": (varlen_bwd, "backward only: attnx.varlen_attention_backward vs varlen_attn backward"),
    "neighborhood": (neighborhood, "attnx.neighborhood_attention vs flex (NA mask)"),
    "neighborhood_bwd": (neighborhood_bwd, "backward only: attnx NA backward vs flex (NA mask) backward"),
    "gna": (gna, "strided NA and attnx.block_sparse_attention over GNA tile plans vs flex"),
    "gna_bwd": (gna_bwd, "backward only: strided NA and block-sparse GNA plans vs flex's backward"),
    "gna_paper": (gna_paper, "the GNA paper's HunyuanVideo and FLUX-4K configurations: fused NA vs attnx dense, flex"),
    "gna_paper_bwd": (gna_paper_bwd, "backward only: the GNA paper's configurations vs attnx's dense backward, flex"),
    "mla": (mla, "attnx.mla_decode vs plain-PyTorch gather + matmul"),
    "pq_sparse": (pq_sparse, "attnx.sparse_attention / pq_sparse_attention vs dense SDPA"),
    "unpad_pad": (unpad_pad, "attnx.unpad / pad (row copies) vs x[mask] and index_select / index_copy_"),
}
