"""Forward A/B timing: attnx's dense and packed forward ops beside SDPA cuDNN on the same inputs,
CUDA events, median of 20 after 3 warm-ups, bf16. One line per case, prefixed by the label given
as the first argument. Run variants interleaved in one device call, each in its own process, e.g.
a library (ATTNX_NATIVE_LIB) or a launcher knob (ATTNX_FWD_PERSISTENT=0 / 1):

    ATTNX_FWD_PERSISTENT=0 python scripts/fwd_ab.py per_tile; ATTNX_FWD_PERSISTENT=1 python scripts/fwd_ab.py persistent
"""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnx
from ab_timing import block_sparse_plan, median_ms  # scripts/ is on sys.path when a script runs
from attnx.bench.cases import varlen_lengths

dev, dt = "cuda", torch.bfloat16
label = sys.argv[1] if len(sys.argv) > 1 else "?"


def timeit(fn):
    return median_ms(fn, iters=20, warm=3)


def report(name, ms, flops, peer_ms=None):
    extra = f" | cuDNN {peer_ms:.3f} ms, {flops / peer_ms / 1e9:.0f} ({peer_ms / ms:.3f}x)" if peer_ms else ""
    print(f"{label} | {name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s{extra}", flush=True)


def dense(b, l, h, d, causal):
    q, k, v = (torch.randn(b, l, h, d, device=dev, dtype=dt) for _ in range(3))
    ms = timeit(lambda: torch.ops.attnx.attention(q, k, v, causal, None))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        peer = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
    pairs = l * (l + 1) / 2 if causal else l * l
    report(f"dense B{b} L{l} H{h} D{d}{' causal' if causal else ''}", ms, 4 * b * h * d * pairs, peer)


def varlen(n, max_len, h, d, causal):
    lens = varlen_lengths(n, max_len)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    q, k, v = (torch.randn(sum(lens), h, d, device=dev, dtype=dt) for _ in range(3))
    args = (cu, cu, max(lens), max(lens), causal, -1, -1, None)
    ms = timeit(lambda: torch.ops.attnx.varlen_attention(q, k, v, *args))
    pairs = sum(x * (x + 1) / 2 if causal else x * x for x in lens)
    report(f"varlen {n} seqs max {max_len} H{h} D{d}{' causal' if causal else ''}", ms, 4 * h * d * pairs)


def block_sparse(spatial, kernel, stride, tile, h=16, d=128):
    index, count, tokens, block, pairs = block_sparse_plan(spatial, kernel, stride, tile, dev)
    q, k, v = (torch.randn(1, tokens, h, d, device=dev, dtype=dt) for _ in range(3))
    ms = timeit(lambda: torch.ops.attnx.block_sparse_attention(q, k, v, index, count, block, block, None))
    report(f"block-sparse {spatial} k{kernel} s{stride} tile{tile}", ms, 4 * h * d * pairs)


def na(spatial, kernel, h=16, d=128):
    rank = len(spatial)
    q, k, v = (torch.randn(1, *spatial, h, d, device=dev, dtype=dt) for _ in range(3))
    args = (list(kernel), [1] * rank, [1] * rank, [False] * rank, None)
    ms = timeit(lambda: torch.ops.attnx.neighborhood_attention(q, k, v, *args))
    pairs = attnx.gna.speedup_bound(spatial, kernel, (1,) * rank, 1, (False,) * rank)["attended_pairs"]
    report(f"NA {spatial} k{kernel}", ms, 4 * h * d * pairs)


if __name__ == "__main__":
    dense(4, 8192, 16, 128, False)
    dense(1, 32768, 16, 128, False)
    dense(16, 2048, 16, 128, False)
    dense(4, 8192, 16, 128, True)
    dense(16, 2048, 16, 128, True)
    varlen(32, 4096, 16, 128, False)
    varlen(32, 4096, 16, 128, True)
    dense(4, 8192, 16, 64, False)
    dense(4, 8192, 16, 64, True)
    block_sparse((16, 64, 64), (8, 16, 16), (8, 16, 16), (2, 8, 8))
    block_sparse((128, 128), (32, 32), (16, 16), (16, 8))
    na((128, 128), (31, 31))
    na((16, 64, 64), (8, 16, 16))
    na((32768,), (129,))
    na((32768,), (2049,))
