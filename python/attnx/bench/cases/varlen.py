"""varlen, varlen_bwd and unpad_pad: the packed (padding-free) API and its row copies."""
from __future__ import annotations

import itertools

import torch

import attnx
from attnx.reference import dense_varlen as _ref_dv

from .. import peers as P
from ..common import Case, Ctx, Impl, attention_flops, randn
from ._helpers import BWD_FLOP_FACTOR, _attnx_impl, _bwd_native, _ref_bwd_seconds

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
