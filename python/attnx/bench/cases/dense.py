"""dense and dense_bwd: attnx.attention against SDPA flash / cuDNN."""
from __future__ import annotations

import itertools

import torch

import attnx
from attnx.reference import dense_varlen as _ref_dv

from .. import peers as P
from ..common import Case, Ctx, attention_flops, causal_pairs, randn
from ._helpers import BWD_FLOP_FACTOR, _attnx_impl, _bwd_native, _ref_bwd_seconds

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
