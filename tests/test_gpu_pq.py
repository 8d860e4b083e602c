"""GPU tests of the native PQ top-k selection (attnx.pq.topk / torch.ops.attnx.pq_topk) against
exact PQ scores computed here in float64 from the definition (q . decoded key): the chosen keys
must be distinct, allowed, padded with -1 past the allowed count, and their scores, in the
order returned, must equal the k largest allowed scores (up to float32 rounding, so near-ties
may pick either key). The unsorted selection must list exactly the sorted one's keys in
ascending order. The native encoding (attnx.pq.encode) is checked against float64 distances.
Outputs are poisoned before each call.
"""
from __future__ import annotations

import pytest
import torch

import attnx
from attnx import _native
from attnx.reference import pq as ref
from conftest import names_arg
from test_gpu_attention import poison_allocator

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("pq_topk")
    or torch.cuda.get_device_capability() != (9, 0),
    reason="needs an sm_90 GPU and the native library")


def exact_scores(q, codes, cent):
    """[B, Lq, H, Lk] float64: q . decoded key, from the definition."""
    h, m, c, ds = cent.shape
    dec = cent.double()[torch.arange(h, device=codes.device).view(1, 1, h, 1),
                        torch.arange(m, device=codes.device).view(1, 1, 1, m), codes.long()]
    return torch.einsum("bihd,bjhd->bihj", q.double(), dec.reshape(*codes.shape[:3], m * ds))


def check_selection(idx, q, codes, cent, k, causal):
    b, lq, h, _ = q.shape
    lk = codes.shape[1]
    assert idx.dtype == torch.int32 and idx.shape == (b, lq, h, k)
    s = exact_scores(q, codes, cent)
    limit = torch.arange(lq, device=q.device) + lk - lq if causal else torch.full((lq,), lk - 1, device=q.device)
    allowed = torch.arange(lk, device=q.device).view(1, lk) <= limit.view(lq, 1)  # [Lq, Lk]
    s = s.masked_fill(~allowed.view(1, lq, 1, lk), float("-inf"))
    n = allowed.sum(-1).clamp(max=k).view(1, lq, 1).expand(b, lq, h)
    valid = idx >= 0
    assert torch.equal(valid.sum(-1), n), "padding with -1 exactly past the allowed keys"
    assert torch.equal(valid, torch.arange(k, device=q.device).view(1, 1, 1, k) < n.unsqueeze(-1)), "-1 only at the end"
    il = idx.long()
    assert bool((il < lk).all())
    srt = torch.sort(torch.where(valid, il, torch.full_like(il, -1 - lk)), dim=-1).values
    assert not bool(((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()), "distinct keys"
    got = torch.where(valid, s.gather(-1, il.clamp(min=0)), torch.full_like(s[..., :k], float("-inf")))
    assert bool(torch.isfinite(got[valid]).all()), "only allowed keys"
    want = s.topk(k, dim=-1).values
    tol = 1e-5 * s[torch.isfinite(s)].abs().max().item() + 1e-6
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(got))
    err = (got[fin] - want[fin]).abs().max().item() if bool(fin.any()) else 0.0
    assert err <= tol, f"selected scores differ from the k best by {err} (tol {tol})"


def problem(b, lq, lk, h, m, c, ds, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, lq, h, m * ds, device="cuda", generator=g).to(dtype)
    cent = torch.randn(h, m, c, ds, device="cuda", generator=g)
    codes = torch.randint(0, c, (b, lk, h, m), device="cuda", generator=g, dtype=torch.int32).to(torch.uint8)
    return q, codes, cent


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("b,lq,lk,h,m,c,ds,k,causal", [
    (2, 37, 300, 3, 8, 256, 8, 17, False),
    (1, 64, 2048, 2, 8, 256, 8, 128, False),   # L/16
    (1, 65, 4096, 2, 16, 256, 8, 256, True),   # head dim 128
    (2, 33, 1000, 2, 4, 100, 16, 700, False),  # k > 256, C < 256
    (1, 50, 50, 2, 8, 16, 4, 50, False),       # k == Lk
    (1, 40, 40, 1, 8, 256, 8, 7, True),        # causal, Lq == Lk: early rows see fewer than k
    (1, 70, 30, 2, 8, 256, 8, 5, True),        # causal, Lq > Lk: rows seeing no key
    (1, 9, 777, 1, 16, 64, 2, 1, True),        # k = 1, head dim 32
])
def test_topk_selects_the_k_best(dtype, b, lq, lk, h, m, c, ds, k, causal):
    q, codes, cent = problem(b, lq, lk, h, m, c, ds, dtype, seed=lq + lk)
    assert _native.covers("pq_topk", q, codes, cent, topk=k)
    poison_allocator()
    idx = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), k, causal=causal)
    torch.cuda.synchronize()
    check_selection(idx, q, codes, cent, k, causal)
    check_unsorted(idx, q, codes, cent, k, causal)


def check_unsorted(sorted_idx, q, codes, cent, k, causal):
    """sorted=False lists exactly the sorted selection's keys, in ascending index order."""
    poison_allocator()
    got = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), k, causal=causal, sorted=False)
    torch.cuda.synchronize()
    assert torch.equal(got, ref.ascending_keys(sorted_idx))


def test_topk_agrees_with_the_reference():
    q, codes, cent = problem(2, 100, 1500, 2, 8, 256, 8, torch.float32, seed=3)
    native = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 64)
    reference = ref.pq_topk(q, codes, cent, 64, False)
    same = (torch.sort(native, -1).values == torch.sort(reference, -1).values).all(-1).float().mean().item()
    assert same > 0.98, f"only {same:.3f} of the rows select the reference's key set"


def test_equal_scores_go_by_key_index():
    # Every key has the same codes, so every score ties: the selection buffer overflows at every
    # level and the kernel takes the lowest indices, in order.
    q, codes, cent = problem(1, 5, 3000, 2, 8, 256, 8, torch.bfloat16)
    codes = torch.full_like(codes, 7)
    for srt in (True, False):
        idx = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 300, sorted=srt)
        assert torch.equal(idx, torch.arange(300, device="cuda", dtype=torch.int32).expand_as(idx))


def test_unsorted_ties_in_a_scanned_list_take_the_lowest_indices():
    # Groups of keys share their codes, so a scanned row's list holds runs of equal scores and the
    # k-th best score is usually shared by more keys than are still needed.
    q, codes, cent = problem(1, 130, 4096, 2, 8, 256, 8, torch.float32, seed=12)
    codes = codes[:, torch.arange(4096, device="cuda") // 8]  # every code vector 8 times
    for k in (100, 257):
        idx = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), k)
        check_selection(idx, q, codes, cent, k, False)
        check_unsorted(idx, q, codes, cent, k, False)


def test_clustered_scores_need_refinement_and_stay_exact():
    # Most keys share a few codes: the threshold's first-level bin holds far more keys than fit.
    q, codes, cent = problem(1, 16, 4096, 2, 8, 256, 8, torch.float32, seed=5)
    codes[:, : 3500] = codes[:, :1]
    codes[:, 1000:1200] = codes[:, 4000:4001]
    idx = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 256)
    check_selection(idx, q, codes, cent, 256, False)
    check_unsorted(idx, q, codes, cent, 256, False)


def test_deterministic_and_any_code_layout():
    q, codes, cent = problem(2, 48, 1024, 3, 8, 256, 8, torch.bfloat16, seed=9)
    cb = attnx.pq.Codebook(cent)
    a = attnx.pq.topk(q, codes, cb, 64)
    assert torch.equal(a, attnx.pq.topk(q, codes, cb, 64))
    head_major = codes.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(a, torch.ops.attnx.pq_topk(q, head_major, cent, 64, False))
    assert torch.equal(a, torch.ops.attnx.pq_topk(q, codes, cent, 64, False))  # strided rows read in place
    qs = torch.randn(2, 48, 3, 2, 64, device="cuda", dtype=torch.bfloat16)[..., 0, :]  # strided q
    qs.copy_(q)
    assert torch.equal(a, attnx.pq.topk(qs, codes, cb, 64))


def test_empty_sizes():
    q, codes, cent = problem(1, 0, 64, 2, 8, 256, 8, torch.bfloat16)
    assert attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 4).shape == (1, 0, 2, 4)
    q, codes, cent = problem(0, 3, 64, 2, 8, 256, 8, torch.bfloat16)
    assert attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 4).shape == (0, 3, 2, 4)


def test_uncovered_configs_run_the_reference():
    q, codes, cent = problem(1, 20, 200, 2, 2, 16, 32, torch.float32)  # M = 2
    assert not _native.covers("pq_topk", q, codes, cent, topk=10)
    check_selection(attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 10), q, codes, cent, 10, False)
    with pytest.raises(RuntimeError, match="no native kernel"):
        torch.ops.attnx.pq_topk(q, codes, cent, 10, False)
    q64 = q.double()
    assert not _native.covers("pq_topk", q64, codes, cent, topk=10)
    check_selection(attnx.pq.topk(q64, codes, attnx.pq.Codebook(cent), 10), q64, codes, cent, 10, False)


@pytest.mark.parametrize("m,want", [(8, 0.7), (16, 0.8)])
def test_recall_on_clustered_keys(m, want):
    # The bench's data (64 shared cluster centres per head, noise 0.5): 16 subspaces of 4 dims
    # reach the 0.8 at k = L/16; 8 subspaces of 8 dims stay near 0.75.
    from attnx.bench.cases import clustered_qk, pq_recall

    class Ctx:
        device, dtype = torch.device("cuda"), torch.bfloat16

    l = 4096
    q, k = clustered_qk(1, l, 2, 64, Ctx, seed=0)
    cb = attnx.pq.fit(k, m, 256, iters=10)
    recall = pq_recall(q, k, attnx.pq.topk(q, attnx.pq.encode(k, cb), cb, l // 16))
    print(f"native PQ top-{l // 16} recall (L={l}, M={m}, C=256): {recall:.3f}")
    assert recall > want


def test_bad_codes_are_an_error():
    q, codes, cent = problem(1, 8, 64, 2, 8, 16, 8, torch.bfloat16)
    codes[0, 3, 1, 2] = 200  # >= C = 16
    with pytest.raises(ValueError) as e:
        attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), 4)
    assert names_arg(str(e.value), "codes")
    with pytest.raises(ValueError) as e:
        attnx.pq.topk(q, codes[:, :, :1], attnx.pq.Codebook(cent), 4)
    assert names_arg(str(e.value), "codes")
    with pytest.raises(ValueError) as e:
        attnx.pq.topk(q, codes.clamp(max=15), attnx.pq.Codebook(cent), 65)
    assert names_arg(str(e.value), "k")


@pytest.mark.parametrize("l", [512, 4096])  # LUT rows only; scanned rows
def test_pq_sparse_attention_uses_the_native_selection(l):
    q, k, v = (torch.randn(1, l, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cb = attnx.pq.fit(k, 8, 64, iters=3)
    idx = attnx.pq.topk(q, attnx.pq.encode(k, cb), cb, 32 if l == 512 else 256, sorted=False)
    assert torch.equal(idx, ref.ascending_keys(idx))
    out = attnx.pq.pq_sparse_attention(q, k, v, idx.shape[-1], codebook=cb)
    want = attnx.sparse_attention(q, k, v, idx)
    assert torch.equal(out, want)


def test_native_op_passes_opcheck():
    q, codes, cent = problem(1, 20, 300, 2, 8, 64, 8, torch.bfloat16)
    torch.library.opcheck(torch.ops.attnx.pq_topk.default, (q, codes, cent, 16, True))
    torch.library.opcheck(torch.ops.attnx.pq_topk.default, (q, codes, cent, 16, False, False))
    torch.library.opcheck(torch.ops.attnx.pq_encode.default, (q, cent))


def encode_distances(x, cent):
    """[B, L, H, M, C] float64 squared distances of x's sub-vectors to every centroid."""
    h, m, c, ds = cent.shape
    xs = x.double().reshape(*x.shape[:3], m, 1, ds)
    return ((xs - cent.double().view(1, 1, h, m, c, ds)) ** 2).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("b,l,h,m,c,ds", [
    (2, 300, 3, 8, 256, 8),    # D 64, more rows than one CTA
    (1, 1, 1, 16, 256, 8),     # one row, D 128
    (1, 77, 2, 4, 100, 16),    # C not a power of two
    (1, 513, 2, 2, 17, 32),    # ds 32
    (3, 5, 2, 16, 256, 2),     # ds 2
    (1, 40, 1, 16, 1, 4),      # C = 1
])
def test_encode_picks_the_nearest_centroid(dtype, b, l, h, m, c, ds):
    g = torch.Generator(device="cuda").manual_seed(l * 31 + c)
    x = torch.randn(b, l, h, m * ds, device="cuda", generator=g).to(dtype)
    cent = torch.randn(h, m, c, ds, device="cuda", generator=g)
    assert _native.covers("pq_encode", x, cent)
    poison_allocator()
    codes = attnx.pq.encode(x, attnx.pq.Codebook(cent))
    torch.cuda.synchronize()
    assert codes.dtype == torch.uint8 and codes.shape == (b, l, h, m) and codes.is_contiguous()
    dist = encode_distances(x, cent)
    assert bool((codes.long() < c).all())
    got = dist.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
    best = dist.min(-1).values
    assert bool(((got - best) <= 1e-5 * (1 + best)).all()), "a code is not the nearest centroid"
    want = ref.pq_encode(x, cent)
    same = (codes == want).float().mean().item()
    assert same > 0.999, f"only {same:.4f} of the codes match the reference"


def test_encode_reads_strided_x_and_handles_empty_and_uncovered_inputs():
    x = torch.randn(2, 64, 3, 2, 64, device="cuda", dtype=torch.bfloat16)[..., 1, :]  # strided heads
    cent = torch.randn(3, 8, 256, 8, device="cuda")
    cb = attnx.pq.Codebook(cent)
    assert torch.equal(attnx.pq.encode(x, cb), attnx.pq.encode(x.contiguous(), cb))
    xt = torch.randn(64, 2, 3, 64, device="cuda", dtype=torch.bfloat16).transpose(0, 1)  # strided batch
    assert torch.equal(attnx.pq.encode(xt, cb), attnx.pq.encode(xt.contiguous(), cb))
    assert attnx.pq.encode(x[:, :0], cb).shape == (2, 0, 3, 8)
    x3 = torch.randn(1, 10, 3, 24, device="cuda")  # ds 3: the reference
    c3 = torch.randn(3, 8, 16, 3, device="cuda")
    assert not _native.covers("pq_encode", x3, c3)
    assert torch.equal(attnx.pq.encode(x3, attnx.pq.Codebook(c3)), ref.pq_encode(x3, c3))
    with pytest.raises(RuntimeError, match="no native kernel"):
        torch.ops.attnx.pq_encode(x3, c3)
    assert not _native.covers("pq_encode", x, cent.double())  # float64 centroids: the reference
    assert torch.equal(attnx.pq.encode(x, attnx.pq.Codebook(cent.double())), ref.pq_encode(x, cent.double()))
    with pytest.raises(ValueError) as e:
        attnx.pq.encode(x[..., :32], cb)
    assert names_arg(str(e.value), "x")


# Long rows go through the tensor-core scan (pq_scan.cu) before the LUT kernel sorts its lists;
# rows the scan cannot settle (heavy ties, zero queries) take the LUT search. ATTNX_PQ_SCAN=0
# turns the scan off; ATTNX_PQ_SCAN_CHUNK_ROWS makes small inputs run several chunks.
SCAN_CASES = [  # b, lq, lk, h, m, c, ds, k, causal
    (1, 300, 4096, 2, 8, 256, 8, 256, False),   # D 64, Lq not a multiple of the 128-row tile
    (2, 129, 5000, 3, 16, 256, 8, 100, True),   # D 128, Lk not a multiple of the 64-key tile
    (1, 200, 3000, 2, 8, 200, 4, 1, False),     # D 32 padded to 64, k = 1, C < 256
    (1, 64, 8192, 1, 4, 256, 16, 900, True),    # lists longer than 1024 sort in shared memory
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("b,lq,lk,h,m,c,ds,k,causal", SCAN_CASES)
@pytest.mark.parametrize("chunk", [None, 128])
@pytest.mark.parametrize("sample", [None, "auto", "4"])
def test_scan_selects_the_k_best(monkeypatch, dtype, b, lq, lk, h, m, c, ds, k, causal, chunk, sample):
    """ATTNX_PQ_SCAN_SAMPLE: pass 1 histograms a sample of the key tiles; the selection must stay
    exact (rows whose list misses [k, slots] take the search)."""
    if chunk is not None:
        monkeypatch.setenv("ATTNX_PQ_SCAN_CHUNK_ROWS", str(chunk))
    if sample is not None:
        monkeypatch.setenv("ATTNX_PQ_SCAN_SAMPLE", sample)
    q, codes, cent = problem(b, lq, lk, h, m, c, ds, dtype, seed=lq * 7 + k)
    poison_allocator()
    idx = attnx.pq.topk(q, codes, attnx.pq.Codebook(cent), k, causal=causal)
    torch.cuda.synchronize()
    check_selection(idx, q, codes, cent, k, causal)
    check_unsorted(idx, q, codes, cent, k, causal)


def test_scan_agrees_with_the_lut_search(monkeypatch):
    q, codes, cent = problem(2, 256, 6000, 2, 8, 256, 8, torch.bfloat16, seed=11)
    cb = attnx.pq.Codebook(cent)
    scan = attnx.pq.topk(q, codes, cb, 300)
    monkeypatch.setenv("ATTNX_PQ_SCAN", "0")
    lut = attnx.pq.topk(q, codes, cb, 300)
    same = (scan == lut).all(-1).float().mean().item()
    assert same > 0.98, f"only {same:.3f} of the rows agree between the scan and the LUT search"
    assert not torch.equal(scan, torch.full_like(scan, -1))


def test_scan_leaves_tied_and_zero_rows_to_the_search():
    # Equal codes tie every score (the list would overflow); a zero query scores 0 everywhere.
    # Both take the LUT search, which orders equal scores by key index; the other rows of the
    # same 128-row tiles still go through the scan.
    q, codes, cent = problem(1, 200, 5000, 2, 8, 256, 8, torch.bfloat16, seed=4)
    q[0, 5] = 0
    tied = codes.clone()
    tied[:, :, 1] = 9
    cb = attnx.pq.Codebook(cent)
    idx = attnx.pq.topk(q, tied, cb, 100)
    assert torch.equal(idx[0, :, 1], torch.arange(100, device="cuda", dtype=torch.int32).expand(200, 100))
    assert torch.equal(idx[0, 5, 0], torch.arange(100, device="cuda", dtype=torch.int32))
    check_selection(idx[:, :, :1].contiguous(), q[:, :, :1].contiguous(), tied[:, :, :1].contiguous(),
                    cent[:1].contiguous(), 100, False)


def test_scan_with_clustered_keys():
    # The bench's data: keys around shared cluster centres, so many scores sit close together.
    from attnx.bench.cases import clustered_qk

    class Ctx:
        device, dtype = torch.device("cuda"), torch.bfloat16

    q, k = clustered_qk(1, 4096, 2, 64, Ctx, seed=1)
    cb = attnx.pq.fit(k, 8, 256, iters=5)
    codes = attnx.pq.encode(k, cb)
    idx = attnx.pq.topk(q, codes, cb, 256, causal=True)
    check_selection(idx, q, codes, cb.centroids, 256, True)
    check_unsorted(idx, q, codes, cb.centroids, 256, True)


@pytest.mark.parametrize("sample", ["auto", "8"])
def test_sampled_scan_matches_the_full_scan_on_clustered_keys(monkeypatch, sample):
    from attnx.bench.cases import clustered_qk

    class Ctx:
        device, dtype = torch.device("cuda"), torch.bfloat16

    q, k = clustered_qk(1, 8192, 2, 64, Ctx, seed=2)
    cb = attnx.pq.fit(k, 8, 256, iters=5)
    codes = attnx.pq.encode(k, cb)
    full = attnx.pq.topk(q, codes, cb, 256, sorted=False)
    monkeypatch.setenv("ATTNX_PQ_SCAN_SAMPLE", sample)
    check_selection(attnx.pq.topk(q, codes, cb, 256), q, codes, cb.centroids, 256, False)
    got = attnx.pq.topk(q, codes, cb, 256, sorted=False)
    # Rows the sampled bar leaves to the LUT search may order near-equal scores differently (its
    # sums are float32 LUT lookups): nearly all rows are the same lists.
    same = (got == full).all(-1).float().mean().item()
    assert same > 0.98, f"only {same:.3f} of the rows agree between the sampled and the full scan"


def test_scan_leaves_heads_with_non_finite_centroids_to_the_search(monkeypatch):
    # A NaN centroid makes the scan skip the head (its keys decode to zero, no row settles), so the
    # head's rows get exactly what the LUT search alone gives; the other head is still scanned.
    q, codes, cent = problem(1, 130, 4096, 2, 8, 256, 8, torch.bfloat16, seed=8)
    cent[1, 3, 0, 2] = float("nan")
    cb = attnx.pq.Codebook(cent)
    got = attnx.pq.topk(q, codes, cb, 64)
    monkeypatch.setenv("ATTNX_PQ_SCAN", "0")
    want = attnx.pq.topk(q, codes, cb, 64)
    assert torch.equal(got[:, :, 1], want[:, :, 1])
    check_selection(got[:, :, :1].contiguous(), q[:, :, :1].contiguous(), codes[:, :, :1].contiguous(),
                    cent[:1].contiguous(), 64, False)
