"""Where an op's GPU time goes, kernel by kernel: torch.profiler (CUPTI activity records, no
hardware counters) over `--iters` calls after warm-up; per kernel name the mean GPU time per call
and its share of the op's kernel time. Answers "how much of the backward is the preprocess, the
main kernel, the dQ conversion" and "how long is the MLA combine next to the decode" without ncu.

    python scripts/kernel_breakdown.py [--cases bs3d-bwd dense-bwd ...] [--iters 5]
"""
import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import attnx
from ab_timing import block_sparse_plan  # scripts/ is on sys.path when a script runs

dev, dt = "cuda", torch.bfloat16


def rnd(*shape):
    return torch.randn(*shape, device=dev, dtype=dt)


def dense_bwd(b=4, l=8192, h=16, d=128, causal=False):
    q, k, v, do = (rnd(b, l, h, d) for _ in range(4))
    out, lse = torch.ops.attnx.attention(q, k, v, causal, None)
    return lambda: torch.ops.attnx.attention_backward(do, None, q, k, v, out, lse, causal, None)


def bs(spatial, kernel, stride, tile, bwd, h=16, d=128):
    index, count, tokens, block, _ = block_sparse_plan(spatial, kernel, stride, tile, dev)
    q, k, v, do = (rnd(1, tokens, h, d) for _ in range(4))
    fwd = lambda: torch.ops.attnx.block_sparse_attention(q, k, v, index, count, block, block, None)  # noqa: E731
    if not bwd:
        return fwd
    out, lse = fwd()
    return lambda: torch.ops.attnx.block_sparse_attention_backward(do, None, q, k, v, out, lse, index, count,
                                                                   block, block, None)


def na(spatial, kernel, stride, bwd, h=16, d=128):
    rank = len(spatial)
    q, k, v, do = (rnd(1, *spatial, h, d) for _ in range(4))
    args = (list(kernel), [1] * rank, list(stride), [False] * rank, None)
    fwd = lambda: torch.ops.attnx.neighborhood_attention(q, k, v, *args)  # noqa: E731
    if not bwd:
        return fwd
    out, lse = fwd()
    return lambda: torch.ops.attnx.neighborhood_attention_backward(do, None, q, k, v, out, lse, *args)


def mla(lens, hq, sq=1):
    from mla_ab import make
    q, kv, table, seqlens, meta = make(lens, hq, sq)
    return lambda: attnx.mla_decode(q, kv, table, seqlens, head_dim_v=512, metadata=meta)


def _mla_lengths(which):
    """The bench's skewed batch (which = 0) or the same tokens spread evenly (1)."""
    from attnx.bench.cases import mla_skew_lengths
    return mla_skew_lengths(32768, 127, 256)[which]


CASES = {
    "dense-bwd": lambda: dense_bwd(),
    "bs3d-bwd": lambda: bs((16, 64, 64), (8, 16, 16), (8, 16, 16), (2, 8, 8), True),
    "bs3d-fwd": lambda: bs((16, 64, 64), (8, 16, 16), (8, 16, 16), (2, 8, 8), False),
    "bs2d-bwd": lambda: bs((128, 128), (32, 32), (16, 16), (16, 8), True),
    "bs2d-fwd": lambda: bs((128, 128), (32, 32), (16, 16), (16, 8), False),
    "na2d-fwd": lambda: na((128, 128), (31, 31), (1, 1), False),
    "na2d-bwd": lambda: na((128, 128), (31, 31), (1, 1), True),
    "mla-b64-4096-64": lambda: mla([4096] * 64, 64),
    "mla-skew": lambda: mla(_mla_lengths(0), 64),
    "mla-even": lambda: mla(_mla_lengths(1), 64),
}


def breakdown(name, iters):
    fn = CASES[name]()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += ev.device_time / iters  # us per call
    total = sum(per.values())
    print(f"{name}: {total:.1f} us of kernels per call", flush=True)
    for k, us in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {us:9.1f} us {100 * us / max(total, 1e-9):5.1f}%  {k[:110]}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()
    for c in a.cases:
        breakdown(c, a.iters)
