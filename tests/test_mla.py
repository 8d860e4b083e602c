"""MLA decode over a paged latent cache against a naive float64 definition.

Contract: q [B, s_q, Hq, Dqk], kv_cache [num_blocks, page_size, Hk, Dqk] (page_size 64),
block_table int32 [B, max_pages], cache_seqlens int32 [B]; token t of sequence b is
kv_cache[block_table[b, t // page_size], t % page_size]; keys = all Dqk columns, values = the
first head_dim_v columns; scale defaults to Dqk ** -0.5; query head h reads KV head
h // (Hq // Hk); with causal and s_q > 1 query t sees positions <= cache_seqlens[b] - s_q + t;
a zero-length cache gives out 0 and lse -inf. Returns (out [B, s_q, Hq, head_dim_v], lse [B, s_q, Hq]).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
import torch

import attnx
import attnx.reference
import attnx.reference.mla
from conftest import TOL, assert_close, force_small_chunks, naive_rows

IMPLS = ["reference", "api"]
PAGE = 64


def impl(which: str, name: str):
    return getattr(attnx.reference if which == "reference" else attnx, name)


def naive_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale=None, causal=False):
    B, sq, Hq, Dqk = q.shape
    page, Hk = kv_cache.shape[1], kv_cache.shape[2]
    scale = Dqk ** -0.5 if scale is None else scale
    out = torch.zeros(B, sq, Hq, head_dim_v, dtype=torch.float64)
    lse = torch.zeros(B, sq, Hq, dtype=torch.float64)
    for b in range(B):
        n = int(cache_seqlens[b])
        # gather the sequence token by token, straight from the definition
        keys = torch.stack([kv_cache[int(block_table[b, t // page]), t % page] for t in range(n)]) if n else \
            kv_cache.new_zeros(0, Hk, Dqk)
        for h in range(Hq):
            g = h // (Hq // Hk)

            def visible(t):
                return range(n) if not causal else range(max(0, min(n, n - sq + t + 1)))

            out[b, :, h], lse[b, :, h] = naive_rows(q[b, :, h], keys[:, g], keys[:, g, :head_dim_v], visible, scale)
    return out, lse


def make_cache(seqlens, Hk, Dqk, *, extra_pages=2, max_pages=None, dtype=torch.float64):
    """A cache with randomly permuted pages; unused block-table entries hold junk page ids."""
    pages = [-(-n // PAGE) for n in seqlens]
    total = sum(pages) + extra_pages
    max_pages = max(max(pages, default=0), 1) if max_pages is None else max_pages
    kv = torch.randn(total, PAGE, Hk, Dqk, dtype=torch.float64).to(dtype)
    perm = torch.randperm(total).tolist()
    table = torch.full((len(seqlens), max_pages), 0, dtype=torch.int32)
    pos = 0
    for b, p in enumerate(pages):
        table[b, :p] = torch.tensor(perm[pos:pos + p], dtype=torch.int32)
        if p < max_pages:
            table[b, p:] = perm[-1]  # junk (valid id) past the sequence: must be ignored
        pos += p
    return kv, table, torch.tensor(seqlens, dtype=torch.int32)


# (seqlens, s_q, Hq, Hk, Dqk, Dv)
CASES = [
    ([70, 1, 128, 200], 1, 4, 1, 72, 64),
    ([5, 64, 65, 0], 2, 4, 1, 72, 64),     # zero-length cache, page boundaries
    ([130, 3], 4, 6, 2, 40, 24),           # Hk = 2 (GQA-like), s_q > seqlen for b=1 (causal: empty rows)
    ([100], 4, 2, 1, 576, 512),            # the DeepSeek shape
]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{c[0]}-sq{c[1]}-h{c[2]}/{c[3]}-d{c[4]}/{c[5]}".replace(" ", ""))
def test_mla_fp64(which, causal, case):
    seqlens, sq, Hq, Hk, Dqk, Dv = case
    kv, table, lens = make_cache(seqlens, Hk, Dqk)
    q = torch.randn(len(seqlens), sq, Hq, Dqk, dtype=torch.float64)
    out, lse = impl(which, "mla_decode")(q, kv, table, lens, head_dim_v=Dv, causal=causal)
    out_ref, lse_ref = naive_mla(q, kv, table, lens, Dv, causal=causal)
    assert tuple(out.shape) == (len(seqlens), sq, Hq, Dv) and out.dtype == torch.float64
    assert tuple(lse.shape) == (len(seqlens), sq, Hq)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_mla_low_precision(which, dtype):
    seqlens, sq, Hq, Dqk, Dv = [150, 64, 9], 2, 8, 576, 512
    kv, table, lens = make_cache(seqlens, 1, Dqk, dtype=dtype)
    q = torch.randn(len(seqlens), sq, Hq, Dqk, dtype=torch.float64).to(dtype)
    out, lse = impl(which, "mla_decode")(q, kv, table, lens, causal=True)  # head_dim_v default 512
    out_ref, lse_ref = naive_mla(q, kv, table, lens, Dv, causal=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert tuple(out.shape) == (3, sq, Hq, 512)
    assert_close(out, out_ref, TOL[dtype])
    assert_close(lse, lse_ref, 1e-4, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_mla_zero_length_cache(which):
    kv, table, lens = make_cache([0, 0], 1, 72)
    q = torch.randn(2, 2, 4, 72, dtype=torch.float64)
    out, lse = impl(which, "mla_decode")(q, kv, table, lens, head_dim_v=64)
    assert (out == 0).all() and torch.isneginf(lse).all()
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("which", IMPLS)
def test_mla_scale(which):
    kv, table, lens = make_cache([33, 90], 1, 72)
    q = torch.randn(2, 1, 2, 72, dtype=torch.float64)
    out, lse = impl(which, "mla_decode")(q, kv, table, lens, head_dim_v=64, scale=0.05)
    out_ref, lse_ref = naive_mla(q, kv, table, lens, 64, scale=0.05)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_mla_page_placement_irrelevant(which):
    """The same logical sequence in two different page layouts gives the same result."""
    n, Dqk = 150, 72
    kv1, table1, lens = make_cache([n], 1, Dqk, extra_pages=0)
    seq = torch.stack([kv1[int(table1[0, t // PAGE]), t % PAGE] for t in range(n)])
    kv2 = torch.randn(6, PAGE, 1, Dqk, dtype=torch.float64)
    table2 = torch.tensor([[5, 0, 3]], dtype=torch.int32)
    for t in range(n):
        kv2[int(table2[0, t // PAGE]), t % PAGE] = seq[t]
    q = torch.randn(1, 1, 4, Dqk, dtype=torch.float64)
    f = impl(which, "mla_decode")
    o1, l1 = f(q, kv1, table1, lens, head_dim_v=64)
    o2, l2 = f(q, kv2, table2, lens, head_dim_v=64)
    assert_close(o1, o2, 1e-12)
    assert_close(l1, l2, 1e-12, "lse")


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("seqlens,sq,Hq", [([70, 1, 128, 200], 1, 16), ([0, 5, 4000], 2, 128), ([64], 1, 1)])
def test_mla_metadata(which, seqlens, sq, Hq):
    lens = torch.tensor(seqlens, dtype=torch.int32)
    meta = impl(which, "mla_decode_metadata")(lens, Hq, 1, sq)
    tsm, ns = meta.tile_scheduler_metadata, meta.num_splits
    assert tsm.dtype == torch.int32 and tsm.dim() == 2 and tsm.shape[1] == 8 and tsm.shape[0] >= 1
    assert ns.dtype == torch.int32 and tuple(ns.shape) == (len(seqlens) + 1,)
    assert int(ns[0]) == 0 and bool((ns[1:] >= ns[:-1]).all())


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("seqlens,Hq", [([70, 1, 128, 200], 16), ([0, 5, 4000, 0, 64], 128), ([64], 1),
                                        ([1000] * 7 + [5] * 50, 128)])
def test_mla_metadata_layout(which, seqlens, Hq):
    """docs/design-decisions.md: row p = (begin_seq, begin_token, end_seq, end_token, first_split_slot,
    0, 0, 0); the parts are contiguous and cover the whole (sequence, page) work list in order;
    num_splits is the prefix sum of the number of splits (parts touching a sequence) per sequence."""
    B = len(seqlens)
    meta = impl(which, "mla_decode_metadata")(torch.tensor(seqlens, dtype=torch.int32), Hq)
    rows = meta.tile_scheduler_metadata.tolist()
    ns = meta.num_splits.tolist()
    assert (rows[0][0], rows[0][1], rows[0][4]) == (0, 0, 0)
    assert (rows[-1][2], rows[-1][3]) == (B, 0), "the last part must end after the last sequence"
    touches = [0] * B
    slot = 0
    for p, (bs, bt, es, et, first, *pad) in enumerate(rows):
        assert pad == [0, 0, 0]
        assert (bs, bt) <= (es, et), f"part {p} runs backwards"
        if p + 1 < len(rows):
            assert (es, et) == tuple(rows[p + 1][:2]), f"part {p} does not end where part {p + 1} begins"
        assert bt % PAGE == 0 and et % PAGE == 0, "parts are cut at page boundaries"
        if bs < B:
            assert bt < max(seqlens[bs], 1) or bt == 0
        assert first == slot, f"part {p}: first_split_slot {first}, expected {slot}"
        seqs = list(range(bs, es)) + ([es] if et > 0 else [])
        for b in seqs:
            touches[b] += 1
        slot += len(seqs)
    assert all(t >= 1 for t in touches), "every sequence is covered by some part"
    assert ns == [sum(touches[:b]) for b in range(B + 1)]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_mla_metadata_does_not_change_results(which, causal):
    seqlens, sq, Hq, Dqk, Dv = [70, 0, 129, 300], 2, 4, 72, 64
    kv, table, lens = make_cache(seqlens, 1, Dqk)
    q = torch.randn(len(seqlens), sq, Hq, Dqk, dtype=torch.float64)
    f = impl(which, "mla_decode")
    meta = impl(which, "mla_decode_metadata")(lens, Hq, 1, sq)
    o1, l1 = f(q, kv, table, lens, head_dim_v=Dv, causal=causal)
    o2, l2 = f(q, kv, table, lens, head_dim_v=Dv, causal=causal, metadata=meta)
    assert_close(o2, o1, 1e-12)
    assert_close(l2, l1, 1e-12, "lse")
    out_ref, _ = naive_mla(q, kv, table, lens, Dv, causal=causal)
    assert_close(o2, out_ref, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
def test_mla_chunked(which, monkeypatch):
    seqlens, sq, Hq, Dqk, Dv = [70, 3, 130], 3, 4, 72, 64
    kv, table, lens = make_cache(seqlens, 1, Dqk)
    q = torch.randn(len(seqlens), sq, Hq, Dqk, dtype=torch.float64)
    force_small_chunks(monkeypatch, 256)
    out, lse = impl(which, "mla_decode")(q, kv, table, lens, head_dim_v=Dv, causal=True)
    out_ref, lse_ref = naive_mla(q, kv, table, lens, Dv, causal=True)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


# ----------------------------------------------------------------------------- the GPU planner's code on the host

_PLANNER_HARNESS = r"""
#include <cstdio>
#include <vector>
#include "mla/mla_metadata.cu"
// Per case on stdin: "batch num_q_heads q_len num_sms" and the lengths; prints the plan that the
// binding's mla_decode_metadata makes (its part count and piece cost, the kernel's walk and search,
// run here on the host).
int main() {
  int batch, num_q_heads, q_len, num_sms;
  while (std::scanf("%d %d %d %d", &batch, &num_q_heads, &q_len, &num_sms) == 4) {
    const int num_parts = attnx::mla::mla_num_parts(num_sms, num_q_heads, 1, q_len);
    const int fixed_cost = attnx::mla::mla_piece_fixed_cost(num_q_heads, 1, q_len);
    std::vector<int> pages(batch);
    long long total = 0;
    for (int b = 0; b < batch; ++b) {
      int n = 0;
      if (std::scanf("%d", &n) != 1) return 1;
      pages[b] = ((n > 0 ? n : 0) + 63) / 64;
      total += pages[b] + fixed_cost;
    }
    std::vector<int> meta(num_parts * attnx::mla::kMetaStride), splits(batch + 1);
    attnx::mla::plan_parts(pages.data(), batch, num_parts, fixed_cost, total, meta.data(), splits.data());
    for (int v : meta) std::printf("%d ", v);
    std::printf("|");
    for (int v : splits) std::printf(" %d", v);
    std::printf("\n");
  }
  return 0;
}
"""


def test_mla_gpu_planner_code_matches_reference(tmp_path):
    """The CUDA planner (csrc/kernels/mla/mla_metadata.cu) compiled for the host against the reference
    planner, on random batches (skewed, empty and page-boundary lengths, several head counts and SM
    counts): the same metadata and num_splits, step for step. Needs nvcc and the source tree."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "csrc", "kernels")
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    nvcc = nvcc if os.path.exists(nvcc) else shutil.which("nvcc")
    if nvcc is None or not os.path.exists(os.path.join(src, "mla", "mla_metadata.cu")):
        pytest.skip("needs nvcc and the source tree")
    harness, exe = tmp_path / "planner.cu", tmp_path / "planner"
    harness.write_text(_PLANNER_HARNESS)
    subprocess.run([nvcc, "-std=c++17", "-I", src, str(harness), "-o", str(exe)], check=True, capture_output=True)

    rng = random.Random(0)
    cases = [([32768] + [256] * 127, 64, 1, 132), ([4096] * 64, 16, 1, 132), ([0, 1, 63, 64, 65, 129], 128, 2, 132)]
    for _ in range(120):
        lens = [rng.choice([0, 1, 63, 64, 65, rng.randint(0, 3000), rng.randint(0, 40000)])
                for _ in range(rng.choice([1, 3, 17, 64, 200]))]
        cases.append((lens, rng.choice([16, 32, 64, 128]), rng.choice([1, 2, 3]), rng.choice([132, 114, 78])))
    stdin = ""
    for lens, hq, sq, sms in cases:
        stdin += f"{len(lens)} {hq} {sq} {sms}\n{' '.join(map(str, lens))}\n"
    lines = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == len(cases)
    for (lens, hq, sq, sms), line in zip(cases, lines):
        want = attnx.reference.mla.mla_decode_metadata_fwd(torch.tensor(lens, dtype=torch.int32), hq, 1, sq, num_sms=sms)
        meta, splits = line.split("|")
        assert [int(v) for v in meta.split()] == want.tile_scheduler_metadata.flatten().tolist(), (lens, hq, sq, sms)
        assert [int(v) for v in splits.split()] == want.num_splits.tolist(), (lens, hq, sq, sms)
