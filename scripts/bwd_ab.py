"""Backward A/B timing: the attnx backward ops alone (forward run once, untimed), CUDA events,
median of 10 after 2 warm-ups, bf16, for the library ATTNX_NATIVE_LIB points at (default: the
package's). One line per case, prefixed by the label given as the first argument:

    ATTNX_NATIVE_LIB=/path/old.so python scripts/bwd_ab.py old; python scripts/bwd_ab.py new

Run the variants interleaved in one device call (each in its own process) and compare there.
"""
import sys

import torch

import attnx
from ab_timing import block_sparse_plan, median_ms  # scripts/ is on sys.path when a script runs

dev = "cuda"
dt = torch.bfloat16
label = sys.argv[1] if len(sys.argv) > 1 else "?"


def timeit(fn):
    return median_ms(fn, iters=10, warm=2)


def rnd(*shape):
    return torch.randn(*shape, device=dev, dtype=dt)


class _Res(list):
    def append(self, row):
        super().append(row)
        name, ms, tf = row
        print(f"{label} | {name}: {ms:.3f} ms, {tf:.0f} TFLOP/s", flush=True)


res = _Res()


def dense(b, l, h, d, causal):
    q, k, v, do = (rnd(b, l, h, d) for _ in range(4))
    out, lse = torch.ops.attnx.attention(q, k, v, causal, None)
    ms = timeit(lambda: torch.ops.attnx.attention_backward(do, None, q, k, v, out, lse, causal, None))
    pairs = l * (l + 1) / 2 if causal else l * l
    tf = 2.5 * 4 * b * h * d * pairs / ms / 1e9
    res.append((f"dense B{b} L{l} H{h} D{d}{' causal' if causal else ''}", ms, tf))


def na(spatial, kernel, stride=None, h=16, d=128):
    rank = len(spatial)
    stride = stride or (1,) * rank
    q, k, v, do = (rnd(1, *spatial, h, d) for _ in range(4))
    args = (list(kernel), [1] * rank, list(stride), [False] * rank, None)
    out, lse = torch.ops.attnx.neighborhood_attention(q, k, v, *args)
    ms = timeit(lambda: torch.ops.attnx.neighborhood_attention_backward(do, None, q, k, v, out, lse, *args))
    pairs = attnx.gna.speedup_bound(spatial, kernel, stride, 1, (False,) * rank)["attended_pairs"]
    tf = 2.5 * 4 * h * d * pairs / ms / 1e9
    res.append((f"NA {spatial} k{kernel} s{stride}", ms, tf))


def bs(spatial, kernel, stride, tile, h=16, d=128):
    index, count, tokens, block, pairs = block_sparse_plan(spatial, kernel, stride, tile, dev)
    q, k, v, do = (rnd(1, tokens, h, d) for _ in range(4))
    out, lse = torch.ops.attnx.block_sparse_attention(q, k, v, index, count, block, block, None)
    ms = timeit(lambda: torch.ops.attnx.block_sparse_attention_backward(do, None, q, k, v, out, lse, index, count,
                                                                        block, block, None))
    tf = 2.5 * 4 * h * d * pairs / ms / 1e9
    res.append((f"block-sparse {spatial} k{kernel} s{stride} tile{tile}", ms, tf))


def varlen(h=16, d=128, causal=False):
    g = torch.Generator().manual_seed(0)
    lens = [int(4096 * (0.2 + 0.8 * torch.rand(1, generator=g).item())) for _ in range(32)]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    t = sum(lens)
    q, k, v, do = (rnd(t, h, d) for _ in range(4))
    args = (cu, cu, max(lens), max(lens), causal, -1, -1, None)
    out, lse = torch.ops.attnx.varlen_attention(q, k, v, *args)
    ms = timeit(lambda: torch.ops.attnx.varlen_attention_backward(do, None, q, k, v, out, lse, *args))
    pairs = sum(n * (n + 1) / 2 if causal else n * n for n in lens)
    res.append((f"varlen 32 seqs H{h} D{d}{' causal' if causal else ''}", ms, 2.5 * 4 * h * d * pairs / ms / 1e9))


dense(4, 8192, 16, 128, False)
dense(4, 8192, 16, 128, True)
dense(4, 8192, 16, 64, False)
varlen()
bs((16, 64, 64), (8, 16, 16), (8, 16, 16), (2, 8, 8))
bs((128, 128), (32, 32), (16, 16), (16, 8))
na((128, 128), (31, 31))
na((16, 64, 64), (8, 16, 16))
na((16, 64, 64), (8, 16, 16), (8, 16, 16))
