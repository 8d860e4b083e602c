"""GPU time of attnx.mla_decode without host overhead: a CUDA graph of `--calls` back-to-back
decode calls (same inputs), replayed; CUDA events, median of `--iters` replays, per call in us.

The bench CLI times back-to-back API calls, which are host-bound for the small cases; the skew
target (issue 6) is a kernel property, so it is judged on this GPU time. Knobs the library reads
from the environment (e.g. ATTNX_MLA_PDL) are compared by running this script once per setting.

    python scripts/mla_ab.py [--cases skew even b64-4096-64 ...] [--json PATH]
"""
import argparse
import json

import torch

import attnx
from attnx.bench.cases import mla_block_table, mla_skew_lengths
from attnx.bench.cases.mla import MLA_DQK, MLA_DV, MLA_HK, MLA_PAGE

SKEWED, EVEN = mla_skew_lengths(32768, 127, 256)
CASES = {  # name: (lengths, Hq, s_q)
    "skew": (SKEWED, 64, 1),
    "even": (EVEN, 64, 1),
    "skew-16": (SKEWED, 16, 1),
    "even-16": (EVEN, 16, 1),
    "skew-128": (SKEWED, 128, 1),
    "even-128": (EVEN, 128, 1),
    "b64-4096-16": ([4096] * 64, 16, 1),
    "b64-4096-32": ([4096] * 64, 32, 1),
    "b64-4096-64": ([4096] * 64, 64, 1),
    "b64-8192-64": ([8192] * 64, 64, 1),
    "b128-4096-64": ([4096] * 128, 64, 1),
    "compute": ([8192] * 64, 128, 2),
}


def make(lens, hq, sq, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    table, seqlens = mla_block_table(lens, "cuda", generator=g)
    num_blocks = sum(-(-n // MLA_PAGE) for n in lens)
    q = torch.randn((len(lens), sq, hq, MLA_DQK), device="cuda", dtype=dtype, generator=g)
    kv = torch.randn((num_blocks, MLA_PAGE, MLA_HK, MLA_DQK), device="cuda", dtype=dtype, generator=g)
    meta = attnx.mla_decode_metadata(seqlens, hq, MLA_HK, sq)
    return q, kv, table, seqlens, meta


def gpu_us(lens, hq, sq, calls, iters):
    q, kv, table, seqlens, meta = make(lens, hq, sq)
    run = lambda: attnx.mla_decode(q, kv, table, seqlens, head_dim_v=MLA_DV, metadata=meta)  # noqa: E731
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=s):
            for _ in range(calls):
                out = run()
    torch.cuda.synchronize()
    for _ in range(3):
        graph.replay()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000.0 / calls)
    us = sorted(ts)[len(ts) // 2]
    # Check the graph's output against a direct call: a variant that breaks results must not time well.
    ref = run()
    err = (out[0].float() - ref[0].float()).abs().max().item()
    nbytes = sum(lens) * MLA_HK * MLA_DQK * 2 + len(lens) * sq * hq * (MLA_DQK * 2 + MLA_DV * 2 + 4)
    flops = 2.0 * hq * sq * sum(lens) * (MLA_DQK + MLA_DV)
    return us, nbytes / us / 1e3, flops / us / 1e6, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for name in args.cases:
        lens, hq, sq = CASES[name]
        us, gbs, tflops, err = gpu_us(lens, hq, sq, args.calls, args.iters)
        rows.append({"label": args.label, "case": name, "us": us, "GB/s": gbs, "TFLOP/s": tflops, "graph_vs_call_maxdiff": err})
        print(f"{args.label:>10} {name:>14}: {us:8.1f} us  {gbs:7.0f} GB/s  {tflops:6.1f} TFLOP/s  (graph vs call max diff {err:.1e})", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
