"""Small cases of every native kernel, run under compute-sanitizer by scripts/gpu_check.sh.

    python scripts/sanitize_cases.py [--forward-only | --na-backward-only | --backward-only]

--forward-only skips the backward kernels and the fp16 NA instances (racecheck of the backward took
over 200 s, of every NA instance over 7 minutes; gpu_check runs racecheck with it and memcheck on
everything). --na-backward-only runs the bf16 neighborhood cases with their backward only (the
racecheck of the fused NA backward, whose dQ hand-off the dense cases share). --backward-only runs
the bf16 cases of every family with a fused-MHA backward (dense, packed, block-sparse, NA), for a
sanitizer run restricted to the backward kernels (--kernel-name kns=bwd_kernel).
"""
import os
import sys

import torch

import attnx  # noqa: F401  (loads the native library)
from attnx import _native

torch.manual_seed(0)
ran = []
# The backward kernels loop over KV tiles; at most 2 CTAs here, so each walks several tiles of these
# small problems (carrying its pipelines, K/V buffers and dQ hand-off from one tile to the next).
os.environ.setdefault("ATTNX_BWD_PERSISTENT", "2")


def cu(lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device="cuda")


NA_BWD_ONLY = "--na-backward-only" in sys.argv
BWD_ONLY = "--backward-only" in sys.argv  # bf16 only; MLA, sparse and PQ skipped
for name in sorted(_native.instances()):
    if not name.startswith("fmha_fwd") or NA_BWD_ONLY or (BWD_ONLY and "bf16" not in name):
        continue  # each forward case below also runs the backward of its (dtype, head dim)
    tag, hd = name.split("_")[2], int(name.split("hdim")[1])
    bwd = f"fmha_bwd_{tag}_hdim{hd}" in _native.instances() and "--forward-only" not in sys.argv
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    for causal in (False, True):
        # the last shape is past the short-problem limit: the full-size tiles (wide KV tiles when unmasked)
        for b, lq, lk, hq, hk in [(1, 1, 1, 1, 1), (2, 77, 131, 4, 2), (1, 130, 64, 2, 2), (1, 600, 777, 2, 1)]:
            q = torch.randn(b, lq, hq, hd, device="cuda", dtype=dtype)
            k = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            v = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            out, lse = torch.ops.attnx.attention(q, k, v, causal, None)
            if bwd:
                torch.ops.attnx.attention_backward(torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse,
                                                   causal, None)
        # packed: empty, 1-token, odd and multi-tile sequences; a window
        lens_q, lens_k = [0, 1, 77, 130], [3, 1, 0, 200]
        q = torch.randn(sum(lens_q), 4, hd, device="cuda", dtype=dtype)
        k = torch.randn(sum(lens_k), 2, hd, device="cuda", dtype=dtype)
        args = (cu(lens_q), cu(lens_k), 130, 200, causal, 50, -1, None)
        out, lse = torch.ops.attnx.varlen_attention(q, k, k, *args)
        if bwd:
            torch.ops.attnx.varlen_attention_backward(torch.randn_like(out), None, q, k, k, out, lse, *args)
    ran.append(name + (" (+ backward)" if bwd else ""))
for name in sorted(_native.instances()):
    if not name.startswith("fmha_fwd") or NA_BWD_ONLY or (BWD_ONLY and "bf16" not in name):
        continue  # block-sparse forward: partial last tile, empty Q tiles, broadcast lists, junk ids
    tag, hd = name.split("_")[2], int(name.split("hdim")[1])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    qb, kb = _native.block_sparse_tiles(hd)
    lq, lk = qb + 7, 2 * kb + 5
    q = torch.randn(1, lq, 2, hd, device="cuda", dtype=dtype)
    k = torch.randn(1, lk, 2, hd, device="cuda", dtype=dtype)
    idx = torch.tensor([[[[2, 0, 9], [1, 0, 0]]]], dtype=torch.int32, device="cuda")  # 9: clamped junk
    cnt = torch.tensor([[[3, 0]]], dtype=torch.int32, device="cuda")
    out, lse = torch.ops.attnx.block_sparse_attention(q, k, k, idx, cnt, qb, kb, None)
    bwd = name.replace("fmha_fwd", "fmha_bwd") in _native.instances() and "--forward-only" not in sys.argv
    if bwd:  # the same lists: the transposition clamps the junk id as the forward does
        torch.ops.attnx.block_sparse_attention_backward(torch.randn_like(out), None, q, k, k, out, lse, idx, cnt,
                                                        qb, kb, None)
    ran.append(name + " (block-sparse" + (" + backward)" if bwd else ")"))

for name in sorted(_native.instances()):
    if not name.startswith("mla_decode") or NA_BWD_ONLY or BWD_ONLY:
        continue
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name.split("_")[2]]
    # lengths: empty, partial page, page boundary +1, two pages; 2 query blocks (Hq 128) too; a
    # skewed batch, whose parts walk several pieces and split the long one over many (the combine)
    skewed = [4000] + [0, 1, 63, 64, 65, 130] * 40
    for lens, sq, hq, causal in [([0, 65, 130], 2, 16, True), ([1, 64], 1, 128, False), (skewed, 1, 64, False),
                                 (skewed, 2, 64, True)]:
        pages = [-(-n // 64) for n in lens]
        kv = torch.randn(sum(pages) + 1, 64, 1, 576, device="cuda", dtype=dtype)
        table = torch.full((len(lens), max(pages)), -1, dtype=torch.int32, device="cuda")
        ids = torch.randperm(sum(pages), device="cuda").to(torch.int32)
        pos = 0
        for b, p in enumerate(pages):
            table[b, :p] = ids[pos:pos + p]
            pos += p
        seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        q = torch.randn(len(lens), sq, hq, 576, device="cuda", dtype=dtype)
        meta = torch.ops.attnx.mla_decode_metadata(seqlens, hq, 1, sq)
        torch.ops.attnx.mla_decode(q, kv, table, seqlens, 512, None, causal, *meta)
    ran.append(name)
for name in sorted(_native.instances()):
    if not name.startswith("na_fwd"):
        continue  # fused NA: 1-D to 3-D, tiles overhanging the axes, several batches, GQA, stride, causal
    tag, hd = name.split("_")[2], int(name.split("hdim")[1])
    if ("--forward-only" in sys.argv or NA_BWD_ONLY or BWD_ONLY) and tag != "bf16":
        continue  # racecheck of every NA instance took minutes; fp16 shares the code
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    backward = "--forward-only" not in sys.argv and name.replace("na_fwd", "na_bwd") in _native.instances()
    for b, spatial, hq, hk, ks, st, ca in [(1, (1,), 1, 1, [1], [1], [False]),
                                           (2, (300,), 2, 1, [65], [1], [True]),
                                           (2, (13, 21), 2, 2, [5, 8], [2, 1], [False, True]),
                                           (3, (5, 9, 11), 4, 2, [3, 4, 11], [1, 3, 1], [True, False, False])]:
        q = torch.randn(b, *spatial, hq, hd, device="cuda", dtype=dtype)
        k = torch.randn(b, *spatial, hk, hd, device="cuda", dtype=dtype)
        for tile in ("64", "128"):  # both forward tile sizes
            os.environ["ATTNX_NA_TILE"] = tile
            out, lse = torch.ops.attnx.neighborhood_attention(q, k, k, ks, [1] * len(ks), st, ca, None)
        del os.environ["ATTNX_NA_TILE"]
        if backward:
            torch.ops.attnx.neighborhood_attention_backward(torch.randn_like(out), torch.randn_like(lse), q, k, k,
                                                            out, lse, ks, [1] * len(ks), st, ca, None)
    ran.append(name + (" (+ na_bwd)" if backward else ""))
for name in sorted(_native.instances()):
    if not name.startswith("sparse_fwd") or NA_BWD_ONLY or BWD_ONLY:
        continue  # sparse: empty slots and rows, junk indices (read as empty), GQA, k not a multiple of 32
    tag, hd = name.split("_")[2], int(name.split("hdim")[1])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    backward = name.replace("sparse_fwd", "sparse_bwd") in _native.instances()
    for b, lq, lk, hq, hk, kk in [(1, 1, 1, 1, 1, 1), (2, 77, 131, 4, 2, 45), (1, 40, 9, 2, 1, 9)]:
        q = torch.randn(b, lq, hq, hd, device="cuda", dtype=dtype)
        k = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
        idx = torch.rand(b, lq, hq, lk, device="cuda").argsort(dim=-1)[..., :kk].int()
        idx[:, ::3, :, ::2] = -1
        idx[:, 1::5, :, 0] = lk + 3  # junk: an empty slot to the kernels
        out, lse = torch.ops.attnx.sparse_attention(q, k, k, idx, None)
        if backward:
            torch.ops.attnx.sparse_attention_backward(torch.randn_like(out), torch.randn_like(lse), q, k, k, out,
                                                      lse, idx, None)
        # the tiled forward (pre-pass + gathered tiles): partial tiles, a tile with no key
        order = torch.rand(b, hq, lq, device="cuda").argsort(dim=-1).int()
        out, lse = torch.ops.attnx.sparse_attention(q, k, k, idx, None, order)
        if backward:  # tiled at head dim 64, the per-row backward otherwise
            torch.ops.attnx.sparse_attention_backward(torch.randn_like(out), torch.randn_like(lse), q, k, k, out,
                                                      lse, idx, None, order)
    q = torch.randn(1, 300, 2, hd, device="cuda", dtype=dtype)
    k = torch.randn(1, 1500, 2, hd, device="cuda", dtype=dtype)
    idx = torch.rand(1, 300, 2, 1500, device="cuda").argsort(dim=-1)[..., :200].int()  # unions of many chunks
    idx[:, :128] = -1
    order = torch.arange(300, dtype=torch.int32, device="cuda").expand(1, 2, 300).contiguous()
    out, lse = torch.ops.attnx.sparse_attention(q, k, k, idx, None, order)
    if backward:
        torch.ops.attnx.sparse_attention_backward(torch.randn_like(out), None, q, k, k, out, lse, idx, None, order)
    torch.ops.attnx.sparse_list_minhash(idx, 1500)
    ran.append(name + (" (+ sparse_bwd)" if backward else "") + " (+ tiled forward and backward, list MinHash)")
if _native.has_cuda_kernel("pq_topk") and not (NA_BWD_ONLY or BWD_ONLY):
    # PQ top-k, sorted and not: every M, q dtype; k near Lk, causal rows with no key, all-equal
    # scores (truncation); scanned rows (Lk >= 4 x the selection slots), lists over 1024; and the
    # encoding of q with the same codebooks (every sub-dim 4..16 here, C < 256 and not)
    for m, ds, c, dtype, (lq, lk, kk, causal) in [(4, 16, 100, torch.float32, (33, 1000, 700, False)),
                                                  (8, 8, 256, torch.bfloat16, (70, 30, 5, True)),
                                                  (16, 8, 64, torch.float16, (9, 777, 1, True)),
                                                  (8, 8, 256, torch.bfloat16, (130, 4096, 256, False)),
                                                  (4, 16, 256, torch.float16, (64, 8192, 900, True))]:
        q = torch.randn(2, lq, 3, m * ds, device="cuda", dtype=dtype)
        cent = torch.randn(3, m, c, ds, device="cuda")
        codes = torch.randint(0, c, (2, lk, 3, m), device="cuda", dtype=torch.int32).to(torch.uint8)
        for srt in (True, False):
            torch.ops.attnx.pq_topk(q, codes, cent, kk, causal, srt)
            torch.ops.attnx.pq_topk(q, torch.zeros_like(codes), cent, kk, causal, srt)
        torch.ops.attnx.pq_encode(q, cent)
    ran.append("pq_topk (sorted and not), pq_encode")
if _native.has_cuda_kernel("unpad") and not (NA_BWD_ONLY or BWD_ONLY):
    # unpad / pad: every copy unit (16..1 bytes), masks across a 2048-position chunk, empty rows, junk pad indices
    for shape, dtype in [((3, 2100, 4, 8), torch.bfloat16), ((2, 33, 3), torch.float32), ((4, 9, 3), torch.uint8),
                         ((0, 5, 2), torch.float16), ((2, 0, 2), torch.float16)]:
        x = torch.ones(shape, device="cuda").to(dtype)
        mask = torch.rand(shape[:2], device="cuda") < 0.5
        packed, idx, _, _ = torch.ops.attnx.unpad(x, mask)
        torch.ops.attnx.pad(packed, idx, shape[0], shape[1])
        if idx.numel():
            idx[0] = -7
            idx[-1] = shape[0] * shape[1] + 5  # out of range: skipped by the kernel
        torch.ops.attnx.pad(packed, idx.int(), shape[0], shape[1])
    ran.append("unpad, pad")
torch.cuda.synchronize()
print("sanitize cases ran:", ", ".join(ran))
