"""GPU tests of the native MLA decode (attnx.mla_decode, torch.ops.attnx.mla_decode) against the reference.

The DeepSeek shape: q [B, s_q, Hq, 576], kv_cache [num_blocks, 64, 1, 576], head_dim_v 512, bf16 and fp16.
Caches are built on the GPU so that reading anything outside a sequence poisons the result: pages in
random order, the pages no sequence uses filled with NaN, the tail of each sequence's last page
(positions >= its length) NaN, and block-table entries past a sequence's pages junk (-1 or 2**31 - 1).
The caching allocator is filled with NaN before every call, so an output or split-KV partial the kernel
fails to write shows up as NaN. out within OUT_TOL of attnx.reference (relative, float64), lse within
LSE_TOL where finite, -inf exactly where the reference has -inf (with out 0 there), never NaN.
"""
from __future__ import annotations

import pytest
import torch

import attnx
import attnx.reference
from attnx import _native
from attnx.reference import mla as ref_mla
from conftest import names_arg, rel_err
from test_gpu_attention import LSE_TOL, OUT_TOL, poison_allocator

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("mla_decode"),
    reason="needs a CUDA GPU and the native MLA decode kernel")

PAGE, DQK, DV = 64, 576, 512
JUNK = (-1, 2 ** 31 - 1)  # block-table entries past a sequence's pages (alternating by row)
DTYPES = [torch.bfloat16, torch.float16]
HQS = [16, 32, 64, 128]
# page boundaries (63/64/65, 127/128/129), a single token, an empty cache, a long one
LENS = [1, 63, 64, 0, 65, 127, 128, 129, 5000]


def poison():
    """poison_allocator (large blocks) and the small-block pool too (outputs of <= 1 MiB come from it):
    cached free memory is released first, so the blocks the next call gets are NaN-filled ones."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    poison_allocator()
    small = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(32)]  # 1 MiB each
    del small


def make_cache(seqlens, dtype, *, hk=1, dqk=DQK, extra_pages=3, spare_cols=2, tail=float("nan")):
    """(kv_cache, block_table, cache_seqlens) on the GPU for the given lengths.

    The used pages sit at random places among num_blocks = used + extra_pages; every other page is NaN,
    as is the tail of each sequence's last partial page (``tail``). The block table has spare_cols more
    columns than the longest sequence needs; entries past a sequence's pages are junk ids."""
    dev = "cuda"
    b = len(seqlens)
    pages = [-(-n // PAGE) for n in seqlens]
    used = sum(pages)
    num_blocks = used + extra_pages
    max_pages = max(max(pages, default=0) + spare_cols, 1)
    kv = torch.full((num_blocks, PAGE, hk, dqk), float("nan"), dtype=dtype, device=dev)
    ids = torch.randperm(num_blocks, device=dev)[:used]
    kv[ids] = torch.randn(used, PAGE, hk, dqk, device=dev, dtype=dtype)
    pages_t = torch.tensor(pages, device=dev)
    in_use = torch.arange(max_pages, device=dev)[None, :] < pages_t[:, None]
    junk = torch.tensor([JUNK[i % 2] for i in range(b)], dtype=torch.int32, device=dev)
    table = junk[:, None].expand(b, max_pages).contiguous()
    table[in_use] = ids.to(torch.int32)
    if tail is not None:  # the rows of each sequence's last partial page at positions >= its length
        ids_list, rows, start = ids.tolist(), [], 0
        for n, p in zip(seqlens, pages):
            start += p
            if n % PAGE:
                last = ids_list[start - 1]
                rows += range(last * PAGE + n % PAGE, (last + 1) * PAGE)
        if rows:
            kv.view(num_blocks * PAGE, hk * dqk)[torch.tensor(rows, device=dev)] = tail
    return kv, table, torch.tensor(seqlens, dtype=torch.int32, device=dev)


def check(name, out, lse, ref_out, ref_lse, dtype):
    assert out.shape == ref_out.shape and out.dtype == dtype, f"{name}: out {tuple(out.shape)} {out.dtype}"
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32, f"{name}: lse {tuple(lse.shape)} {lse.dtype}"
    assert not torch.isnan(lse).any(), f"{name}: NaN in lse ({int(torch.isnan(lse).sum())} entries)"
    assert not torch.isnan(out).any(), f"{name}: NaN in out ({int(torch.isnan(out).sum())} entries)"
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), f"{name}: rows without keys (lse -inf) differ"
    assert not torch.isposinf(lse).any(), f"{name}: +inf in lse"
    if empty.any():
        assert bool((out[empty] == 0).all()), f"{name}: rows without keys must be 0"
    e = rel_err(out, ref_out)
    assert e < OUT_TOL[dtype], f"{name}: out relative error {e:.3g} >= {OUT_TOL[dtype]}"
    fin = ~empty
    if fin.any():
        d = (lse[fin] - ref_lse[fin]).abs().max().item()
        assert d < LSE_TOL, f"{name}: lse max abs error {d:.3g} >= {LSE_TOL}"


def run_and_check(q, kv, table, lens, *, causal=False, scale=None, op=None):
    """The reference, then the public API (without and with metadata) and, when ``op`` (default: where the
    native kernel covers the call), the op itself (with the metadata tensors and without); each output
    checked against the reference."""
    dtype = q.dtype
    op = covered(q, kv) if op is None else op
    ref_out, ref_lse = attnx.reference.mla_decode(q, kv, table, lens, head_dim_v=DV, scale=scale, causal=causal)
    meta = attnx.mla_decode_metadata(lens, q.shape[2], kv.shape[2], q.shape[1])
    calls = {
        "attnx.mla_decode": lambda: attnx.mla_decode(q, kv, table, lens, head_dim_v=DV, scale=scale, causal=causal),
        "attnx.mla_decode(metadata)": lambda: attnx.mla_decode(q, kv, table, lens, head_dim_v=DV, scale=scale,
                                                               causal=causal, metadata=meta),
    }
    if op:
        calls["torch.ops.attnx.mla_decode(metadata)"] = lambda: torch.ops.attnx.mla_decode(
            q, kv, table, lens, DV, scale, causal, meta.tile_scheduler_metadata, meta.num_splits)
        calls["torch.ops.attnx.mla_decode"] = lambda: torch.ops.attnx.mla_decode(
            q, kv, table, lens, DV, scale, causal, None, None)
    for name, call in calls.items():
        poison()
        out, lse = call()
        torch.cuda.synchronize()
        check(name, out, lse, ref_out, ref_lse, dtype)


def covered(q, kv):
    return _native.covers("mla_decode", q, kv, head_dim_v=DV)


def need(dtype):
    """Skip unless on sm_90 with the library built with the MLA decode instance for this dtype (a CI
    build may leave one out)."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the native MLA decode kernel is sm_90 only")
    tag = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    if f"mla_decode_{tag}_hdim576" not in _native.instances():
        pytest.skip(f"mla_decode_{tag}_hdim576 not built")


# ----------------------------------------------------------------------------------------------
# against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hq", HQS)
@pytest.mark.parametrize("sq", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_mla_kernel_matches_reference(dtype, hq, sq, causal):
    need(dtype)
    kv, table, lens = make_cache(LENS, dtype)
    q = torch.randn(len(LENS), sq, hq, DQK, device="cuda", dtype=dtype)
    assert covered(q, kv), "the DeepSeek shape (576/512, Hk 1, fp16/bf16) must run the native kernel"
    run_and_check(q, kv, table, lens, causal=causal)


@pytest.mark.parametrize("hq,sq", [(8, 1), (8, 3), (24, 1), (24, 2)])
def test_mla_odd_head_counts(hq, sq):
    """Head counts whose query rows (s_q * Hq) do not fill a 64-row block; the op itself only where covered."""
    need(torch.bfloat16)
    kv, table, lens = make_cache(LENS, torch.bfloat16)
    q = torch.randn(len(LENS), sq, hq, DQK, device="cuda", dtype=torch.bfloat16)
    run_and_check(q, kv, table, lens, causal=True, op=covered(q, kv))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [0.02, 0.5])
def test_mla_custom_scale(dtype, scale):
    need(dtype)
    kv, table, lens = make_cache(LENS, dtype)
    q = torch.randn(len(LENS), 2, 32, DQK, device="cuda", dtype=dtype)
    run_and_check(q, kv, table, lens, causal=True, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hq,sq", [(16, 1), (128, 1), (64, 2), (128, 2)])
def test_mla_long_sequences(dtype, hq, sq):
    """20000 tokens beside short and empty ones; the block table exactly as wide as the longest needs."""
    need(dtype)
    lens_list = [20000, 1, 5000, 0, 4097]
    kv, table, lens = make_cache(lens_list, dtype, spare_cols=0)
    q = torch.randn(len(lens_list), sq, hq, DQK, device="cuda", dtype=dtype)
    run_and_check(q, kv, table, lens, causal=sq > 1)


@pytest.mark.parametrize("hq,sq,where", [(64, 1, 0), (128, 2, 127), (16, 1, 60)])
def test_mla_skewed_batch(hq, sq, where):
    """One 32768-token sequence (at position ``where``) beside 127 short ones (0 to 600 tokens)."""
    need(torch.bfloat16)
    g = torch.Generator().manual_seed(hq + sq)
    lens_list = torch.randint(0, 601, (128,), generator=g).tolist()
    lens_list[where] = 32768
    kv, table, lens = make_cache(lens_list, torch.bfloat16)
    q = torch.randn(len(lens_list), sq, hq, DQK, device="cuda", dtype=torch.bfloat16)
    run_and_check(q, kv, table, lens, causal=sq > 1)


def test_mla_all_caches_empty():
    need(torch.bfloat16)
    kv, table, lens = make_cache([0, 0, 0], torch.bfloat16)
    q = torch.randn(3, 2, 16, DQK, device="cuda", dtype=torch.bfloat16)
    run_and_check(q, kv, table, lens, causal=True)
    out, lse = attnx.mla_decode(q, kv, table, lens)
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())


def test_mla_partial_page_tail_finite_junk():
    """The tail of the last partial page holding large finite values instead of NaN: still ignored
    (separates 'masked scores' from 'no 0 * NaN in P @ V' when the NaN-tail tests fail)."""
    need(torch.bfloat16)
    kv, table, lens = make_cache(LENS, torch.bfloat16, tail=1e4)
    q = torch.randn(len(LENS), 2, 64, DQK, device="cuda", dtype=torch.bfloat16)
    run_and_check(q, kv, table, lens, causal=True)


def test_mla_strided_q_and_block_table():
    """q a slice of a wider buffer, the block table a column slice of a wider one: either the right
    result or an error naming the argument; never garbage."""
    need(torch.bfloat16)
    lens_list = [300, 0, 129, 64]
    kv, table, lens = make_cache(lens_list, torch.bfloat16)
    wide_q = torch.randn(len(lens_list), 2, 32, DQK + 64, device="cuda", dtype=torch.bfloat16)
    q = wide_q[..., :DQK]
    wide_t = torch.full((table.shape[0], table.shape[1] + 5), -1, dtype=torch.int32, device="cuda")
    wide_t[:, 2:2 + table.shape[1]] = table
    t = wide_t[:, 2:2 + table.shape[1]]
    ref_out, ref_lse = attnx.reference.mla_decode(q, kv, t, lens, causal=True)
    for name, call in {"api": lambda: attnx.mla_decode(q, kv, t, lens, causal=True),
                       "op": lambda: torch.ops.attnx.mla_decode(q, kv, t, lens, DV, None, True, None, None)}.items():
        poison()
        try:
            out, lse = call()
            torch.cuda.synchronize()
        except (ValueError, RuntimeError) as e:
            assert names_arg(str(e), "q", "block_table"), f"{name}: {e}"
            continue
        check(name, out, lse, ref_out, ref_lse, torch.bfloat16)


def test_mla_uncovered_configs_use_reference():
    """Configs outside the native kernel (head dims other than 576/512, float32, Hk > 1) still give the
    reference's result through the public API."""
    kv, table, lens = make_cache([70, 0, 130], torch.bfloat16, dqk=72)
    q = torch.randn(3, 2, 4, 72, device="cuda", dtype=torch.bfloat16)
    out, lse = attnx.mla_decode(q, kv, table, lens, head_dim_v=64, causal=True)
    ref_out, ref_lse = attnx.reference.mla_decode(q, kv, table, lens, head_dim_v=64, causal=True)
    assert rel_err(out, ref_out) < OUT_TOL[torch.bfloat16] and rel_err(lse, ref_lse) < 1e-4

    kv, table, lens = make_cache([70, 129], torch.float32)
    q = torch.randn(2, 1, 16, DQK, device="cuda")
    out, _ = attnx.mla_decode(q, kv, table, lens)
    assert rel_err(out, attnx.reference.mla_decode(q, kv, table, lens)[0]) < 1e-4

    kv, table, lens = make_cache([70, 129], torch.bfloat16, hk=2)
    q = torch.randn(2, 1, 16, DQK, device="cuda", dtype=torch.bfloat16)
    out, _ = attnx.mla_decode(q, kv, table, lens)
    assert rel_err(out, attnx.reference.mla_decode(q, kv, table, lens)[0]) < OUT_TOL[torch.bfloat16]


# ----------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------
META_CASES = [
    (LENS, 16, 1),
    ([32768] + [256] * 127, 64, 1),
    ([510] * 128, 64, 1),
    ([8192] * 64, 128, 2),
    ([0] * 5, 128, 2),
    ([20000, 1, 5000, 0], 128, 4),
    ([1], 8, 3),
    ([64], 24, 1),
    ("random", 16, 1),
]


@pytest.mark.parametrize("seqlens,hq,sq", META_CASES,
                         ids=lambda x: (f"B{len(x)}-max{max(x)}" if isinstance(x, list) else str(x)))
def test_mla_metadata_matches_reference(seqlens, hq, sq):
    if seqlens == "random":  # many more sequences than parts
        seqlens = torch.randint(0, 3000, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    lens_cpu = torch.tensor(seqlens, dtype=torch.int32)
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    want = ref_mla.mla_decode_metadata_fwd(lens_cpu, hq, 1, sq, num_sms=num_sms)
    got = attnx.mla_decode_metadata(lens_cpu.cuda(), hq, 1, sq)
    for name, g, w in zip(("tile_scheduler_metadata", "num_splits"), got, want):
        assert g.is_cuda and g.dtype == torch.int32, f"{name}: {g.device} {g.dtype}"
        assert torch.equal(g.cpu(), w), f"{name} differs from the reference plan"


# ----------------------------------------------------------------------------------------------
# bad input (public API on CUDA tensors; checks that only read metadata also through the op)
# ----------------------------------------------------------------------------------------------


def _small(dtype=torch.bfloat16, lens_list=(100, 64)):
    kv, table, lens = make_cache(list(lens_list), dtype)
    q = torch.randn(len(lens_list), 1, 16, DQK, device="cuda", dtype=dtype)
    return q, kv, table, lens


def _raises(call, *names, errors=(ValueError,)):
    with pytest.raises(errors) as ei:
        call()
    assert names_arg(str(ei.value), *names), f"the message does not name {names}: {ei.value}"


def test_mla_bad_cache_seqlens():
    q, kv, table, _ = _small()
    cap = table.shape[1] * PAGE
    for bad in ([cap + 1, 5], [5, -1]):
        lens = torch.tensor(bad, dtype=torch.int32, device="cuda")
        _raises(lambda lens=lens: attnx.mla_decode(q, kv, table, lens), "cache_seqlens")
    _raises(lambda: attnx.mla_decode(q, kv, table, torch.tensor([100, 64], device="cuda")), "cache_seqlens")
    _raises(lambda: attnx.mla_decode(q, kv, table, torch.tensor([100, 64], dtype=torch.int32)), "cache_seqlens")


def test_mla_bad_kv_cache_layout():
    q, kv, table, lens = _small()
    wide = torch.randn(kv.shape[0], PAGE, 1, DQK + 64, device="cuda", dtype=kv.dtype)
    wide[..., :DQK] = kv
    sliced = wide[..., :DQK]  # last dim contiguous, pages and rows strided
    transposed = kv.transpose(0, 1).contiguous().transpose(0, 1)  # [num_blocks, 64, 1, 576] view, page-minor
    for bad in (sliced, transposed):
        assert not bad.is_contiguous()
        _raises(lambda bad=bad: attnx.mla_decode(q, bad, table, lens), "kv_cache")


def test_mla_bad_dtypes():
    q, kv, table, lens = _small()
    _raises(lambda: attnx.mla_decode(q, kv.half(), table, lens), "kv_cache", "q")
    _raises(lambda: attnx.mla_decode(q, kv, table.long(), lens), "block_table")
    _raises(lambda: attnx.mla_decode(q, kv, table, lens.long()), "cache_seqlens")
    _raises(lambda: torch.ops.attnx.mla_decode(q, kv.half(), table, lens, DV, None, False, None, None),
            "kv_cache", "q", errors=(ValueError, RuntimeError))


def test_mla_debug_checks_block_table(monkeypatch):
    """ATTNX_DEBUG=1: page ids of the pages in use are checked against num_blocks (without it no check is
    promised, so no bad table is passed then); junk past a sequence's pages is still fine."""
    monkeypatch.setenv("ATTNX_DEBUG", "1")
    q, kv, table, lens = _small()
    out, _ = attnx.mla_decode(q, kv, table, lens)  # junk entries past the pages: not an error
    assert rel_err(out, attnx.reference.mla_decode(q, kv, table, lens)[0]) < OUT_TOL[torch.bfloat16]
    for bad_id in (kv.shape[0], -1, 2 ** 31 - 1):
        bad = table.clone()
        bad[0, 1] = bad_id  # sequence 0 (100 tokens) uses pages 0 and 1
        _raises(lambda bad=bad: attnx.mla_decode(q, kv, bad, lens), "block_table")


def test_mla_native_ops_pass_opcheck():
    """The CUDA kernels against their schemas and fake kernels (torch.compile): opcheck on the GPU."""
    need(torch.bfloat16)
    q, kv, table, lens = _small()
    meta = torch.ops.attnx.mla_decode_metadata(lens, q.shape[2], 1, q.shape[1])
    torch.library.opcheck(torch.ops.attnx.mla_decode_metadata.default, (lens, q.shape[2], 1, q.shape[1]))
    torch.library.opcheck(torch.ops.attnx.mla_decode.default, (q, kv, table, lens, 512, None, True, *meta))
    torch.library.opcheck(torch.ops.attnx.mla_decode.default, (q, kv, table, lens, 512, 0.1, False, None, None))
