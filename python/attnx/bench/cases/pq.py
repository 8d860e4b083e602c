"""pq_sparse: PQ top-k selection, sparse attention and the PQ layer against dense SDPA."""
from __future__ import annotations

import os
from unittest import mock

import torch

import attnx

from .. import peers as P
from ..common import Case, Ctx, Impl, attention_flops, gathered_ref_seconds, last_batch_heads, randn
from ._helpers import BWD_FLOP_FACTOR, _attnx_impl, _bwd_native, _check_heads

PQ = {  # B, L, H, D, subspaces, centroids, k-means iterations
    "full": (1, 4096, 16, 64, 8, 256, 10),
    "quick": (1, 2048, 16, 64, 8, 256, 5),
    "cpu": (1, 256, 2, 64, 8, 16, 5),
    "cpu-quick": (1, 128, 2, 64, 8, 16, 3),
}


_TILED = {"ATTNX_SPARSE_TILED": "1"}
_TILED_SAMPLED = {"ATTNX_SPARSE_TILED": "1", "ATTNX_PQ_SCAN_SAMPLE": "auto"}


def _tiled_impl(ctx: Ctx, run, kernel, *, env=None, **kw) -> list:
    """attnx again with opt-in switches of 2026-12-08 set (default ATTNX_SPARSE_TILED=1: queries
    grouped into tiles of 128, each tile's union of keys on tensor cores; with
    ATTNX_PQ_SCAN_SAMPLE=auto also the selection's sampled first pass): a second attnx row of the
    case, checked like the first. GPU only."""
    env = dict(_TILED if env is None else env)
    if not ctx.cuda:
        return []

    def tiled(s):
        with mock.patch.dict(os.environ, env):
            return run(s)

    impl = _attnx_impl(ctx, tiled, kernel, **kw)
    impl.name = "attnx " + " ".join(f"{n}={v}" for n, v in env.items())
    return [impl]


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
                                   ref_seconds=ref_full)]
        + _tiled_impl(ctx, run_sparse, lambda s: ctx.op_status("sparse_attention"), ref_seconds=ref_full) + peers(),
        set_bytes=set_bytes, expected=expected_sparse, subset=lambda o: o[-1:], flops=sparse_flops, dtype=ctx.dtype,
        params=dict(params), note="TFLOP/s of the sparse rows count the L*k attended pairs")
    layer_case = Case(
        family="pq_sparse", name=f"pq_sparse_attention L{l} H{h} D{d} k{k_top} (encode+topk+attend)",
        make_set=make_set,
        impls=lambda: [_attnx_impl(ctx, run_layer, lambda s: ctx.op_status("pq_encode", "pq_topk", "sparse_attention"),
                                   ref_seconds=ref_full, note="codebook fitted beforehand")]
        + _tiled_impl(ctx, run_layer, lambda s: ctx.op_status("pq_encode", "pq_topk", "sparse_attention"),
                      ref_seconds=ref_full, note="codebook fitted beforehand; queries ordered by the MinHash of their lists") + peers(),
        set_bytes=set_bytes, expected=expected_layer, subset=lambda o: o[-1:], flops=sparse_flops, dtype=ctx.dtype,
        params=dict(params), note="TFLOP/s counts the attention over the selected keys only")
    b2, l2, h2, d2, k2 = PQ_TRAIN[ctx.mode]
    return [sparse_case, layer_case, _pq_topk_case(ctx, b, l, h, d, m, c, l // 16),
            _pq_topk_case(ctx, b, l, h, d, 2 * m, c, l // 16), _pq_topk_case(ctx, b2, l2, h2, d2, m, c, k2),
            _pq_sparse_fwd_case(ctx, b2, l2, h2, d2, m, c, k2), _sparse_train_case(ctx, b2, l2, h2, d2, k2),
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
                               + _tiled_impl(ctx, run, kernel, ref_seconds=ref_full, prepare=prepare,
                                             note="forward and backward tiled (queries ordered by the MinHash of their lists)")
                               + _tiled_impl(ctx, run, kernel, env=_TILED_SAMPLED, ref_seconds=ref_full,
                                             prepare=prepare, note="tiled attention and the sampled scan")
                               + P.sdpa_train_peers(ctx, causal=False,
                                                    flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, l * l),
                                                    note="dense attention over all L keys")),
                set_bytes=5 * b * l * h * d * ctx.dtype.itemsize, max_sets=2,
                flops=(1 + BWD_FLOP_FACTOR) * attention_flops(b, h, d, pairs), dtype=ctx.dtype,
                note="target: 1.5x faster than SDPA flash fwd+bwd; TFLOP/s counts the L*k attended pairs",
                params={"B": b, "L": l, "H": h, "D": d, "k_top": k_top, "num_subspaces": m, "num_centroids": c,
                        "check_heads": hc})


def _pq_sparse_fwd_case(ctx, b, l, h, d, m, c, k_top):
    """sparse_attention's forward alone at the training case's size, on PQ-selected lists over
    clustered keys (neighbouring queries share keys only once grouped): the per-query kernel and the
    tiled one (its query order and pre-pass included in the timed call)."""
    hc = _check_heads(ctx, h, cheap=False)
    ref_full = gathered_ref_seconds(b, l, l, h, k_top, d, d, 3e-4, ctx.cuda)

    def make_set(i):
        q, k = clustered_qk(b, l, h, d, ctx, seed=i)
        cb = attnx.pq.fit(k, m, c, iters=10, seed=i)
        idx = attnx.pq.topk(q, attnx.pq.encode(k, cb), cb, k_top, sorted=False)
        return {"q": q, "k": k, "v": randn((b, l, h, d), ctx), "indices": idx}

    def run(s):
        return attnx.sparse_attention(s["q"], s["k"], s["v"], s["indices"])

    def expected(s):
        q, k, v = (last_batch_heads(s[n], hc) for n in ("q", "k", "v"))
        return attnx.reference.sparse_attention(q, k, v, s["indices"][-1:, :, h - hc:].contiguous())

    def kernel(s):
        return ctx.op_status("sparse_attention")

    return Case(family="pq_sparse", name=f"sparse_attention fwd L{l} H{h} D{d} k{k_top} (PQ-selected, clustered)",
                make_set=make_set,
                impls=lambda: ([_attnx_impl(ctx, run, kernel, ref_seconds=ref_full)]
                               + _tiled_impl(ctx, run, kernel, ref_seconds=ref_full,
                                             note="query order: MinHash of the lists")
                               + P.sdpa_peers(ctx, causal=False, flops=attention_flops(b, h, d, l * l),
                                              note="dense attention over all L keys", check=False)),
                set_bytes=3 * b * l * h * d * ctx.dtype.itemsize + b * l * h * k_top * 4, max_sets=2,
                expected=expected, subset=lambda o: o[-1:, :, h - hc:], dtype=ctx.dtype,
                flops=attention_flops(b, h, d, l * k_top),
                note="TFLOP/s counts the L*k attended pairs",
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
